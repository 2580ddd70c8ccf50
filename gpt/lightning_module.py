"""The LightningModule: trains any model of gpt.model with AdamW and a warmup + cosine schedule."""

import math
from functools import partial

import lightning as L
import torch

from gpt.model import build_model
from gpt.tokenizer import CharTokenizer


def lr_factor(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step``.

    Linear warmup over ``warmup_steps``, cosine decay down to ``min_lr_ratio`` at ``decay_steps``, then flat.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / (decay_steps - warmup_steps)
    return min_lr_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_lr_ratio)


class GPTModule(L.LightningModule):
    """Wraps a language model of gpt.model.

    Its hyperparameters (model config, optimizer config, vocabulary) are plain data stored in every
    checkpoint, so a checkpoint alone rebuilds the model and tokenizer. ``run_config``, the whole config of
    the run, is stored beside them as a record of how the checkpoint was made.
    """

    def __init__(self, model: dict, optim: dict, vocab: list[str], run_config: dict | None = None):
        super().__init__()
        self.save_hyperparameters("model", "optim", "vocab", logger=False)  # train.py logs run_config
        self.run_config = run_config
        self.tokenizer = CharTokenizer(vocab)
        self.model = build_model(vocab_size=len(vocab), **model)

    def training_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.model(x, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        # Lightning runs this in eval mode (no dropout) under no_grad and averages over the batches
        # (and, with sync_dist, over the devices that each evaluated a share of the chunks).
        x, y = batch
        _, loss = self.model(x, y)
        name = ("val/loss", "train/loss_eval")[dataloader_idx]
        self.log(name, loss, add_dataloader_idx=False, prog_bar=dataloader_idx == 0, sync_dist=True)

    def configure_optimizers(self):
        cfg = self.hparams.optim
        # Decay the matrices (weights, embeddings); leave biases and LayerNorm gains alone.
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg["weight_decay"]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]))
        schedule = partial(
            lr_factor,
            warmup_steps=cfg["warmup_steps"],
            decay_steps=cfg["decay_steps"],
            min_lr_ratio=cfg["min_lr"] / cfg["lr"],
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        # Lightning saves model, optimizer, scheduler and loop state; add the RNGs dropout draws from.
        checkpoint["config"] = self.run_config
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint):
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.device_count() == len(rng["cuda"]):
                torch.cuda.set_rng_state_all(rng["cuda"])
