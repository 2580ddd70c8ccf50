import lightning as L
import pytest

from gpt.pretrain.data import CharDataModule
from gpt.pretrain.lightning_module import GPTModule

OPTIM = dict(lr=1e-2, weight_decay=0.1, betas=[0.9, 0.99], warmup_steps=5, decay_steps=40, min_lr=1e-3)
MODELS = {
    "bigram": dict(arch="bigram", block_size=16),
    "gpt": dict(arch="gpt", block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False),
}


def test_weight_decay_applies_to_matrices_only():
    module = GPTModule(MODELS["gpt"], OPTIM, vocab=list("abcdefgh"))
    decayed, not_decayed = module.configure_optimizers()["optimizer"].param_groups
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and decayed["params"]
    assert all(p.dim() == 1 for p in not_decayed["params"]) and not_decayed["params"]
    assert len(decayed["params"]) + len(not_decayed["params"]) == len(list(module.parameters()))


@pytest.mark.parametrize("arch, lr", [("bigram", 0.1), ("gpt", 0.01)])  # a lookup table learns only at a high lr
def test_training_drives_the_validation_loss_down(arch, lr, corpus_path):
    dm = CharDataModule(path=str(corpus_path), block_size=16, batch_size=16, eval_chunks=64)
    dm.prepare_data()
    dm.setup()
    module = GPTModule(MODELS[arch], {**OPTIM, "lr": lr, "min_lr": lr / 10}, vocab=dm.tokenizer.chars)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=40,
        val_check_interval=40,
        check_val_every_n_epoch=None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (before,) = trainer.validate(module, dm.val_dataloader()[:1], verbose=False)
    trainer.fit(module, datamodule=dm)
    (after,) = trainer.validate(module, dm.val_dataloader()[:1], verbose=False)
    assert after["val/loss"] < before["val/loss"] - 1.0, (before, after)
