"""The job behind export.py: a checkpoint's model as a folder to share (safetensors weights and a JSON config)."""

from omegaconf import DictConfig

from gpt.core.checkpoint import KINDS, read_checkpoint, write_exported
from gpt.core.errors import UserError


def export(cfg: DictConfig) -> str:
    if cfg.ckpt is None or cfg.out is None:
        raise UserError("which checkpoint, and where to? python export.py ckpt=.../checkpoints/best.ckpt out=DIR")
    checkpoint = read_checkpoint(cfg.ckpt)
    folder = write_exported(checkpoint, cfg.out)
    print(f"{KINDS[checkpoint.kind][0]} model exported to {folder}: sample.py ckpt={folder} loads it")
    return str(folder)
