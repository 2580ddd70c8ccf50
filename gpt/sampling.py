"""The sampling job behind sample.py: load a checkpoint and stream generated text to stdout."""

import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from gpt.checkpoint import load_model
from gpt.errors import UserError


def read_prompt(cfg: DictConfig) -> str:
    if cfg.prompt is not None and cfg.prompt_file is not None:
        raise UserError("give either prompt=... or prompt_file=..., not both")
    if cfg.prompt_file is None:
        return cfg.prompt or ""
    try:
        return Path(cfg.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read prompt_file={cfg.prompt_file}: {err}") from None


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for, but no CUDA GPU is available: use device=cpu")
    return name


def sample(cfg: DictConfig) -> None:
    if cfg.ckpt is None:
        raise UserError("which checkpoint? python sample.py ckpt=outputs/<date>/<time>/checkpoints/best.ckpt")
    if cfg.temperature < 0:
        raise UserError(f"temperature={cfg.temperature} must be > 0 (or 0 for greedy decoding)")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise UserError(f"top_k={cfg.top_k} must be >= 1 (or null for no cut-off)")
    device = pick_device(cfg.device)
    model, tokenizer = load_model(cfg.ckpt, device)
    prompt = read_prompt(cfg)
    start = tokenizer.prompt_ids(prompt)  # unknown characters fail here, naming them
    torch.manual_seed(cfg.seed)
    for i in range(cfg.num_samples):
        if i:
            print("\n" + "-" * 40)
        sys.stdout.write(tokenizer.decode(start))
        idx = torch.tensor([start], device=device)
        for token in model.generate_stream(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k):
            sys.stdout.write(tokenizer.decode(token[0].tolist()))
            sys.stdout.flush()
    print()
