"""Earlier runs' checkpoints, found by kind: how one stage hands its model on to the next without a path.

A run folder is what Hydra makes under ``outputs/`` (``multirun/`` for sweeps) in the directory the command
runs in; "the latest" of a kind is the newest checkpoint file of that kind there.
"""

from collections.abc import Callable, Iterable
from pathlib import Path

from gpt.core.checkpoint import KINDS, Checkpoint, read_checkpoint
from gpt.core.errors import UserError

RUN_ROOTS = ("outputs", "multirun")  # where Hydra puts run folders, relative to the current directory
FILE_NAMES = {"pretrained": "best.ckpt", **{kind: f"{kind}.ckpt" for kind in ("sft", "reward", "ppo", "dpo", "grpo")}}


def checkpoints_of(kind: str, name: str | None = None) -> list[Path]:
    """The checkpoint files named like ``kind``'s (or ``name``) under the run folders, newest first."""
    name = name or FILE_NAMES[kind]
    found = [path for root in RUN_ROOTS for path in Path(root).glob(f"**/checkpoints/{name}")]
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


def latest(kinds: Iterable[str], name: str | None = None, accept: Callable[[Checkpoint], bool] = lambda c: True):
    """The newest checkpoint of one of ``kinds`` that ``accept`` takes, read; None if there is none."""
    for kind in kinds:
        for path in checkpoints_of(kind, name):
            try:
                checkpoint = read_checkpoint(path)
            except UserError:  # a file being written, or not one of this project's: not a candidate
                continue
            if checkpoint.kind == kind and accept(checkpoint):
                return checkpoint
    return None


def latest_or_refuse(kinds: tuple[str, ...], setting: str) -> Path:
    """The path of the newest checkpoint of ``kinds``, for ``setting`` left empty; or a one-line error saying
    which command makes one."""
    checkpoint = latest(kinds)
    if checkpoint is None:
        makers = " or ".join(KINDS[kind][1] for kind in kinds)
        raise UserError(f"{setting} not given and no run under {'/ or '.join(RUN_ROOTS)}/ has one: run {makers} first")
    return checkpoint.path
