"""The training job behind train.py: check the config, build data, model and trainer, fit, report."""

import logging

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gpt.checkpoint import load_model, read_checkpoint
from gpt.errors import UserError
from gpt.lightning_module import GPTModule
from gpt.model import ARCHITECTURES

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Raise one UserError listing every setting that cannot work, before anything is built."""
    model, data, optim, trainer = cfg.model, cfg.data, cfg.optim, cfg.trainer
    problems = []

    def require(ok, message):
        if not ok:
            problems.append(message)

    require(model.arch in ARCHITECTURES, f"model.arch={model.arch} is not one of {sorted(ARCHITECTURES)}")
    require(model.block_size >= 1, f"model.block_size={model.block_size} must be >= 1")
    if model.arch == "gpt":
        require(model.n_layer >= 1 and model.n_head >= 1, "model.n_layer and model.n_head must be >= 1")
        require(
            model.n_head >= 1 and model.n_embd % model.n_head == 0,
            f"model.n_embd={model.n_embd} must be divisible by model.n_head={model.n_head}",
        )
        require(0 <= model.dropout < 1, f"model.dropout={model.dropout} must be in [0, 1)")
    require(data.batch_size >= 1, f"data.batch_size={data.batch_size} must be >= 1")
    require(0 < data.train_fraction < 1, f"data.train_fraction={data.train_fraction} must be in (0, 1)")
    require(data.eval_chunks >= 1, f"data.eval_chunks={data.eval_chunks} must be >= 1")
    require(optim.lr > 0, f"optim.lr={optim.lr} must be > 0")
    require(0 <= optim.min_lr <= optim.lr, f"optim.min_lr={optim.min_lr} must be in [0, optim.lr={optim.lr}]")
    require(optim.weight_decay >= 0, f"optim.weight_decay={optim.weight_decay} must be >= 0")
    require(
        0 <= optim.warmup_steps <= optim.decay_steps,
        f"optim.warmup_steps={optim.warmup_steps} must be in [0, optim.decay_steps={optim.decay_steps}]",
    )
    require(trainer.max_steps >= 1, f"trainer.max_steps={trainer.max_steps} must be >= 1")
    require(
        isinstance(trainer.val_check_interval, int) and trainer.val_check_interval >= 1,
        f"trainer.val_check_interval={trainer.val_check_interval} must be a whole number of steps >= 1",
    )
    if not problems and trainer.max_steps * trainer.accumulate_grad_batches % trainer.val_check_interval:
        problems.append(
            f"trainer.max_steps={trainer.max_steps} must be a multiple of trainer.val_check_interval="
            f"{trainer.val_check_interval} so that the last step is validated and checkpointed"
        )
    if problems:
        raise UserError("invalid config:\n  - " + "\n  - ".join(problems))


def check_resumable(ckpt_path: str, module: GPTModule) -> None:
    """Refuse to resume from a checkpoint of another model or vocabulary, before training touches anything."""
    saved = read_checkpoint(ckpt_path)["hyper_parameters"]
    for key in ("model", "vocab"):
        if saved[key] != module.hparams[key]:
            raise UserError(
                f"cannot resume from {ckpt_path}: it was trained with {key}={saved[key]}, this run has "
                f"{key}={module.hparams[key]}; use the checkpoint's settings (its run's .hydra/config.yaml)"
            )


def train(cfg: DictConfig) -> float:
    """Train as ``cfg`` says; returns the best validation loss (the value a sweep minimises)."""
    check_config(cfg)
    # `import lightning` gives its logger a console handler of its own: under Hydra's logging, which already
    # prints to the console and train.log, that shows every Lightning message twice.
    logging.getLogger("lightning").handlers.clear()
    L.seed_everything(cfg.seed, workers=True)
    config = OmegaConf.to_container(cfg, resolve=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # download once, here, before any DDP worker starts
    datamodule.setup("fit")  # the corpus decides the vocabulary, which sizes the model
    module = GPTModule(config["model"], config["optim"], datamodule.tokenizer.chars, run_config=config)
    if cfg.ckpt_path:
        check_resumable(cfg.ckpt_path, module)

    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    for logger in loggers:
        logger.log_hyperparams(config)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)

    best = trainer.checkpoint_callback
    if trainer.is_global_zero:
        model, tokenizer = load_model(best.best_model_path, module.device)
        idx = torch.tensor([tokenizer.prompt_ids()], device=module.device)
        sample = tokenizer.decode(model.generate(idx, 300)[0].tolist())
        log.info(f"sample from the best checkpoint:{sample}")
        log.info(f"best val loss {best.best_model_score:.4f}, checkpoint {best.best_model_path}")
    return float(best.best_model_score)
