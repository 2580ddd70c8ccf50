"""Lightning's Trainer as a run config says, for every job: intervals counted in optimizer steps."""

from hydra.utils import instantiate


def instantiate_trainer(trainer_cfg, **kwargs):
    """``trainer_cfg`` (a Hydra node for ``lightning.pytorch.Trainer``) with ``kwargs`` on top.

    ``val_check_interval`` counts optimizer steps, like ``max_steps``: Lightning counts micro-batches, so it
    gets interval x ``accumulate_grad_batches``. Every validation (and its checkpoint) then falls after a whole
    optimizer step, never in the middle of an accumulation, and a resumed run continues exactly.
    """
    interval = kwargs.pop("val_check_interval", trainer_cfg.get("val_check_interval"))
    if isinstance(interval, int):
        kwargs["val_check_interval"] = interval * trainer_cfg.get("accumulate_grad_batches", 1)
    return instantiate(trainer_cfg, **kwargs)
