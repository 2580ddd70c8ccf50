"""What a GPU run executes, exercised on the CPU: bf16 autocast, fused AdamW, clipping, accumulation and
torch.compile together; a dropout stream per rank; the learning rate logged without a sync per step.

On a GPU the `auto` settings resolve to bf16-mixed, compile and fused AdamW
(gpt.pretrain.training.resolve_speed_settings). All three run on a CPU too, so these tests force them
there instead of skipping."""

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from gpt.core.errors import UserError
from gpt.core.trainer import instantiate_trainer
from gpt.pretrain.data import RandomBatches
from gpt.pretrain.lightning_module import GPTModule
from gpt.pretrain.training import resolve_speed_settings

from .conftest import TINY_RUN, metrics_rows, train, val_losses
from .test_config import compose_train
from .test_modern import MUON

VOCAB = [chr(c) for c in range(97, 117)]
MODEL = dict(arch="gpt", block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
OPTIM = dict(lr=1e-3, weight_decay=0.1, betas=[0.9, 0.99], warmup_steps=0, decay_steps=10, min_lr=1e-4)
GPU_SETTINGS = ["compile=true", "trainer.precision=bf16-mixed", "optim.fused=true"]


def trainer_cfg(**settings):
    return OmegaConf.create(
        {
            "_target_": "lightning.pytorch.Trainer",
            "accelerator": "cpu",
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 0,
            **settings,
        }
    )


class GradientNorms(L.Callback):
    """The total gradient norm after each optimizer step: what clipping left, since the step does not zero it."""

    def __init__(self):
        self.norms = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


def test_bf16_mixed_with_fused_adamw_clips_its_gradients():
    """Lightning 2.6.6 alone raises here at the first step ("does not allow for gradient clipping")."""
    module = GPTModule(MODEL, {**OPTIM, "fused": True}, VOCAB)
    norms = GradientNorms()
    cfg = trainer_cfg(precision="bf16-mixed", gradient_clip_val=1e-3, max_steps=3)
    trainer = instantiate_trainer(cfg, callbacks=[norms])
    trainer.fit(module, train_dataloaders=RandomBatches(torch.randint(20, (500,)), 16, 4, seed=0))
    assert trainer.precision == "bf16-mixed"
    assert module.optimizers().optimizer.defaults["fused"]
    assert norms.norms == pytest.approx([1e-3] * 3, rel=1e-3)  # every step clipped to the limit


@pytest.mark.parametrize("fused", [True, False], ids=["unfused_to_fused", "fused_to_unfused"])
@pytest.mark.parametrize("optim", [OPTIM, MUON], ids=["adamw", "muon"])
def test_a_resumed_optimizer_runs_the_kernel_this_run_asks_for(optim, fused, tmp_path):
    """optim.fused is this run's setting, whatever the checkpoint's: a CPU checkpoint (unfused) resumed on a GPU
    kept the unfused kernel, as torch restores every group's settings, while the log said "fused AdamW True"."""
    batches = RandomBatches(torch.randint(20, (500,)), 16, 4, seed=0)
    first = instantiate_trainer(trainer_cfg(max_steps=2))
    first.fit(GPTModule(MODEL, {**optim, "fused": not fused}, VOCAB), train_dataloaders=batches)
    first.save_checkpoint(tmp_path / "first.ckpt")
    module = GPTModule(MODEL, {**optim, "fused": fused}, VOCAB)
    resumed = instantiate_trainer(trainer_cfg(max_steps=4))
    resumed.fit(module, train_dataloaders=batches, ckpt_path=tmp_path / "first.ckpt")
    adamw = [g for g in module.optimizers().optimizer.param_groups if not g.get("use_muon")]
    assert resumed.global_step == 4 and [g["fused"] for g in adamw] == [fused, fused]  # decay, no decay


def test_16_mixed_with_fused_adamw_and_clipping_is_refused_in_one_line():
    cfg = compose_train("trainer.precision=16-mixed", "optim.fused=true")
    with pytest.raises(UserError, match="use bf16-mixed, optim.fused=false or trainer.gradient_clip_val=0"):
        resolve_speed_settings(cfg)
    resolve_speed_settings(
        compose_train("trainer.precision=16-mixed", "optim.fused=true", "trainer.gradient_clip_val=0")
    )


def test_learning_rate_is_logged_on_the_logged_steps_only(monkeypatch):
    """A float logged every step would be copied to the GPU every step, waiting for its queue of kernels."""
    logged_at = []
    log = GPTModule.log

    def spy(self, name, value, *args, **kwargs):
        if name == "train/lr":
            logged_at.append(self.global_step)
        return log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(GPTModule, "log", spy)
    trainer = instantiate_trainer(trainer_cfg(max_steps=12, log_every_n_steps=4))
    trainer.fit(
        GPTModule(MODEL, OPTIM, VOCAB), train_dataloaders=RandomBatches(torch.randint(20, (500,)), 16, 4, seed=0)
    )
    assert logged_at == [3, 7, 11]


def rng_after_setup(rank: int, seed: int) -> torch.Tensor:
    class Rank:
        global_rank = rank

    module = GPTModule(MODEL, OPTIM, VOCAB, seed=seed)
    module.trainer = Rank()
    module.setup("fit")
    return torch.rand(4)


def test_each_rank_draws_its_own_dropout_masks_from_the_seed():
    assert torch.equal(rng_after_setup(rank=1, seed=5), rng_after_setup(rank=1, seed=5))
    assert not torch.equal(rng_after_setup(rank=0, seed=5), rng_after_setup(rank=1, seed=5))
    assert not torch.equal(rng_after_setup(rank=0, seed=5), rng_after_setup(rank=0, seed=6))


@pytest.mark.slow
def test_the_gpu_settings_train_together_on_the_cpu(tmp_path, corpus_path):
    """The lecture model's shape (6 layers, 6 heads, dropout 0.2) at a width a CPU trains in seconds, compiled
    (inductor, as on a GPU), under bf16 autocast, with fused AdamW, clipping and 2 micro-batches per step."""
    small = ["model=small", "model.n_embd=48", "model.block_size=32", "data.batch_size=8", "data.eval_chunks=16"]
    steps = ["trainer.max_steps=6", "trainer.val_check_interval=3", "optim.warmup_steps=2"]
    gpu = [*GPU_SETTINGS, "trainer.accumulate_grad_batches=2"]
    console = train(tmp_path, corpus_path, *TINY_RUN, *small, *gpu, *steps)
    assert "speed settings: precision bf16-mixed, compile True, fused AdamW True" in console
    assert "2 micro-batch(es) x 4 chunks" in console
    losses = val_losses(tmp_path)
    assert sorted(losses) == [3, 6] and all(0 < loss < 10 for loss in losses.values())
    rows = metrics_rows(tmp_path)
    assert all(float(r["train/grad_norm"]) > 0 for r in rows if r["train/grad_norm"])


@pytest.mark.slow
def test_two_processes_with_dropout_resume_exactly(tmp_path, corpus_path):
    """Each rank's dropout stream is saved and restored: 10 + 10 steps on 2 processes equal 20 straight."""
    run = [*TINY_RUN, "trainer.devices=2", "model.dropout=0.1", "trainer.val_check_interval=10", "optim.decay_steps=20"]
    straight, first, second = tmp_path / "straight", tmp_path / "first", tmp_path / "second"
    train(straight, corpus_path, *run, "trainer.max_steps=20")
    train(first, corpus_path, *run, "trainer.max_steps=10")
    train(second, corpus_path, *run, "trainer.max_steps=20", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    checkpoint = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["rng"]["torch"].shape[0] == 2  # one state per rank
    expected = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, weight in expected.items():
        torch.testing.assert_close(resumed[name], weight, rtol=0, atol=1e-6)
