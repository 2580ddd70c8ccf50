"""Lightning's Trainer as a run config says, for every job: intervals counted in optimizer steps, bf16 mixed
precision that lets a fused optimizer clip its gradients, and the float32 matmul precision in every process."""

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType


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
    trainer = instantiate(trainer_cfg, **kwargs)
    allow_clipping_with_fused_optimizers(trainer)
    trainer.callbacks.append(MatmulPrecision())
    return trainer


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
