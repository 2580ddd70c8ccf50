"""Reading checkpoints written by train.py, without Lightning: plain data only (``weights_only=True``)."""

from pathlib import Path

import torch

from gpt.core.errors import UserError
from gpt.core.model import LanguageModel, build_model
from gpt.core.tokenizer import CharTokenizer


def read_checkpoint(path) -> dict:
    """The checkpoint's contents, loaded safely (plain data, no pickled code) and memory-mapped: a tensor is
    read from disk only when it is used, so looking at a large checkpoint's config costs little."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train.py writes them to <run dir>/checkpoints/")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a truncated file, another format, pickled objects
        raise UserError(f"{path} is not a checkpoint this project can read: {err}".splitlines()[0]) from None
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not {"model", "vocab"} <= hparams.keys() or "state_dict" not in checkpoint:
        raise UserError(f"{path} has no model config and vocabulary: it was not written by this project's train.py")
    return checkpoint


def load_model(path, device="cpu") -> tuple[LanguageModel, CharTokenizer]:
    """Rebuild the model (in eval mode, on ``device``) and its tokenizer from a checkpoint file."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    tokenizer = CharTokenizer(hparams["vocab"])
    # Lightning prefixes the weights with the LightningModule's attribute name.
    state_dict = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    try:
        model = build_model(vocab_size=tokenizer.vocab_size, **hparams["model"])
        model.load_state_dict(state_dict)
    except (TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"{path} does not match this version of gpt/model.py: {err}".splitlines()[0]) from None
    return model.to(device).eval(), tokenizer
