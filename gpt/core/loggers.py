"""The loggers of every job: W&B checked before it could prompt, continued on resume, and one W&B run per job,
finished (as failed if the job raised).

Imported by every entry point, so it loads Lightning and W&B only when used.
"""

import sys
from contextlib import contextmanager

from hydra.utils import get_class, instantiate

from gpt.core.errors import UserError

WANDB_RUN_ID = "wandb_run_id"  # the checkpoint key under which the run's W&B id is stored


def instantiate_loggers(logger_cfg, resume_from=None) -> list:
    """The loggers of ``cfg.logger``. Resuming from a checkpoint of a W&B run (``resume_from``, a
    ``gpt.core.checkpoint.Checkpoint`` the job has read) continues that W&B run."""
    from lightning.pytorch.loggers import WandbLogger

    loggers = []
    for cfg in (logger_cfg or {}).values():
        resume = {}
        if issubclass(get_class(cfg._target_), WandbLogger):
            check_wandb_login(cfg.get("mode"))
            if resume_from is not None and (run_id := resume_from.raw.get(WANDB_RUN_ID)):
                resume = {"id": run_id}  # WandbLogger asks wandb.init for resume="allow"
        loggers.append(instantiate(cfg, **resume))
    return loggers


def check_wandb_login(mode) -> None:
    """Online W&B without credentials would prompt for them in a terminal: stop with a message instead."""
    import wandb

    if mode == "online" and not wandb.login(prompt=False, verify=False):  # no prompt, no network
        raise UserError(
            "logger.wandb.mode=online needs a W&B login: run `wandb login` or set WANDB_API_KEY, or train "
            "offline (the default) and upload with `wandb sync` later"
        )


@contextmanager
def wandb_run_finished():
    """Finish the W&B run when the block ends, as failed if it raised.

    W&B keeps one run per process: without this, every job of a multirun after the first would log into
    the first job's run.
    """
    try:
        yield
    except BaseException:
        _finish_wandb(exit_code=1)
        raise
    _finish_wandb(exit_code=0)


def _finish_wandb(exit_code: int) -> None:
    if "wandb" in sys.modules:  # imported only by a W&B logger: nothing to finish otherwise
        sys.modules["wandb"].finish(exit_code=exit_code)
