"""Runs as people start them: a short try with no other override, extending a finished run, resume=auto."""

import pytest
import torch

from .conftest import TINY_RUN, metrics_rows, run_script, train

MIN_LR = 2e-4  # model=tiny's
LECTURE_RUN = ["model=tiny", *TINY_RUN]  # resuming, shown on the lecture's model and its cosine schedule


def test_a_20_step_run_needs_no_other_override(tmp_path, corpus_path):
    console = train("run", corpus_path, "trainer.max_steps=20", cwd=tmp_path)
    assert "trainer.val_check_interval=175 -> 20" in console  # the default model's 175 fitted to the run
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus_path):
    """A finished 20-step run, logging every step."""
    cwd = tmp_path_factory.mktemp("project")
    run = ["trainer.max_steps=20", "trainer.val_check_interval=10"]
    train("outputs/a", corpus_path, *LECTURE_RUN, *run, cwd=cwd)
    return cwd


def test_extending_a_finished_run_continues_its_learning_rate_and_its_curve(finished, corpus_path):
    last = finished / "outputs" / "a" / "checkpoints" / "last.ckpt"
    console = train(
        "outputs/extended", corpus_path, *LECTURE_RUN, "trainer.max_steps=30", "trainer.val_check_interval=10",
        f"ckpt_path={last}", cwd=finished,
    )  # fmt: skip
    assert "resuming keeps the checkpoint's schedule" in console
    rows = metrics_rows(finished / "outputs" / "extended")
    lr = {int(r["step"]): float(r["train/lr"]) for r in rows if r["train/lr"]}
    assert sorted(lr) == list(range(30))  # the whole curve: steps 0-19 from the first run, 20-29 from this one
    assert lr[20] == pytest.approx(MIN_LR) and lr[19] == pytest.approx(lr[20], rel=0.2)  # no jump (was 10.9x)
    assert all(lr[step] == pytest.approx(MIN_LR) for step in range(20, 30))  # a constant tail
    assert [int(r["step"]) + 1 for r in rows if r["val/loss"]] == [10, 20, 30]


def test_resuming_with_another_learning_rate_is_refused_in_one_line(finished, corpus_path):
    last = finished / "outputs" / "a" / "checkpoints" / "last.ckpt"
    result = run_script(
        "train.py", f"data.path={corpus_path}", *LECTURE_RUN, "trainer.max_steps=30", "optim.lr=1e-3",
        f"ckpt_path={last}", "hydra.run.dir=outputs/refused", cwd=finished,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot resume from")
    assert "optim.lr=0.001 (the checkpoint has" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_auto_takes_the_latest_run_of_the_same_model_and_data_or_starts_fresh(finished, corpus_path, tmp_path):
    run = [*LECTURE_RUN, "trainer.val_check_interval=10", "resume=auto"]
    # Another model size: no earlier run matches, so it starts fresh.
    console = train("outputs/b", corpus_path, *run, "model.n_embd=48", "trainer.max_steps=10", cwd=finished)
    assert "resume=auto: no earlier run" in console
    # The same model and data as run a, with steps left: it resumes a (not b, which is newer but another model).
    console = train("outputs/c", corpus_path, *run, "trainer.max_steps=30", cwd=finished)
    assert "resume=auto: resuming outputs/a/checkpoints/last.ckpt at step 20" in console
    assert torch.load(finished / "outputs" / "c" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    # In a folder with no runs at all: a fresh start.
    console = train("outputs/d", corpus_path, *run, "trainer.max_steps=10", cwd=tmp_path)
    assert "resume=auto: no earlier run" in console


def test_a_checkpoint_from_before_the_modern_switches_still_resumes(finished, corpus_path):
    """Its model config lacks the switches' keys; with their defaults filled in it is the same model."""
    checkpoint = torch.load(finished / "outputs" / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    lecture = ("arch", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "tie_weights")
    model = checkpoint["hyper_parameters"]["model"]
    checkpoint["hyper_parameters"]["model"] = {key: model[key] for key in lecture if key in model}
    old = finished / "old.ckpt"
    torch.save(checkpoint, old)
    run = [*LECTURE_RUN, "trainer.max_steps=30", "trainer.val_check_interval=10", f"ckpt_path={old}"]
    train("outputs/old", corpus_path, *run, cwd=finished)
    resumed = torch.load(finished / "outputs" / "old" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 30
