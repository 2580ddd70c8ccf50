"""Which device a job runs on."""

import torch

from gpt.core.errors import UserError


def pick_device(name: str) -> str:
    """``auto``: the GPU if there is one, else the CPU; a CUDA device asked for without a GPU is refused."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for, but no CUDA GPU is available: use device=cpu")
    return name
