"""A character-level GPT on Tiny Shakespeare: plain-PyTorch models (``gpt.core.model``) and the Lightning/Hydra
pieces that train them."""

import os

# torch's OpenMP threads spin for a while before they sleep when they run out of work. Alone on the cores
# that is fastest, but two processes that both spin (a sweep or a test run beside training) starve each
# other: on 2 cores, KV-cache sampling of `small` took 26 s instead of 0.5 s. A short spin (GNU OpenMP,
# the one in torch's Linux wheels) keeps the idle speed and avoids the collapse (3.5 s); waiting passively
# would be safest shared but costs ~1.7x on idle cores. Set GOMP_SPINCOUNT or OMP_WAIT_POLICY to choose.
# It must be set before torch loads OpenMP: every entry point imports `gpt` before torch.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
