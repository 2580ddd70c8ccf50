"""The checkpoint contract: what every checkpoint of this project records, one reader and one loader.

Every checkpoint records its **kind** (``checkpoint["kind"]``): ``pretrained`` (train.py), ``sft``, ``ppo``,
``dpo``, ``grpo`` or ``reward`` (finetune.py stage=...), beside its model config and vocabulary
(``hyper_parameters``), so the file alone rebuilds its model and tokenizer. The LightningModules write the kind
in ``on_save_checkpoint``.

``read_checkpoint`` reads a file once (plain data only, ``weights_only=True``, memory-mapped) into a
``Checkpoint``; a job passes that object on instead of reading the file again. ``load_model`` builds the model
of any kind: a language model (``GPT`` or ``BigramLanguageModel``) for pretrained, sft, ppo, dpo and grpo, a
``RewardModel`` for reward. Every load says which kinds it accepts; any other kind is a one-line ``UserError``
naming what the file is and what writes the kind wanted.

Checkpoints written before the kind was recorded get it inferred: a ``model.head.weight`` weight (the reward
model's scalar head) means ``reward``; else the run config's ``stage.name``, when it is a kind;
else ``pretrained`` (train.py's run config has no stage).

An exported model (``export.py``) is a folder of two files that load without running any code:
``model.safetensors`` (the weights) and ``config.json`` (kind, model config, vocabulary). ``read_checkpoint``
reads such a folder as it reads a file.

Nothing here needs Lightning.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gpt.core.errors import UserError
from gpt.core.model import build_model, build_reward_model
from gpt.core.tokenizer import ByteTokenizer, CharTokenizer, tokenizer_for

KIND_KEY = "kind"  # the checkpoint key under which the kind is recorded
# kind: (what the file is, what writes it)
KINDS = {
    "pretrained": ("a pre-trained", "train.py"),
    "sft": ("an SFT", "finetune.py stage=sft"),
    "ppo": ("a PPO", "finetune.py stage=ppo"),
    "dpo": ("a DPO", "finetune.py stage=dpo"),
    "grpo": ("a GRPO", "finetune.py stage=grpo"),
    "reward": ("a reward model", "finetune.py stage=reward"),
}
# the kinds that hold a language model (sample.py reads them)
LANGUAGE_MODELS = ("pretrained", "sft", "ppo", "dpo", "grpo")


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A checkpoint file, read once: its kind, model config, vocabulary and weights, and everything else."""

    path: Path
    kind: str  # one of KINDS
    model_config: dict  # build_model's fields (arch, block_size, ...), the vocabulary size aside; older files
    # leave out the settings that did not exist yet (full_config fills them in)
    vocab: list[str]
    state_dict: dict[str, torch.Tensor]  # the model's weights, without Lightning's "model." prefix
    raw: dict = field(repr=False)  # the whole file: step, run config ("config"), RNG, optimizer, PPO history...
    kind_recorded: bool = True  # False: written before kinds were recorded, ``kind`` was inferred

    def require(self, kinds: Iterable[str], job: str) -> "Checkpoint":
        """This checkpoint, if its kind is one of ``kinds``; else a one-line UserError for ``job`` (who reads it,
        e.g. "sample.py" or "finetune.py stage=ppo reward_model=")."""
        kinds = tuple(kinds)
        if self.kind not in kinds:
            what, maker = KINDS[self.kind]
            raise UserError(f"{self.path} is {what} checkpoint ({maker}); {job} needs {describe(kinds)}")
        return self


def describe(kinds: tuple[str, ...]) -> str:
    """What ``kinds`` are, for a person: 'an SFT checkpoint (finetune.py stage=sft)'."""
    if set(kinds) == set(LANGUAGE_MODELS):
        stages = ", ".join(f"stage={kind}" for kind in LANGUAGE_MODELS[1:-1])
        return f"a language model: a checkpoint of train.py, finetune.py {stages} or stage={LANGUAGE_MODELS[-1]}"
    return " or ".join(f"{KINDS[kind][0]} checkpoint ({KINDS[kind][1]})" for kind in kinds)


def infer_kind(raw: dict) -> str:
    """The kind of a checkpoint written before kinds were recorded (see the module's docstring)."""
    if "model.head.weight" in raw["state_dict"]:
        return "reward"
    stage = ((raw.get("config") or {}).get("stage") or {}).get("name")
    return stage if stage in KINDS else "pretrained"


def read_checkpoint(path) -> Checkpoint:
    """Read a checkpoint file safely (plain data, no pickled code) and memory-mapped: a tensor is read from disk
    only when it is used, so looking at a large checkpoint's config costs little."""
    path = Path(path)
    if path.is_dir():
        return read_exported(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train.py writes them to <run dir>/checkpoints/")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a truncated file, another format, pickled objects
        raise UserError(f"{path} is not a checkpoint this project can read: {err}".splitlines()[0]) from None
    hparams = raw.get("hyper_parameters", {}) if isinstance(raw, dict) else {}
    if not {"model", "vocab"} <= hparams.keys() or "state_dict" not in raw:
        raise UserError(f"{path} has no model config and vocabulary: it was not written by this project's train.py")
    kind = raw.get(KIND_KEY)
    if kind is not None and kind not in KINDS:
        raise UserError(f"{path} records the kind {kind!r}, which this version does not know: one of {list(KINDS)}")
    # Lightning prefixes the weights with the LightningModule's attribute name (``model`` in every module).
    state_dict = {k.removeprefix("model."): v for k, v in raw["state_dict"].items()}
    return Checkpoint(
        path=path,
        kind=kind or infer_kind(raw),
        model_config=hparams["model"],
        vocab=hparams["vocab"],
        state_dict=state_dict,
        raw=raw,
        kind_recorded=kind is not None,
    )


EXPORT_FORMAT = "char-gpt/1"  # config.json's "format": what a folder of export.py holds
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def write_exported(checkpoint: Checkpoint, folder) -> Path:
    """Write ``checkpoint``'s model as an exported folder (weights and config only: no optimizer, no code)."""
    folder = Path(folder)
    if (folder / WEIGHTS).exists() or (folder / CONFIG).exists():
        raise UserError(f"{folder} already holds an exported model: choose another out= or remove it first")
    folder.mkdir(parents=True, exist_ok=True)
    # Tied weights share one tensor, which safetensors refuses to store twice: each key gets its own copy.
    weights = {name: tensor.contiguous().clone() for name, tensor in checkpoint.state_dict.items()}
    save_file(weights, folder / WEIGHTS)
    config = {"format": EXPORT_FORMAT, "kind": checkpoint.kind}
    config |= {"model": checkpoint.model_config, "vocab": checkpoint.vocab}
    (folder / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


def read_exported(folder: Path) -> Checkpoint:
    """An exported folder, read like a checkpoint file: its config (JSON) and weights (safetensors)."""
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        state_dict = load_file(folder / WEIGHTS)
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(f"{folder} is not a model exported by export.py ({WEIGHTS} and {CONFIG}): {err}") from None
    if config.get("format") != EXPORT_FORMAT or config.get("kind") not in KINDS:
        raise UserError(f"{folder / CONFIG} is not a config.json of export.py (format {EXPORT_FORMAT})")
    raw = {KIND_KEY: config["kind"], "hyper_parameters": {"model": config["model"], "vocab": config["vocab"]}}
    return Checkpoint(folder, config["kind"], config["model"], config["vocab"], state_dict, raw)


def load_model(
    source, device="cpu", *, kinds: Iterable[str] = LANGUAGE_MODELS, job: str = "this job"
) -> tuple[nn.Module, CharTokenizer | ByteTokenizer]:
    """Rebuild the model (in eval mode, on ``device``) and its tokenizer from a checkpoint of one of ``kinds``.

    ``source`` is a path or a ``Checkpoint`` already read. A language model for pretrained, sft and ppo; a
    frozen ``RewardModel`` (no gradients) for reward. ``job`` names the reader in the error for another kind.
    """
    checkpoint = source if isinstance(source, Checkpoint) else read_checkpoint(source)
    checkpoint.require(kinds, job)
    tokenizer = tokenizer_for(checkpoint.vocab)
    build = build_reward_model if checkpoint.kind == "reward" else build_model
    try:
        model = build(vocab_size=tokenizer.vocab_size, **checkpoint.model_config)
        model.load_state_dict(checkpoint.state_dict)
    except (TypeError, ValueError, RuntimeError) as err:
        message = f"{checkpoint.path} does not match this version of gpt/core/model.py: {err}"
        raise UserError(message.splitlines()[0]) from None
    model = model.to(device).eval()
    return (model.requires_grad_(False) if checkpoint.kind == "reward" else model), tokenizer
