"""train.py and sample.py end to end, run as a user runs them: separate processes, through Hydra."""

import pytest
import torch
from omegaconf import OmegaConf

from gpt.core.checkpoint import read_checkpoint
from gpt.core.errors import UserError
from gpt.core.model import GPT
from gpt.pretrain.lightning_module import GPTModule
from gpt.pretrain.training import check_resumable
from gpt.sampling import sample

from .conftest import ROOT, TINY_RUN, metrics_rows, run_script, train
from .test_checkpoint import stage_module, write_checkpoint

RUN = [*TINY_RUN, "model.dropout=0.1", "trainer.val_check_interval=10", "optim.decay_steps=20"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus_path):
    """One 20-step training run, shared by the tests that read what it wrote."""
    run_dir = tmp_path_factory.mktemp("run")
    console = train(run_dir, corpus_path, *RUN, "trainer.max_steps=20")
    (run_dir / "console.txt").write_text(console)
    return run_dir


def sample_cfg(checkpoint, **overrides):
    defaults = OmegaConf.load(ROOT / "conf" / "sample.yaml")
    del defaults["defaults"], defaults["hydra"]
    return OmegaConf.merge(defaults, {"ckpt": str(checkpoint), **overrides})


def test_training_writes_checkpoints_metrics_samples_and_reports_the_best(run_dir):
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    rows = metrics_rows(run_dir)
    val = {int(r["step"]): float(r["val/loss"]) for r in rows if r["val/loss"]}
    assert sorted(val) == [9, 19]  # validated every 10 steps (the CSV counts from 0)
    assert all(r["train/loss_eval"] for r in rows if r["val/loss"])
    assert len([r for r in rows if r["train/loss"]]) == 20 and any(r["train/lr"] for r in rows)
    # the default model trains with Muon: its rate is logged beside AdamW's, on one schedule
    optim = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["optim"]
    lrs = [(float(r["train/lr"]), float(r["train/muon_lr"])) for r in rows if r["train/lr"]]
    assert len(lrs) == 20 and all(muon / adamw == pytest.approx(optim["muon_lr"] / optim["lr"]) for adamw, muon in lrs)
    assert (run_dir / "samples.txt").read_text().count("--- step") == 2
    console = (run_dir / "console.txt").read_text()
    assert f"best val loss {min(val.values()):.4f}" in console
    assert str(run_dir / "checkpoints" / "best.ckpt") in console


def test_checkpoint_is_plain_data_with_tokenizer_config_and_rng(run_dir, corpus_path):
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 20
    assert checkpoint["hyper_parameters"]["vocab"] == sorted(set(corpus_path.read_text()))
    assert checkpoint["hyper_parameters"]["model"]["n_embd"] == 32
    assert checkpoint["config"]["trainer"]["max_steps"] == 20
    assert checkpoint["rng"]["torch"].dtype == torch.uint8
    assert checkpoint["kind"] == "pretrained"
    assert torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["kind"] == "pretrained"
    assert checkpoint["optimizer_states"][0]["state"] and checkpoint["lr_schedulers"][0]["last_epoch"] == 20


def test_resuming_continues_exactly_where_the_run_stopped(run_dir, corpus_path, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train(first, corpus_path, *RUN, "trainer.max_steps=10")
    train(second, corpus_path, *RUN, "trainer.max_steps=20", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    straight = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 20
    for name, weight in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], weight, rtol=0, atol=1e-6)
    straight_state = straight["optimizer_states"][0]["state"]
    for i, state in resumed["optimizer_states"][0]["state"].items():  # AdamW's moments, Muon's momentum
        assert state.keys() == straight_state[i].keys()
        for key, value in state.items():
            torch.testing.assert_close(value, straight_state[i][key], rtol=0, atol=1e-9)


def test_resuming_with_accumulation_and_an_odd_interval_continues_exactly(corpus_path, tmp_path):
    """Validation (and its checkpoint) every 5 optimizer steps of 2 micro-batches: never mid-accumulation."""
    run = [*RUN, "trainer.accumulate_grad_batches=2", "trainer.val_check_interval=5", "optim.decay_steps=20"]
    straight, first, second = tmp_path / "straight", tmp_path / "first", tmp_path / "second"
    train(straight, corpus_path, *run, "trainer.max_steps=20")
    train(first, corpus_path, *run, "trainer.max_steps=15")
    train(second, corpus_path, *run, "trainer.max_steps=20", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    rows = metrics_rows(second)
    assert [int(r["step"]) + 1 for r in rows if r["val/loss"]] == [5, 10, 15, 20]  # steps 5-15 from the first run
    expected = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, weight in expected.items():
        torch.testing.assert_close(resumed[name], weight, rtol=0, atol=1e-6)


def test_a_quick_try_extends_into_a_longer_run_with_its_schedule(corpus_path, tmp_path):
    """model=tiny's warmup of 100 steps, fitted to a 10-step try (1 step), stays 1 when the try goes on to 20
    steps (it was refused: "optim.warmup_steps=2 (the checkpoint has 1)", the warmup fitted to 20 steps against the
    one fitted to 10); the schedule's end stays at 10."""
    quick = [o for o in TINY_RUN if not o.startswith("optim.warmup_steps")]
    train(tmp_path / "try", corpus_path, "model=tiny", *quick, "trainer.max_steps=10")
    last = tmp_path / "try" / "checkpoints" / "last.ckpt"
    train(tmp_path / "on", corpus_path, "model=tiny", *quick, "trainer.max_steps=20", f"ckpt_path={last}")
    extended = torch.load(tmp_path / "on" / "checkpoints" / "last.ckpt", weights_only=True)
    assert extended["global_step"] == 20
    assert (
        extended["hyper_parameters"]["optim"]["warmup_steps"],
        extended["hyper_parameters"]["optim"]["decay_steps"],
    ) == (1, 10)


def test_a_run_stopped_before_its_first_validation_says_so_in_one_line(corpus_path, tmp_path):
    """trainer.max_time (here: at once) stopped the run before it validated or wrote a checkpoint, and train.py then
    loaded a best checkpoint of "", the current folder: "is not a model exported by export.py"."""
    args = [f"data.path={corpus_path}", f"hydra.run.dir={tmp_path}", *RUN, "trainer.max_steps=20"]
    result = run_script("train.py", *args, "+trainer.max_time=00:00:00:00")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: training stopped before its first validation (every trainer.val_check_interval=10 steps), so it "
        "wrote no checkpoint: give it more time (trainer.max_time) or validate sooner"
    )


def test_resuming_from_another_model_is_refused(run_dir):
    other = GPTModule(dict(arch="bigram", block_size=16), {}, vocab=list("ab"))
    with pytest.raises(UserError, match="cannot resume.*trained with model="):
        check_resumable(read_checkpoint(run_dir / "checkpoints" / "last.ckpt"), other)


def test_resuming_a_finished_run_asks_for_more_steps(run_dir):
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    steps = last.raw["global_step"]
    other = GPTModule({"arch": "bigram", "block_size": 16}, {}, vocab=list("ab"))
    with pytest.raises(UserError, match=f"already trained {steps} steps.*raise trainer.max_steps"):
        check_resumable(last, other, max_steps=steps)
    with pytest.raises(UserError, match="cannot resume"):  # with steps left, the model check comes next
        check_resumable(last, other, max_steps=steps + 1)


def test_sample_script_streams_text_that_continues_the_prompt(run_dir, corpus_path, tmp_path):
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    args = [f"ckpt={ckpt}", "prompt=ROMEO:", "num_samples=2", "max_new_tokens=40", "device=cpu"]
    result = run_script("sample.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    samples = result.stdout.rstrip("\n").split("\n" + "-" * 40 + "\n")
    assert len(samples) == 2
    vocab = set(corpus_path.read_text())
    for text in samples:
        assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40
        assert set(text) <= vocab
    assert list(tmp_path.iterdir()) == []  # sampling writes no files


def test_sampling_is_reproducible_with_a_seed_and_starts_from_a_newline(run_dir, capsys):
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    outputs = []
    for seed in (1, 1, 2):
        sample(sample_cfg(ckpt, max_new_tokens=60, seed=seed))
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] != outputs[2]
    assert outputs[0].startswith("\n") and len(outputs[0]) == 1 + 60 + 1  # newline start, text, final newline
    sample(sample_cfg(ckpt, max_new_tokens=30, temperature=0))  # greedy: the documented temperature 0
    assert len(capsys.readouterr().out) == 1 + 30 + 1


def test_several_samples_are_drawn_as_one_batch_that_matches_single_samples(run_dir, capsys, monkeypatch):
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    sample(sample_cfg(ckpt, max_new_tokens=40, temperature=0, prompt="ROMEO:"))
    single = capsys.readouterr().out[:-1]  # print's final newline
    calls = []
    real = GPT.generate
    monkeypatch.setattr(GPT, "generate", lambda self, idx, *a, **k: calls.append(idx.shape) or real(self, idx, *a, **k))
    sample(sample_cfg(ckpt, max_new_tokens=40, temperature=0, prompt="ROMEO:", num_samples=3))
    assert capsys.readouterr().out[:-1].split("\n" + "-" * 40 + "\n") == [single] * 3  # greedy: equal rows
    sample(sample_cfg(ckpt, max_new_tokens=40, prompt="ROMEO:", num_samples=3))
    assert len(set(capsys.readouterr().out.split("\n" + "-" * 40 + "\n"))) == 3  # drawn: three samples
    assert calls == [(3, 6), (3, 6)]  # one batch of 3 rows each time, not 3 loops


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"prompt": "ROMEO: Ω"}, "not in the vocabulary: 'Ω'"),
        ({"temperature": -0.5}, "temperature=-0.5 must be > 0"),
        ({"top_k": 0}, "top_k=0 must be >= 1"),
        ({"prompt": "a", "prompt_file": "p.txt"}, "either prompt"),
        ({"ckpt": "missing.ckpt"}, "checkpoint missing.ckpt not found"),
        ({"ckpt": None}, "which checkpoint"),
    ],
)
def test_bad_sampling_input_gets_a_clear_error(run_dir, overrides, message):
    cfg = sample_cfg(run_dir / "checkpoints" / "best.ckpt", **overrides)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        sample(cfg)


def test_files_that_are_not_our_checkpoints_are_refused(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    for path, message in ((garbage, "not a checkpoint this project can read"), (foreign, "not written by")):
        with pytest.raises(UserError, match=message):
            sample(sample_cfg(path))


def test_errors_print_one_line_without_a_traceback(tmp_path, corpus_path):
    bad_config = run_script("train.py", f"hydra.run.dir={tmp_path}", "model.n_embd=100", "model.n_head=3")
    missing_data = run_script("train.py", f"hydra.run.dir={tmp_path}", f"data.path={tmp_path / 'none.txt'}")
    missing_ckpt = run_script("sample.py", f"ckpt={tmp_path / 'none.ckpt'}")
    for result in (bad_config, missing_data, missing_ckpt):
        assert result.returncode == 1
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "divisible" in bad_config.stderr and "does not exist" in missing_data.stderr


def test_wandb_logger_runs_offline_without_account_or_prompt(tmp_path, corpus_path):
    train(tmp_path, corpus_path, *RUN, "logger=wandb", "trainer.max_steps=10")
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("*.wandb"))
    assert (tmp_path / "metrics.csv").exists()  # the CSV log is kept beside W&B


@pytest.fixture(scope="module")
def fine_tuned(run_dir, tmp_path_factory):
    """An SFT and a reward model checkpoint of the run's own model and vocabulary, as their stages write them."""
    pretrained = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    folder = tmp_path_factory.mktemp("fine_tuned")
    return {
        kind: write_checkpoint(stage_module(kind, pretrained.model_config, pretrained.vocab), folder / f"{kind}.ckpt")
        for kind in ("sft", "reward")
    }


@pytest.mark.parametrize(
    "script, kind, args, message",
    [
        (
            "train.py",
            "reward",
            ["trainer.max_steps=20"],
            "is a reward model checkpoint (finetune.py stage=reward); "
            "train.py ckpt_path= needs a pre-trained checkpoint (train.py)",
        ),
        (
            "train.py",
            "sft",
            ["trainer.max_steps=20"],
            "is an SFT checkpoint (finetune.py stage=sft); "
            "train.py ckpt_path= needs a pre-trained checkpoint (train.py)",
        ),
        (
            "sample.py",
            "reward",
            ["device=cpu"],
            "is a reward model checkpoint (finetune.py stage=reward); "
            "sample.py needs a language model: a checkpoint of train.py, finetune.py stage=sft, stage=ppo, stage=dpo "
            "or stage=grpo",
        ),
    ],
)
def test_a_checkpoint_of_the_wrong_kind_is_refused_in_one_line(
    fine_tuned, corpus_path, tmp_path, script, kind, args, message
):
    key = "ckpt_path" if script == "train.py" else "ckpt"
    ckpt = fine_tuned[kind]
    run = [f"data.path={corpus_path}", *RUN] if script == "train.py" else []
    result = run_script(script, f"{key}={ckpt}", f"hydra.run.dir={tmp_path}", *run, *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {ckpt} {message}"
