"""What every benchmark measures with: train.py's config as a run resolves it, a stand-in vocabulary, and a
clock that waits for the device."""

import torch

from gpt.core.config import compose_config
from gpt.pretrain.training import resolve_speed_settings

VOCAB = [chr(i) for i in range(32, 97)]  # 65 symbols, the size of Tiny Shakespeare's vocabulary


def load_config(overrides: list[str]):
    """``python train.py <overrides>``'s config, its speed settings resolved for this machine as train.py does."""
    cfg = compose_config("train", overrides)
    resolve_speed_settings(cfg)
    return cfg


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
