import json
import logging
import resource
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import grad_norm
from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

from gpt.core.loggers import WANDB_RUN_ID
from gpt.pretrain.sweeps import PRUNED_AT

log = logging.getLogger(__name__)


def wandb_runs(trainer) -> list:
    """The W&B runs of the trainer's loggers (none off rank 0, where loggers do not log)."""
    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def in_root_forward(trainer, pl_module, fn):
    """``fn()``, run inside the forward pass of the FSDP unit that wraps ``pl_module``; without FSDP, ``fn()``.

    Lightning's FSDPStrategy makes the LightningModule itself the root FSDP unit: what the blocks' own units
    leave (embeddings, final norm, head) lives in the root's flat parameter and is whole only during the
    root's forward. After it FSDP points those parameters back at this rank's shard (with
    ``use_orig_params``, Lightning's default, 1-D slices, some empty), so ``pl_module.model`` called from a
    hook fails ("'weight' must be 2-D"); without ``use_orig_params`` they still point at the gathered buffer,
    which the root keeps after a forward but frees after a backward. Going through the root's forward gathers
    them as every training or validation step does (Lightning reroutes ``validation_step`` the same way: a
    patched ``forward``, then a call of the wrapper). Each block inside gathers its own shards: every rank of
    the group must make this call, with the same inputs.
    """
    wrapper = trainer.strategy.model
    if not isinstance(wrapper, FullyShardedDataParallel) or wrapper.module is not pl_module:
        return fn()
    own = vars(pl_module).get("forward")  # a forward someone else set on the instance, kept as it was

    def restore():
        if own is None:
            vars(pl_module).pop("forward", None)
        else:
            pl_module.forward = own

    def forward():
        restore()  # fn may call the real forward
        return fn()

    pl_module.forward = forward
    try:
        return wrapper()
    finally:
        restore()


def gradient_shard_group(trainer):
    """The process group across which FSDP splits every gradient, or None where each rank holds them whole.

    None without FSDP (one device, DDP) and for FSDP's NO_SHARD; FSDP's process group (the world by default)
    for FULL_SHARD and SHARD_GRAD_OP; the ranks of one node for the hybrid strategies, whose nodes hold replicas.
    """
    wrapper = trainer.strategy.model
    if not isinstance(wrapper, FullyShardedDataParallel) or wrapper.sharding_strategy == ShardingStrategy.NO_SHARD:
        return None
    return wrapper.process_group


def total_grad_norm(trainer, pl_module) -> torch.Tensor | None:
    """The 2-norm of all gradients together, as if concatenated into one vector (None: there are none).

    Under FSDP each rank holds a disjoint shard of the gradients, so its local norm is a part: the total is
    the square root of the sum of the ranks' squared local norms, one all-reduce of a scalar in which every
    rank of the group must join (also one whose shard holds no gradient).
    """
    local = grad_norm(pl_module, norm_type=2).get("grad_2.0_norm_total")
    group = gradient_shard_group(trainer)
    if group is None:
        return local
    squared = torch.zeros((), device=pl_module.device) if local is None else (local**2).to(pl_module.device)
    return trainer.strategy.reduce(squared, group=group, reduce_op="sum").sqrt()


class TextSample(L.Callback):
    """After each validation, sample text from the model so the user watches it learn.

    The sample starts from a newline, as in the lecture, and uses the same random draws every time, so
    successive samples differ only because the model changed. It is printed, appended to
    ``samples.txt`` in the run folder and, with W&B, added to one table (step, prompt, text) that grows.

    Every rank samples, with the same seed, so the same text; only rank 0 shows and records it. A sharded
    model (FSDP) computes by gathering each unit's shards from all ranks: a forward pass on rank 0 alone
    would wait forever for the others.
    """

    def __init__(self, max_new_tokens: int = 200, seed: int = 0):
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.table = None

    def sample(self, trainer, pl_module) -> str:
        """The sample, prompt included. Every rank must call it (see ``in_root_forward``)."""
        idx = torch.tensor([pl_module.tokenizer.prompt_ids()], device=pl_module.device)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        # Still in eval mode (after validation): no dropout.
        tokens = in_root_forward(
            trainer, pl_module, lambda: pl_module.model.generate(idx, self.max_new_tokens, generator=generator)
        )
        return pl_module.tokenizer.decode(tokens[0].tolist())

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        text = self.sample(trainer, pl_module)  # on every rank
        if not trainer.is_global_zero:
            return
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
                prompt = pl_module.tokenizer.decode(pl_module.tokenizer.prompt_ids())
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

    def on_fit_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            model = pl_module.model
            log.info(f"model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:  # this step will be logged
            norm = total_grad_norm(trainer, pl_module)  # under FSDP an all-reduce: every rank gets here
            if norm is not None:
                pl_module.log("train/grad_norm", norm)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start is None:
            self.start, self.tokens = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tokens += batch[0].numel() * trainer.world_size  # a shape: no sync
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if stepped and trainer.global_step % trainer.log_every_n_steps == 0:
            pl_module.log("train/tokens_per_sec", self.tokens / (time.perf_counter() - self.start), prog_bar=True)
            self.start = None

    def on_validation_start(self, trainer, pl_module):
        self.start = None  # the next window starts after validation (and its checkpoints)


def peak_memory_mb(device: torch.device) -> float:
    """The most memory this process has held so far, in MB: ``torch.cuda.max_memory_allocated`` on a GPU, the
    process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def resident_memory_mb() -> dict:
    """This process's resident memory now, in MB, as Linux splits it (else {}): ``rss_anon_mb``, its own
    (tensors, the model, Python), and ``rss_file_mb``, pages of files it maps (a token file's pages that batches
    touched: shared with every process that maps the file, and given back whenever memory runs short)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in status.splitlines() if line.startswith(("RssAnon", "RssFile")))
    return {f"{key.lower()[:3]}_{key[3:].lower()}_mb": int(value.split()[0]) / 1024 for key, value in fields.items()}


class PeakMemory(L.Callback):
    """At the end of training, each rank writes its peak memory (``peak_memory_mb``), its resident memory then
    (``resident_memory_mb``), and when its training began
    (``time.time()``: a benchmark that started the process tells its start-up cost) to ``peak_memory_rank<r>.json``
    in the run folder. Not in the default callbacks: the benchmarks add it to a train.py run with
    ``+callbacks.peak_memory._target_=gpt.pretrain.callbacks.PeakMemory`` and read the files
    (``gpt.bench.race.read_run``, ``gpt.bench.data``)."""

    def on_train_start(self, trainer, pl_module):
        self.train_started = time.time()

    def on_train_end(self, trainer, pl_module):
        device = pl_module.device
        record = {"device": device.type, "peak_memory_mb": peak_memory_mb(device), "train_started": self.train_started}
        record.update(resident_memory_mb())
        path = Path(trainer.default_root_dir) / f"peak_memory_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))


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


class TrialPruning(L.Callback):
    """Reports ``val/loss`` to the Optuna trial this run is (``gpt.pretrain.sweeps``) at every validation, at its
    optimizer step, and stops the run where the study's pruner says the trial cannot win.

    A pruned run ends as one that reached ``max_steps`` there: its checkpoints, result and plots are written, and
    the trial records the step (``PRUNED_AT``), from which the sweeper marks it pruned. The last validation is
    reported but never pruned: the run is complete. Rank 0 reports and decides; every rank stops with it.
    (optuna-integration's Lightning callback reports at ``current_epoch``: training here is one endless epoch,
    so every report would land on step 0, where Optuna keeps only the first.)
    """

    def __init__(self, trial, monitor: str = "val/loss"):
        self.trial_ref, self.monitor = trial, monitor
        self.trial = None  # the Optuna trial, opened on rank 0 at its first report

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero:
            step, value = trainer.global_step, float(trainer.callback_metrics[self.monitor])
            trial = self._trial()
            trial.report(value, step)
            prune = step < trainer.max_steps and trial.should_prune()
            if prune:
                trial.set_user_attr(PRUNED_AT, step)
                log.info(f"trial {self.trial_ref.number} pruned at step {step} ({self.monitor} {value:.4f})")
        if trainer.strategy.broadcast(prune):
            trainer.should_stop = True

    def _trial(self):
        if self.trial is None:
            import optuna
            from hydra.utils import instantiate

            ref = self.trial_ref
            study = optuna.load_study(study_name=ref.study_name, storage=ref.storage, pruner=instantiate(ref.pruner))
            self.trial = optuna.trial.Trial(study, ref.trial_id)
        return self.trial

    def __getstate__(self):  # ddp_spawn pickles callbacks for its workers; an Optuna study does not pickle
        return {**vars(self), "trial": None}
