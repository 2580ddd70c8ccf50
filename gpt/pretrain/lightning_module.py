"""GPTModule: pre-trains any model of gpt.core.model with AdamW (or Muon + AdamW) and a warmup + cosine (or
warmup-stable-decay) schedule, on the shared base of gpt.core.module."""

import math
import time

import torch
from lightning.pytorch.strategies import FSDPStrategy

from gpt.core.errors import UserError
from gpt.core.model import build_model
from gpt.core.module import CheckpointedModule


def bits(nats):
    """A loss in bits per character (per token: per byte for tokenizer=byte, as enwik8's results are reported)
    from one in nats: nats / ln 2."""
    return nats / math.log(2)


class GPTModule(CheckpointedModule):
    """Pre-trains a language model of gpt.core.model; its checkpoints are of kind ``pretrained``.

    Its hyperparameters (model config, optimizer config, vocabulary) are plain data stored in every
    checkpoint, so a checkpoint alone rebuilds the model and tokenizer (see ``CheckpointedModule``).

    With ``compile`` the training forward pass goes through ``torch.compile(self.model.forward)``: the
    compiled function is not a submodule, so the weights keep their names and a checkpoint loads the same
    whether or not it was trained compiled. Validation and sampling use the eager model (their shapes vary).
    """

    KIND = "pretrained"

    def __init__(
        self,
        model: dict,
        optim: dict,
        vocab: list[str],
        run_config: dict | None = None,
        compile: bool = False,
        seed: int = 0,
    ):
        super().__init__(model, optim, vocab, run_config, seed)
        try:
            self.model = build_model(vocab_size=len(vocab), **model)
        except ValueError as err:  # a model setting that cannot work: one line from the entry points
            raise UserError(f"invalid config: {err}") from err
        self.compiled = compile
        self.train_forward = torch.compile(self.model.forward) if compile else self.model.forward
        self.fit_started = None

    def __getstate__(self):
        # ddp_spawn pickles the module for its worker processes, and a compiled function does not pickle:
        # leave it out and compile again on arrival.
        return {**super().__getstate__(), "train_forward": None}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.train_forward = torch.compile(self.model.forward) if self.compiled else self.model.forward

    def training_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.train_forward(x, y)
        # A logged tensor stays on the device until a logger or the progress bar reads it (every
        # trainer.log_every_n_steps): no host sync in the step.
        self.log("train/loss", loss, prog_bar=True)
        self.log_learning_rate()
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # FSDP shards the gradients, so only the sharded model can compute their global norm: Lightning's own
        # clipping refuses FSDP and asks for the model's clip_grad_norm_.
        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        # Lightning runs this in eval mode (no dropout) under no_grad and averages over the batches
        # (and, with sync_dist, over the devices that each evaluated a share of the chunks).
        x, y = batch
        _, loss = self.model(x, y)
        name = ("val/loss", "train/loss_eval")[dataloader_idx]
        self.log(name, loss, add_dataloader_idx=False, prog_bar=dataloader_idx == 0, sync_dist=True)
        if dataloader_idx == 0:
            self.log("val/bpc", bits(loss), add_dataloader_idx=False, sync_dist=True)

    def test_step(self, batch, batch_idx):
        # The test split's loss and bits, averaged over the batches' tokens: the batches are of one size but perhaps
        # the last.
        x, y = batch
        _, loss = self.model(x, y)
        self.log("test/loss", loss, sync_dist=True)
        self.log("test/bpc", bits(loss), sync_dist=True)

    def on_fit_start(self):
        self.fit_started = time.perf_counter()

    def on_validation_epoch_end(self):
        # Wall time beside each validation loss: runs are compared per second, not only per step.
        if self.fit_started is not None:
            self.log("time/elapsed_s", time.perf_counter() - self.fit_started, sync_dist=True)

    def configure_optimizers(self):
        if self.hparams.optim.get("name", "adamw") != "muon":
            return super().configure_optimizers()
        optimizer, scheduler = self.muon(self.model.named_parameters())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)  # the RNG states
        if "loops" in checkpoint:
            # Lightning counts the interval between validations in micro-batches since the run began. Restate
            # that count in this run's micro-batches, so that a run resumed with another accumulation (another
            # device count, the same batch) still validates and checkpoints on the same optimizer steps.
            micro_batches = checkpoint["global_step"] * self.trainer.accumulate_grad_batches
            progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
            for counts in (progress["total"], progress["current"]):
                counts.update(dict.fromkeys(counts, micro_batches))
