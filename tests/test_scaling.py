"""Scaling out, checked on CI's CPU: DDP over 2 processes (gloo), a multirun sweep over DDP, resuming on another
number of devices, the FSDP config. Every run is a train.py subprocess: an in-process DDP Trainer would
re-execute pytest as its second rank."""

import re
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import OmegaConf

from gpt.core.checkpoint import load_model
from gpt.core.errors import UserError
from gpt.core.model import Block
from gpt.pretrain.data import RandomBatches
from gpt.pretrain.lightning_module import GPTModule
from gpt.pretrain.training import build_trainer, check_config, resolve_speed_settings

from .conftest import TINY_RUN, metrics_rows, run_script, train, val_losses
from .test_config import compose_train

RUN = [*TINY_RUN, "logger=csv", "trainer.val_check_interval=5", "optim.decay_steps=20"]
TWO_PROCESSES = ["trainer.devices=2"]  # strategy auto: DDP, as `trainer.devices=4` gives on a 4-GPU machine

# fp32 sums in another order (two half-batch gradients all-reduced instead of one batch's) differ in the last
# bits: measured up to 1e-6 in weights and 3e-7 in val losses after 10 to 20 steps. Training on other chunks
# (say, a seed per rank) moved the val loss after 10 steps by 5e-3; both ranks on the same chunks, by 0.1.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus_path):
    """20 steps on one process, batch 8."""
    run_dir = tmp_path_factory.mktemp("one_process")
    train(run_dir, corpus_path, *RUN, "trainer.max_steps=20")
    return run_dir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, corpus_path):
    """The first 10 of those steps on two DDP processes, 4 chunks each."""
    run_dir = tmp_path_factory.mktemp("two_processes")
    console = train(run_dir, corpus_path, *RUN, "trainer.max_steps=10", *TWO_PROCESSES)
    assert "batch: 8 chunks of 16 tokens per optimizer step = 2 device(s) x 1 micro-batch(es) x 4 chunks" in console
    return run_dir


@pytest.mark.slow
def test_four_processes_train_exactly_like_one_with_the_same_batch(one_process, tmp_path, corpus_path):
    """`trainer.devices=4`, the design card's command, as 4 CPU processes over gloo: 2 chunks each."""
    console = train(tmp_path, corpus_path, *RUN, "trainer.max_steps=10", "trainer.devices=4")
    assert "= 4 device(s) x 1 micro-batch(es) x 2 chunks" in console
    one, four = val_losses(one_process), val_losses(tmp_path)
    assert sorted(four) == [5, 10]
    for step in four:
        assert four[step] == pytest.approx(one[step], abs=TOLERANCE)


def test_ranks_and_micro_batches_share_out_the_one_device_batch():
    data = torch.arange(1000)  # a chunk's first token tells where it starts
    whole, _ = next(iter(RandomBatches(data, 8, batch_size=12, seed=(1, 0), start=3)))  # step 3, one device
    shares = []
    for micro_step in range(3):  # step 3 on 2 devices with 3 micro-batches each
        for rank in range(2):
            start = 3 * 3 + micro_step
            stream = RandomBatches(data, 8, 12, (1, 0), start=start, rank=rank, world_size=2, accumulation=3)
            shares.append(next(iter(stream))[0])
    assert all(len(x) == 2 for x in shares)
    assert torch.equal(torch.cat(shares), whole)  # every rank trains on its own chunks of the same batch


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (
            ["trainer.accumulate_grad_batches=4"],
            "must be a multiple of devices x nodes x trainer.accumulate_grad_batches = 2 x 4",
        ),
        (["data.eval_chunks=15"], "data.eval_chunks=15 must be a multiple of devices x nodes = 2"),
    ],
    ids=["batch", "eval_chunks"],
)  # fmt: skip
def test_batches_that_do_not_split_evenly_over_the_devices_are_refused(overrides, problem):
    def trainer(*overrides):
        cfg = compose_train(*TWO_PROCESSES, "trainer.accelerator=cpu", "data.batch_size=12", *overrides)
        resolve_speed_settings(cfg)
        return build_trainer(cfg, loggers=[], callbacks=[])

    assert trainer().world_size == 2  # 6 chunks each
    with pytest.raises(UserError, match=re.escape(problem)):
        trainer(*overrides)


@pytest.mark.slow
def test_two_processes_train_exactly_like_one_with_the_same_batch(one_process, two_processes):
    one, two = val_losses(one_process), val_losses(two_processes)
    assert sorted(two) == [5, 10]
    for step in two:
        assert two[step] == pytest.approx(one[step], abs=TOLERANCE)
    assert (two_processes / "samples.txt").read_text().count("--- step") == 2  # written by rank 0 only


@pytest.mark.slow
def test_checkpoint_of_two_processes_resumes_on_one_at_its_step(one_process, two_processes, tmp_path, corpus_path):
    two_process_checkpoint = two_processes / "checkpoints" / "last.ckpt"
    model, _ = load_model(two_process_checkpoint)  # what sample.py does, on the CPU
    saved = torch.load(two_process_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(weight, saved[f"model.{name}"]) for name, weight in model.state_dict().items())
    # One process, and the batch of 8 in 2 micro-batches of 4; validation still every 5 optimizer steps.
    accumulating = ["trainer.accumulate_grad_batches=2", "trainer.val_check_interval=5"]
    resume = [*accumulating, f"ckpt_path={two_process_checkpoint}"]
    console = train(tmp_path, corpus_path, *RUN, "trainer.max_steps=20", *resume)
    resumed_losses = val_losses(tmp_path)  # steps 5 and 10 come from the 2-process run: the whole curve
    assert sorted(resumed_losses) == [5, 10, 15, 20]
    assert all(resumed_losses[step] == loss for step, loss in val_losses(two_processes).items())
    assert "RNG states of 2 device(s), this run has 1: dropout reseeded on each rank from (seed, rank, step)" in console
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    straight = torch.load(one_process / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 20
    assert resumed["lr_schedulers"][0]["last_epoch"] == 20  # the schedule counts optimizer steps, not micro-batches
    for name, weight in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], weight, rtol=0, atol=TOLERANCE)


@pytest.mark.slow
def test_multirun_over_ddp_gives_one_folder_checkpoint_and_log_per_job(tmp_path, corpus_path):
    """Without the fix in gpt.pretrain.training.build_trainer each DDP child re-runs the sweep in folders of its own."""
    result = run_script(
        "train.py", "-m", "optim.lr=1e-3,3e-4", "trainer=ddp", *TWO_PROCESSES, f"data.path={corpus_path}",
        "hydra.sweep.dir=sweep", *RUN, "trainer.max_steps=4", "trainer.val_check_interval=2", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["sweep"]  # no outputs/, multirun/ or wandb/ beside it
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, lr in (("0", 1e-3), ("1", 3e-4)):
        assert {p.name for p in (sweep / job / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
        rows = metrics_rows(sweep / job)
        assert sorted(int(r["step"]) + 1 for r in rows if r["val/loss"]) == [2, 4]
        assert max(float(r["train/lr"]) for r in rows if r["train/lr"]) == pytest.approx(lr)
        assert torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert result.stdout.count("2 device(s) x 1 micro-batch(es) x 4 chunks") == 2  # once per job, from rank 0


class RecordProcessSettings(L.Callback):
    """Each rank writes the float32 matmul precision and deterministic-algorithms flag it trains with."""

    def on_train_start(self, trainer, pl_module):
        path = Path(trainer.default_root_dir) / f"settings_rank{trainer.global_rank}.txt"
        path.write_text(f"{torch.get_float32_matmul_precision()} {torch.are_deterministic_algorithms_enabled()}")


@pytest.mark.slow
def test_ddp_spawn_workers_train_with_the_runs_per_process_settings(tmp_path, corpus_path):
    """The matmul precision is a process's own: ddp_spawn's workers (a multirun over DDP) started at torch's default,
    "highest", whatever the run said. Lightning carries the deterministic flag over itself."""
    record = f"+callbacks.record._target_={RecordProcessSettings.__module__}.RecordProcessSettings"
    settings = ["matmul_precision=medium", "+trainer.deterministic=true"]
    train(tmp_path, corpus_path, *RUN, "trainer=ddp_spawn", *TWO_PROCESSES, *settings, record, "trainer.max_steps=2")
    assert [(tmp_path / f"settings_rank{r}.txt").read_text() for r in range(2)] == ["medium True"] * 2


def test_fsdp_config_shards_by_block_and_saves_one_full_checkpoint():
    cfg = compose_train("model=large", "trainer=fsdp")
    check_config(cfg)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy._state_dict_type == "full"  # one consolidated file: sample.py and any device count read it
    assert Block in strategy.kwargs["auto_wrap_policy"]._module_classes


# The GPU test's run: model=tiny (AdamW) at TINY_RUN's size; the default model's Muon refuses FSDP
FSDP_RUN = ["model=tiny", "trainer=fsdp", "trainer.accelerator=gpu", "trainer.devices=1"]


def test_the_gpu_fsdp_run_trains_a_model_fsdp_can_shard():
    """The run below sets up its optimizer under FSDP as on the GPU. It set no model, so it got the default's
    Muon, which FSDP refuses ("optim=muon orthogonalises whole matrices"): the GPU report's FSDP test could not pass."""
    cfg = compose_train(*RUN, *FSDP_RUN)
    check_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    module = GPTModule(config["model"], config["optim"], vocab=list("abcdefgh"))
    module.trainer = SimpleNamespace(strategy=instantiate(cfg.trainer.strategy))
    assert isinstance(module.trainer.strategy, FSDPStrategy)
    assert module.configure_optimizers()["optimizer"].param_groups[0]["weight_decay"] == 0.1


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="Lightning's FSDP needs CUDA (tests/test_fsdp.py: its code path on CPU)"
)
def test_fsdp_trains_and_its_checkpoint_samples_on_the_cpu(tmp_path, corpus_path):
    train(tmp_path, corpus_path, *RUN, *FSDP_RUN, "trainer.max_steps=10")
    model, _ = load_model(tmp_path / "checkpoints" / "best.ckpt", "cpu")
    assert next(model.parameters()).device.type == "cpu"
    resumed = tmp_path / "resumed"
    train(
        resumed,
        corpus_path,
        *RUN,
        "model=tiny",
        "trainer.max_steps=20",
        f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
    )
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
