"""The training job behind train.py: check the config, build data, model and trainer, fit, report."""

import logging
import os
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import (
    _MultiProcessingLauncher,
    _SubprocessScriptLauncher,
)
from omegaconf import DictConfig, OmegaConf

from gpt.core.checkpoint import Checkpoint, load_model, read_checkpoint
from gpt.core.errors import UserError, invalid_config
from gpt.core.loggers import instantiate_loggers
from gpt.core.model import full_config, model_problems
from gpt.core.module import MUON_UNDER_FSDP, optim_problems
from gpt.core.runs import latest
from gpt.core.trainer import instantiate_trainer, shards_parameters, trainer_problems
from gpt.pretrain.callbacks import TrialPruning
from gpt.pretrain.data import micro_batch_size
from gpt.pretrain.lightning_module import GPTModule, bits
from gpt.pretrain.plots import plot_losses
from gpt.pretrain.sweeps import current_trial
from gpt.pretrain.tokens import TOKENIZERS
from gpt.pretrain.tracking import continue_metrics, write_result

log = logging.getLogger(__name__)


def fit_to_run_length(cfg: DictConfig) -> None:
    """Fit the validation interval and the warmup to the run's length, so that a short run just works; say so.

    The interval becomes the largest one up to the configured interval that divides ``trainer.max_steps`` (the
    last step is always validated and checkpointed); a warmup longer than the schedule becomes a tenth of it.
    """
    trainer = cfg.trainer
    interval, steps = trainer.val_check_interval, trainer.max_steps
    if isinstance(interval, int) and isinstance(steps, int) and interval >= 1 and steps >= 1 and steps % interval:
        fitted = max(d for d in range(1, min(interval, steps) + 1) if steps % d == 0)
        log.info(
            f"trainer.val_check_interval={interval} -> {fitted}: the largest interval up to it that divides "
            f"trainer.max_steps={steps}, so that the last step is validated and checkpointed"
        )
        trainer.val_check_interval = fitted
    fit_warmup(cfg.optim)


def fit_warmup(optim: DictConfig) -> None:
    """A warmup longer than the schedule (``optim.decay_steps``) becomes a tenth of it; say so."""
    if optim.decay_steps >= 1 and optim.warmup_steps > optim.decay_steps:
        fitted = optim.decay_steps // 10
        log.info(
            f"optim.warmup_steps={optim.warmup_steps} -> {fitted}: a tenth of the {optim.decay_steps}-step schedule"
        )
        optim.warmup_steps = fitted


def keep_schedule(cfg: DictConfig, checkpoint: Checkpoint, warmup_steps: int) -> None:
    """A resumed run goes on with its checkpoint's learning-rate schedule, never a silently different one.

    Raising ``trainer.max_steps`` (which ``optim.decay_steps`` follows) would recompute the schedule over the
    new horizon and make the learning rate jump at the resume step: the checkpoint's ``decay_steps`` is kept,
    so the steps past it train at ``min_lr`` (a constant tail). ``warmup_steps``, the warmup as configured
    (before ``fit_to_run_length`` fitted it to this run's length), is fitted to that kept horizon instead, as
    it was when the checkpoint's run started: extending a short run (warmup 100 -> 5 in 50 steps) keeps its
    warmup. Any other change of the optimizer's settings would be overwritten by the optimizer state the
    checkpoint restores: it is refused.
    """
    saved = checkpoint.raw["hyper_parameters"]["optim"]
    if saved["decay_steps"] != cfg.optim.decay_steps:
        log.info(
            f"resuming keeps the checkpoint's schedule: it reaches optim.min_lr={saved['min_lr']} at step "
            f"{saved['decay_steps']}, and any step after that trains at min_lr"
        )
        cfg.optim.decay_steps = saved["decay_steps"]
    cfg.optim.warmup_steps = warmup_steps
    fit_warmup(cfg.optim)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    free = ("fused",)  # it only changes how the same step is computed
    changed = [
        f"optim.{key}={optim[key]} (the checkpoint has {value})"
        for key, value in saved.items()
        if key in optim and key not in free and optim[key] != value
    ]
    if changed:
        raise UserError(
            f"cannot resume from {checkpoint.path} with another optimizer setting: {', '.join(changed)}; resume "
            "with the checkpoint's, or start a new run (ckpt_path=null) to train with these"
        )


def latest_resumable(cfg: DictConfig, vocab: list[str]) -> Checkpoint | None:
    """For ``resume=auto``: the newest ``last.ckpt`` of a run with this model, data and vocabulary that has
    steps left to train (a raised ``trainer.max_steps`` gives it more); None, and a fresh start, if there is none."""
    model, data_path = OmegaConf.to_container(cfg.model, resolve=True), cfg.data.path

    def same_run(checkpoint: Checkpoint) -> bool:
        data = (checkpoint.raw.get("config") or {}).get("data") or {}
        return (
            full_config(**checkpoint.model_config) == full_config(**model)
            and checkpoint.vocab == vocab
            and data.get("path") == data_path
            and checkpoint.raw.get("global_step", 0) < cfg.trainer.max_steps
        )

    checkpoint = latest(RESUMABLE, name="last.ckpt", accept=same_run)
    if checkpoint is None:
        log.info("resume=auto: no earlier run of this model on this data has steps left; starting fresh")
    else:
        log.info(f"resume=auto: resuming {checkpoint.path} at step {checkpoint.raw['global_step']}")
    return checkpoint


def check_config(cfg: DictConfig) -> None:
    """Raise one UserError listing every setting that cannot work, before anything is built."""
    data, optim, trainer = cfg.data, cfg.optim, cfg.trainer
    problems = model_problems(OmegaConf.to_container(cfg.model, resolve=True))

    def require(ok, message):
        if not ok:
            problems.append(message)

    require(data.batch_size >= 1, f"data.batch_size={data.batch_size} must be >= 1")
    require(data.tokenizer in TOKENIZERS, f"data.tokenizer={data.tokenizer} is not one of {list(TOKENIZERS)}")
    if data.val_start is None:
        fraction = data.train_fraction
        require(fraction is not None and 0 < fraction < 1, f"data.train_fraction={fraction} must be in (0, 1)")
    else:
        require(
            data.train_fraction is None,
            f"data.val_start={data.val_start} fixes the split: set data.train_fraction=null (or data.val_start=null)",
        )
        require(data.val_start >= 1, f"data.val_start={data.val_start} must be >= 1")
    if data.test_start is not None and data.val_start is not None:
        require(
            data.test_start > data.val_start,
            f"data.test_start={data.test_start} must be after data.val_start={data.val_start}",
        )
    require(data.eval_chunks >= 1, f"data.eval_chunks={data.eval_chunks} must be >= 1")
    problems += optim_problems(optim)
    require(not (optim.get("name") == "muon" and shards_parameters(trainer)), MUON_UNDER_FSDP)
    require(
        not 0 < optim.decay_steps < optim.warmup_steps,
        f"optim.warmup_steps={optim.warmup_steps} must be at most optim.decay_steps={optim.decay_steps}",
    )
    require(trainer.max_steps >= 1, f"trainer.max_steps={trainer.max_steps} must be >= 1")
    problems += trainer_problems(trainer)
    new_tokens = ((cfg.get("callbacks") or {}).get("text_sample") or {}).get("max_new_tokens", 0)
    require(new_tokens >= 0, f"callbacks.text_sample.max_new_tokens={new_tokens} must be >= 0")
    require(
        isinstance(trainer.val_check_interval, int) and trainer.val_check_interval >= 1,
        f"trainer.val_check_interval={trainer.val_check_interval} must be a whole number of steps >= 1",
    )
    if not problems and trainer.max_steps % trainer.val_check_interval:
        problems.append(
            f"trainer.max_steps={trainer.max_steps} must be a multiple of trainer.val_check_interval="
            f"{trainer.val_check_interval} so that the last step is validated and checkpointed"
        )
    if problems:
        raise invalid_config(problems)


RESUMABLE = ("pretrained",)  # ckpt_path= continues pre-training: fine-tuned models go on with finetune.py


def check_resumable(checkpoint: Checkpoint, module: GPTModule, max_steps: int | None = None) -> None:
    """Refuse to resume from a checkpoint of another kind (a fine-tuned model), of another model or
    vocabulary, or one that has already trained ``max_steps`` steps (nothing would run), before training
    touches anything."""
    checkpoint.require(RESUMABLE, "train.py ckpt_path=")
    path, step = checkpoint.path, checkpoint.raw.get("global_step", 0)
    if max_steps is not None and step >= max_steps:
        raise UserError(
            f"{path} has already trained {step} steps, trainer.max_steps={max_steps}: raise trainer.max_steps "
            "to train on"
        )
    # Models compare with their defaults filled in: a checkpoint from before a switch existed still resumes.
    saved = {"model": full_config(**checkpoint.model_config), "vocab": checkpoint.vocab}
    current = {"model": full_config(**module.hparams["model"]), "vocab": module.hparams["vocab"]}
    for key in ("model", "vocab"):
        if saved[key] != current[key]:
            raise UserError(
                f"cannot resume from {path}: it was trained with {key}={saved[key]}, this run has "
                f"{key}={current[key]}; use the checkpoint's settings (its run's .hydra/config.yaml)"
            )


def on_gpu(cfg: DictConfig) -> bool:
    return cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_speed_settings(cfg: DictConfig) -> None:
    """Replace the ``auto`` speed settings by what suits the device this run trains on.

    On a GPU: bf16 autocast where supported (no loss scaling needed), ``torch.compile``, fused AdamW. On a
    CPU: fp32 and eager (compiling costs ~30 s up front, more than it saves in a run of a few minutes).
    """
    gpu = on_gpu(cfg)
    if cfg.trainer.precision == "auto":
        cfg.trainer.precision = "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"
    if cfg.compile == "auto":
        cfg.compile = gpu
    if cfg.optim.fused == "auto":
        cfg.optim.fused = gpu
    if cfg.trainer.precision in ("16-mixed", "16") and cfg.optim.fused and cfg.trainer.gradient_clip_val:
        raise UserError(
            "trainer.precision=16-mixed scales the gradients and fused AdamW unscales them only inside its step, "
            "so they cannot be clipped: use bf16-mixed, optim.fused=false or trainer.gradient_clip_val=0"
        )
    # "high": TF32 matmuls on Ampere and newer; in this process (gpt.core.trainer.MatmulPrecision: in its workers)
    torch.set_float32_matmul_precision(cfg.matmul_precision)


def build_trainer(cfg: DictConfig, loggers: list, callbacks: list) -> L.Trainer:
    """Lightning's Trainer as ``cfg.trainer`` says, once the batch is known to split evenly over its devices.

    Under a Hydra multirun, several devices train with ``ddp_spawn``. Lightning's default launcher starts
    ranks 1..N-1 by re-running the command line, which under -m is the whole sweep: every child runs a sweep
    of its own in other folders, and later jobs start no ranks because LOCAL_RANK stays set (Lightning
    #11300, lightning-hydra-template #393; W&B #1314 for the runs that then merge). ddp_spawn starts each
    job's ranks from inside the job, with a process group of their own.
    """
    trainer = instantiate_trainer(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        if not isinstance(trainer.strategy, DDPStrategy):
            raise UserError(
                f"{type(trainer.strategy).__name__} can only start its processes by re-running the command, "
                "which re-runs the whole sweep: run the jobs of a multirun one by one"
            )
        trainer = instantiate_trainer(cfg.trainer, strategy="ddp_spawn", logger=loggers or False, callbacks=callbacks)
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        # The spawned rank 0 attaches to the W&B run started here, and without WANDB_DIR it would write the
        # run's media (the sample tables) under the current directory instead of the run's folder.
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                os.environ["WANDB_DIR"] = logger.save_dir
    world_size, accumulation = trainer.world_size, trainer.accumulate_grad_batches
    micro = micro_batch_size(cfg.data.batch_size, world_size, accumulation)
    if cfg.data.eval_chunks % world_size:  # Lightning averages the devices' chunk counts as integers, truncated
        raise UserError(
            f"data.eval_chunks={cfg.data.eval_chunks} must be a multiple of devices x nodes = {world_size}, "
            "so that every device evaluates an equal share"
        )
    if trainer.is_global_zero:
        log.info(
            f"batch: {cfg.data.batch_size} chunks of {cfg.data.block_size} tokens per optimizer step = "
            f"{world_size} device(s) x {accumulation} micro-batch(es) x {micro} chunks"
        )
        log.info(
            f"speed settings: precision {trainer.precision}, compile {cfg.compile}, fused AdamW {cfg.optim.fused}, "
            f"float32 matmul precision {cfg.matmul_precision}"
        )
    return trainer


STOPPED_EARLY = "training stopped before its first validation"  # the start of train's error then


def recover_spawned_fit(trainer: L.Trainer) -> None:
    """After ``ddp_spawn``, bring back what the worker processes knew: only the weights and the best
    checkpoint's path come back (Lightning's spawn launcher); last.ckpt has the best score and step count."""
    if not isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        return
    best = trainer.checkpoint_callback
    last = Path(best.dirpath) / f"{best.CHECKPOINT_NAME_LAST}{best.FILE_EXTENSION}"
    if not last.is_file():  # stopped before the first validation: nothing to bring back
        return
    checkpoint = read_checkpoint(last).raw
    best.load_state_dict(checkpoint["callbacks"][best.state_key])
    trainer.fit_loop.load_state_dict(checkpoint["loops"]["fit_loop"])


def train(cfg: DictConfig) -> float:
    """Train as ``cfg`` says; returns the best validation loss (the value a sweep minimises)."""
    warmup_steps = cfg.optim.warmup_steps  # as configured: a resumed run fits it to its checkpoint's schedule
    fit_to_run_length(cfg)
    check_config(cfg)
    resume = read_checkpoint(cfg.ckpt_path).require(RESUMABLE, "train.py ckpt_path=") if cfg.ckpt_path else None

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # download once, here, before any DDP worker starts
    datamodule.setup("fit")  # the corpus decides the vocabulary, which sizes the model
    vocab = datamodule.tokenizer.chars
    if cfg.resume == "auto" and resume is None:
        resume = latest_resumable(cfg, vocab)
    if resume is not None:
        keep_schedule(cfg, resume, warmup_steps)
        cfg.ckpt_path = str(resume.path)
    resolve_speed_settings(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    module = GPTModule(config["model"], config["optim"], vocab, run_config=config, compile=cfg.compile, seed=cfg.seed)
    if resume is not None:
        check_resumable(resume, module, cfg.trainer.max_steps)

    loggers = instantiate_loggers(cfg.logger, resume)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()]
    if (trial := current_trial()) is not None:  # a trial of an Optuna sweep: report to it, stop if pruned
        callbacks.append(TrialPruning(trial))
    trainer = build_trainer(cfg, loggers, callbacks)
    for logger in loggers:
        logger.log_hyperparams(config)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    recover_spawned_fit(trainer)

    best = trainer.checkpoint_callback
    if not best.best_model_path:  # trainer.max_time (or an interrupt) stopped it early
        raise UserError(
            f"{STOPPED_EARLY} (every trainer.val_check_interval={cfg.trainer.val_check_interval} steps), so it wrote "
            "no checkpoint: give it more time (trainer.max_time) or validate sooner"
        )
    tested = {}
    if datamodule.test_data is not None:  # once, with the best checkpoint: the test split never chooses one
        [tested] = trainer.test(
            module, datamodule=datamodule, ckpt_path=best.best_model_path, weights_only=True, verbose=False
        )
    if trainer.is_global_zero:
        model, tokenizer = load_model(best.best_model_path, module.device, kinds=("pretrained",), job="train.py")
        idx = torch.tensor([tokenizer.prompt_ids()], device=module.device)
        sample = tokenizer.decode(model.generate(idx, 300)[0].tolist())
        log.info(f"sample from the best checkpoint:{sample}")
        log.info(f"best val loss {best.best_model_score:.4f}, checkpoint {best.best_model_path}")
        test = {}
        if tested:
            test = {"test_loss": tested["test/loss"], "test_bpc": tested["test/bpc"]}
            log.info(f"test loss {test['test_loss']:.4f}, {test['test_bpc']:.4f} bits per {datamodule.unit}")
        result = write_result(  # what a sweep's summary reads
            cfg.output_dir,
            best_val_loss=float(best.best_model_score),
            best_val_bpc=bits(float(best.best_model_score)),
            **test,
            best_checkpoint=best.best_model_path,
            steps=trainer.global_step,
            params=sum(p.numel() for p in module.model.parameters()),
        )
        for logger in loggers:
            if isinstance(logger, CSVLogger):
                metrics = logger.experiment.metrics_file_path
                if resume is not None:  # the curve before the resume step, from the run it resumed
                    continue_metrics(resume.path.parent.parent / Path(metrics).name, metrics, resume.raw["global_step"])
                plot = plot_losses(metrics, result.parent / "loss.png")
                log.info(f"loss curves: {plot}")
    return float(best.best_model_score)
