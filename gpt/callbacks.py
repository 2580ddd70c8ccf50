import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import grad_norm

WANDB_RUN_ID = "wandb_run_id"  # the checkpoint key under which WandbRun stores its run's id


def wandb_runs(trainer) -> list:
    """The W&B runs of the trainer's loggers (none off rank 0, where loggers do not log)."""
    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, WandbLogger)]


class TextSample(L.Callback):
    """After each validation, sample text from the model so the user watches it learn.

    The sample starts from a newline, as in the lecture, and uses the same random draws every time, so
    successive samples differ only because the model changed. It is printed, appended to
    ``samples.txt`` in the run folder and, with W&B, added to one table (step, prompt, text) that grows.
    """

    def __init__(self, max_new_tokens: int = 200, seed: int = 0):
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.table = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        tokenizer = pl_module.tokenizer
        idx = torch.tensor([tokenizer.prompt_ids()], device=pl_module.device)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        tokens = pl_module.model.generate(idx, self.max_new_tokens, generator=generator)  # still in eval mode
        text = tokenizer.decode(tokens[0].tolist())
        step = trainer.global_step
        pl_module.print(f"\n--- sample at step {step} ---{text}\n---")
        with open(Path(trainer.default_root_dir) / "samples.txt", "a", encoding="utf-8") as f:
            f.write(f"--- step {step} ---{text}\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                if self.table is None:
                    import wandb

                    # INCREMENTAL: each log uploads only the new row, and W&B shows all rows as one table.
                    # A plain table is immutable: each validation would add a separate one-row table.
                    self.table = wandb.Table(columns=["step", "prompt", "text"], log_mode="INCREMENTAL")
                prompt = tokenizer.decode(idx[0].tolist())
                self.table.add_data(step, prompt, text[len(prompt) :])
                logger.log_metrics({"samples": self.table}, step=step)


class TrainingStats(L.Callback):
    """Logs ``train/grad_norm`` (the total gradient norm, before clipping) and ``train/tokens_per_sec``.

    Both only on the steps the loggers record (every ``trainer.log_every_n_steps`` optimizer steps): reading
    a norm off a GPU waits for it, and doing that every step would stall the queue of kernels. The speed is
    the tokens of all devices divided by the wall time since the last logged step, validation excluded.
    """

    def __init__(self):
        self.start = None  # when the current timing window began; None: at the next training batch
        self.tokens = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:  # this step will be logged
            norms = grad_norm(pl_module, norm_type=2)
            if norms:
                pl_module.log("train/grad_norm", norms["grad_2.0_norm_total"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start is None:
            self.start, self.tokens = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tokens += batch[0].numel() * trainer.world_size  # a shape: no sync
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if stepped and trainer.global_step % trainer.log_every_n_steps == 0:
            pl_module.log("train/tokens_per_sec", self.tokens / (time.perf_counter() - self.start))
            self.start = None

    def on_validation_start(self, trainer, pl_module):
        self.start = None  # the next window starts after validation (and its checkpoints)


class WandbRun(L.Callback):
    """What a W&B run needs beyond the logged metrics.

    The parameter count and the best val loss go to the run summary (the runs table, and the metric a W&B
    sweep reads); the run id goes into every checkpoint, so that resuming from it continues this run.
    """

    def on_fit_start(self, trainer, pl_module):
        for run in wandb_runs(trainer):
            run.summary["model/params"] = sum(p.numel() for p in pl_module.model.parameters())

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        for run in wandb_runs(trainer):
            checkpoint[WANDB_RUN_ID] = run.id

    def on_train_end(self, trainer, pl_module):
        best = trainer.checkpoint_callback.best_model_score
        for run in wandb_runs(trainer):
            if best is not None:
                run.summary["val/best_loss"] = float(best)
