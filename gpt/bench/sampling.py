"""Sampling speed: characters per second with and without the KV cache, from the same weights."""

import time

import torch

from gpt.bench.common import VOCAB, load_config, synchronize
from gpt.core.model import build_model

# The models sampled, by device type. small and modern_small on a CPU too: at context 256 the cache has something
# to save, and past 256 characters only RoPE's rolling cache keeps it (a learned-position model recomputes the
# window).
SAMPLING = {"cpu": ["modern_small", "small", "modern_tiny", "tiny"], "cuda": ["modern_small", "small"]}
BATCH = 8  # the samples drawn as one batch, as sample.py num_samples=8 draws them


def bench_sampling(name: str, device, new_tokens: int) -> dict:
    """``new_tokens`` characters from a newline, batch 1, with and without the KV cache, from the same weights
    (``model=name`` at its initialisation: the speed does not depend on what the weights learned). Up to
    ``block_size`` the outputs must be the same; past it a RoPE model's rolling cache differs by design
    (``LanguageModel.generate_stream``), and a learned-position model recomputes the window as without the cache.
    Then ``BATCH`` samples at once, cached: ``time_x8``, their time over one sample's (batch 1, cached)."""
    cfg = load_config([f"model={name}"])
    torch.manual_seed(cfg.seed)
    model = build_model(vocab_size=len(VOCAB), **cfg.model).to(device).eval()
    start = torch.zeros((1, 1), dtype=torch.long, device=device)
    result = {"model": name, "characters": new_tokens}
    outputs = {}
    for use_cache in (False, True):
        generator = torch.Generator(device).manual_seed(0)
        synchronize(device)
        started = time.perf_counter()
        outputs[use_cache] = model.generate(start, new_tokens, generator=generator, use_cache=use_cache)
        synchronize(device)
        result[f"chars_per_s_{'cached' if use_cache else 'uncached'}"] = new_tokens / (time.perf_counter() - started)
    result["speedup"] = result["chars_per_s_cached"] / result["chars_per_s_uncached"]
    n = model.block_size
    result["identical_to_block_size"] = torch.equal(outputs[False][:, :n], outputs[True][:, :n])
    # sample.py num_samples=N: the N samples as one batch, cached; the time against one sample's
    synchronize(device)
    started = time.perf_counter()
    model.generate(start.expand(BATCH, 1), new_tokens, generator=torch.Generator(device).manual_seed(0))
    synchronize(device)
    result[f"time_x{BATCH}"] = (time.perf_counter() - started) * result["chars_per_s_cached"] / new_tokens
    return result
