"""Lightning's Trainer as a run config says, for every job: intervals counted in optimizer steps, bf16 mixed
precision that lets a fused optimizer clip its gradients, and the float32 matmul precision in every process."""

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType

from gpt.core.errors import UserError


def instantiate_trainer(trainer_cfg, **kwargs):
    """``trainer_cfg`` (a Hydra node for ``lightning.pytorch.Trainer``) with ``kwargs`` on top.

    ``val_check_interval`` counts optimizer steps, like ``max_steps``: Lightning counts micro-batches, so it
    gets interval x ``accumulate_grad_batches``. Every validation (and its checkpoint) then falls after a whole
    optimizer step, never in the middle of an accumulation, and a resumed run continues exactly. Every process
    of the run gets this one's float32 matmul precision (``MatmulPrecision``).
    """
    interval = kwargs.pop("val_check_interval", trainer_cfg.get("val_check_interval"))
    if isinstance(interval, int):
        kwargs["val_check_interval"] = interval * trainer_cfg.get("accumulate_grad_batches", 1)
    try:
        trainer = instantiate(trainer_cfg, **kwargs)
    except InstantiationException as err:  # a value Lightning refuses (trainer.devices=0, a misspelt key, ...)
        if not isinstance(err.__cause__, (MisconfigurationException, TypeError, ValueError)):
            raise
        raise UserError(f"trainer: Lightning refuses {str(err.__cause__).splitlines()[0]}") from None
    allow_clipping_with_fused_optimizers(trainer)
    trainer.callbacks.append(MatmulPrecision())
    return trainer


def shards_parameters(trainer_cfg) -> bool:
    """Whether ``trainer.strategy`` is FSDP: given by name ("fsdp") or as a config (conf/trainer/fsdp.yaml)."""
    strategy = trainer_cfg.get("strategy")
    if isinstance(strategy, str):
        return strategy.startswith("fsdp")
    return strategy is not None and str(strategy.get("_target_", "")).endswith("FSDPStrategy")


def trainer_problems(trainer_cfg) -> list[str]:
    """The ``trainer.*`` counts that cannot work but that Lightning accepts at start-up (it fails later, or does
    something else: a negative clipping value flips the gradients), one line each naming the key."""
    problems = []
    for key in ("num_nodes", "accumulate_grad_batches", "log_every_n_steps"):
        value = trainer_cfg.get(key, 1)
        if not (isinstance(value, int) and value >= 1):
            problems.append(f"trainer.{key}={value} must be a whole number >= 1")
    devices = trainer_cfg.get("devices", "auto")
    if isinstance(devices, int) and not (devices >= 1 or devices == -1):
        problems.append(f"trainer.devices={devices} must be >= 1, -1 (every GPU) or auto")
    clip = trainer_cfg.get("gradient_clip_val")
    if clip is not None and not clip >= 0:
        problems.append(f"trainer.gradient_clip_val={clip} must be >= 0 (0 or null: no clipping)")
    return problems


class ClippableMixedPrecision(MixedPrecision):
    """Lightning's mixed precision, minus a refusal that is wrong under bf16.

    Lightning 2.6.6's ``MixedPrecision.clip_gradients`` refuses to clip for any optimizer that unscales
    gradients inside its step (torch's fused Adam/AdamW), even under bf16-mixed, which has no gradient scaler
    and so nothing to unscale: with the GPU defaults (bf16-mixed, fused AdamW, clipping) every run died at its
    first step (Lightning issue #21435). Upstream fixed it in PR #21436 by refusing only when a scaler is in
    use; this is that fix, until a Lightning release carries it. Under 16-mixed the refusal stands: there the
    gradients are still scaled when they would be clipped (``gpt.pretrain.training`` says so before anything runs).
    """

    def clip_gradients(self, optimizer, clip_val=0.0, gradient_clip_algorithm=GradClipAlgorithmType.NORM):
        if self.scaler is not None:
            return super().clip_gradients(optimizer, clip_val, gradient_clip_algorithm)
        return Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)


def allow_clipping_with_fused_optimizers(trainer) -> None:
    """Swap the trainer's bf16-mixed plugin for the one above (same autocast, same everything else).

    FSDP brings its own precision plugin, which does not refuse; its clipping goes through FSDP itself.
    """
    plugin = trainer.strategy.precision_plugin
    if type(plugin) is MixedPrecision and plugin.scaler is None:
        trainer.strategy.precision_plugin = ClippableMixedPrecision(plugin.precision, plugin.device)


class MatmulPrecision(L.Callback):
    """``torch.set_float32_matmul_precision`` in every process of the run, as Lightning sets each up, to what this
    process has when the callback is made.

    The setting belongs to the process: ``ddp_spawn``'s workers (a multirun over DDP) started at torch's default,
    "highest" (no TF32), while the log said "high". Lightning's spawn launcher carries the deterministic-algorithms
    flags and the RNG states to its workers, not this.
    """

    def __init__(self):
        self.precision = torch.get_float32_matmul_precision()

    def setup(self, trainer, pl_module, stage):
        torch.set_float32_matmul_precision(self.precision)
