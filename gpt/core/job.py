"""The scaffold every job runs in, whoever starts it: each entry point's script, and the ladder for each rung."""

import logging
import random
import warnings

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gpt.core.config import mistyped_overrides
from gpt.core.errors import UserError, invalid_config
from gpt.core.loggers import wandb_run_finished


def run_job(job, cfg: DictConfig):
    """``job(cfg)``, run as every entry point runs it; returns what the job returns (a sweep minimises it).

    - Lightning's messages appear once: ``import lightning`` gives its logger a console handler of its own,
      and under Hydra's logging, which already prints to the console and the run's log file, every message
      would show twice.
    - ``cfg.seed``, where the job has one, seeds Python's and torch's generators (on every device) before the
      job builds anything.
    - A W&B run the job started is finished when it ends, as failed if it raised: W&B keeps one run per
      process, and every job of a multirun after the first would otherwise log into the first one's run.
    - A value typed on an entry point's command line that is not of its setting's kind (``data.batch_size=abc``)
      is refused before the job starts (``mistyped_overrides``).
    - A ``UserError`` ends the process with one line, ``error: ...``, and no traceback.
    """
    logging.getLogger("lightning").handlers.clear()
    quiet_upstream_noise()
    try:
        if HydraConfig.initialized() and (problems := mistyped_overrides(cfg)):  # an entry point's command line
            raise invalid_config(problems)
        if "seed" in cfg:  # every job that draws random numbers has one
            random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)
        with wandb_run_finished():
            return job(cfg)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None


def quiet_upstream_noise() -> None:
    """Drop the few upstream messages that tell a user nothing about their run, each by its own text."""
    # Lightning 2.6.6 advertises its paid logger on every run.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not record.getMessage().startswith("💡 Tip: For seamless cloud logging")
    )
    # Lightning 2.6.6 calls an API that torch 2.13 deprecates (lightning/pytorch/utilities/_pytree.py).
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # The CSV logger writes into the run folder, which Hydra has already filled with its config and log.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
