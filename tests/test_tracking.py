"""Experiment tracking end to end, through train.py as a user runs it: the W&B run folder (offline, no account,
stdin closed), the loss-curve PNG, resuming a W&B run, multiruns and a grid's summary, the W&B sweep's space and
command (Optuna studies: tests/test_sweeps.py)."""

import json
import struct
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from gpt.core.loggers import WANDB_RUN_ID

from .conftest import ROOT, TINY_RUN, csv_metric, run_script, train

RUN = [*TINY_RUN, "trainer.max_steps=10", "trainer.val_check_interval=5"]


def read_wandb_run(run_dir: Path) -> dict:
    """The records of an offline W&B run, read from its .wandb file with W&B's own protobuf definitions.

    The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each with a 7-byte header
    (checksum, length, type) and a piece of a serialized ``Record``; type 1 is a whole record, 2-4 its
    first, middle and last pieces.
    """
    from wandb.proto.wandb_internal_pb2 import Record

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    run = {"id": None, "history": [], "config": {}, "summary": {}, "exit_code": None}
    pos, pieces = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):
            continue
        record = Record.FromString(pieces)
        pieces = b""

        def items(updates):
            return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in updates}

        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"] = record.run.run_id
        elif kind == "history":
            run["history"].append(items(record.history.item))
        elif kind == "config":
            run["config"].update(items(record.config.update))
        elif kind == "summary":
            run["summary"].update(items(record.summary.update))
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def wandb_run_dirs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def read_yaml(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, corpus_path):
    """A 10-step W&B run (validated at steps 5 and 10), offline as it is by default."""
    run_dir = tmp_path_factory.mktemp("wandb_run")
    train(run_dir, corpus_path, *RUN, "logger=wandb")
    return run_dir


def test_a_run_plots_its_loss_curves_and_writes_its_result_without_wandb(tmp_path, corpus_path):
    console = train(tmp_path, corpus_path, *RUN)
    png = tmp_path / "loss.png"
    assert f"loss curves: {png}" in console
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.size == (800, 600)
        assert len(image.convert("RGB").getcolors(maxcolors=800 * 600)) > 10  # curves, not a blank canvas
    result = read_yaml(tmp_path / "result.yaml")
    assert result["best_val_loss"] == min(csv_metric(tmp_path, "val/loss"))
    assert result["steps"] == 10 and result["best_checkpoint"] == str(tmp_path / "checkpoints" / "best.ckpt")
    assert not (tmp_path / "wandb").exists()


def test_wandb_offline_run_logs_config_metrics_samples_and_summary(wandb_run):
    (run_dir,) = wandb_run_dirs(wandb_run)
    run = read_wandb_run(run_dir)
    assert run["exit_code"] == 0  # finished, as a success
    history = run["history"]

    def logged(name):
        return [row[name] for row in history if name in row]

    for name in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec"):
        assert len(logged(name)) == 10 and min(logged(name)) > 0, name  # each step (log_every_n_steps=1)
    for name in ("val/loss", "train/loss_eval"):
        assert len(logged(name)) == 2, name  # each validation
    assert logged("train/loss") == csv_metric(wandb_run, "train/loss")
    assert logged("val/loss") == csv_metric(wandb_run, "val/loss")

    config = run["config"]  # the whole resolved config, as nested dicts
    assert config["model"]["n_embd"] == 32 and config["data"]["batch_size"] == 8
    assert config["trainer"]["max_steps"] == 10 and config["optim"]["decay_steps"] == 10
    assert max(logged("train/lr")) == pytest.approx(config["optim"]["lr"])  # the peak, after warmup

    result = read_yaml(wandb_run / "result.yaml")
    assert run["summary"]["val/best_loss"] == result["best_val_loss"] == min(logged("val/loss"))
    assert run["summary"]["model/params"] == result["params"] > 0

    # One samples table that grows: the second log adds a row to the first instead of replacing it.
    tables = [{k.removeprefix("samples/"): v for k, v in row.items() if k.startswith("samples/")} for row in history]
    tables = [table for table in tables if table]
    assert [(t["_type"], t["increment_num"], t["nrows"]) for t in tables] == [
        ("incremental-table-file", 0, 1),
        ("incremental-table-file", 1, 2),
    ]
    assert len(tables[1]["previous_increments_paths"]) == 1
    rows = [json.loads((run_dir / "files" / t["path"]).read_text()) for t in tables]
    assert all(r["columns"] == ["step", "prompt", "text"] for r in rows)
    assert [r["data"][0][:2] for r in rows] == [[5, "\n"], [10, "\n"]]
    samples = (wandb_run / "samples.txt").read_text()
    assert all(r["data"][0][2] in samples and len(r["data"][0][2]) == 20 for r in rows)


def test_resuming_a_checkpoint_continues_its_wandb_run(wandb_run, corpus_path, tmp_path):
    checkpoint = wandb_run / "checkpoints" / "last.ckpt"
    (first,) = wandb_run_dirs(wandb_run)
    first_id = read_wandb_run(first)["id"]
    assert torch.load(checkpoint, weights_only=True)[WANDB_RUN_ID] == first_id
    train(tmp_path, corpus_path, *RUN, "logger=wandb", f"ckpt_path={checkpoint}", "trainer.max_steps=20")
    (resumed_dir,) = wandb_run_dirs(tmp_path)
    resumed = read_wandb_run(resumed_dir)
    assert resumed["id"] == first_id  # `wandb sync` appends it to the first part of the run
    steps = [row["trainer/global_step"] for row in resumed["history"] if "val/loss" in row]
    assert steps == [14, 19]  # only the steps after the checkpoint (Lightning's steps count from 0)


def test_a_job_that_fails_finishes_its_wandb_run_as_failed(tmp_path):
    import wandb

    from gpt.core.loggers import wandb_run_finished

    with pytest.raises(RuntimeError, match="diverged"), wandb_run_finished():
        wandb.init(mode="offline", dir=tmp_path, project="test")
        raise RuntimeError("diverged")
    assert wandb.run is None  # the next job of a multirun starts a run of its own
    (run_dir,) = wandb_run_dirs(tmp_path)
    # W&B's own service process writes the run file; on a loaded machine its exit record can land a moment
    # after finish() returns.
    deadline = time.monotonic() + 30
    while read_wandb_run(run_dir)["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert read_wandb_run(run_dir)["exit_code"] == 1


def test_each_job_of_a_multirun_gets_its_own_wandb_run_and_the_sweep_a_summary(tmp_path, corpus_path):
    sweep = [f"hydra.sweep.dir={tmp_path}", "logger=wandb", "optim.lr=1e-3,4e-3"]
    train(None, corpus_path, "-m", *RUN, *sweep)
    runs = {}
    for job in ("0", "1"):
        (run_dir,) = wandb_run_dirs(tmp_path / job)
        runs[job] = read_wandb_run(run_dir)
        assert runs[job]["exit_code"] == 0
    assert runs["0"]["id"] != runs["1"]["id"]
    assert [runs[job]["config"]["optim"]["lr"] for job in ("0", "1")] == [1e-3, 4e-3]

    losses = {job: read_yaml(tmp_path / job / "result.yaml")["best_val_loss"] for job in ("0", "1")}
    summary = (tmp_path / "summary.md").read_text().splitlines()
    assert "`logger=wandb`" in summary[2] and "optim.lr" not in summary[2]  # common to all jobs
    rows = [line.split(" | ") for line in summary[6:]]
    assert [row[1] for row in rows] == sorted(losses, key=losses.get)  # best first
    assert [float(row[3].rstrip(" |")) for row in rows] == [round(v, 4) for v in sorted(losses.values())]
    assert {row[1]: row[2] for row in rows} == {"0": "`optim.lr=0.001`", "1": "`optim.lr=0.004`"}


def test_both_sweeps_search_config_keys_and_the_wandb_agent_command_is_hydra_overrides():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    def compose_train(overrides):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)

    optuna_params = set(compose_train(["hparams_search=modern"]).hydra.sweeper.params)
    wandb_sweep = read_yaml(ROOT / "sweep.yaml")
    assert set(wandb_sweep["parameters"]) == optuna_params  # the same ranges: tests/test_sweeps.py
    assert wandb_sweep["metric"] == {"name": "val/best_loss", "goal": "minimize"}  # what WandbRun writes

    # The arguments `wandb agent` puts after `train.py`, for one choice of values, as W&B builds them.
    values = {
        "optim.muon_lr": 0.03,
        "optim.lr": 5e-3,
        "optim.weight_decay": 0.05,
        "optim.decay_fraction": 0.3,
        "data.batch_size": 64,
        "model.dropout": 0.1,
        "model.n_embd": 192,
        "model.n_layer": 3,
    }
    agent_args = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    command = wandb_sweep["command"]
    assert command[:3] == ["${env}", "${interpreter}", "${program}"] and command[-1] == "${args_no_hyphens}"
    cfg = compose_train(command[3:-1] + agent_args["args_no_hyphens"])
    assert {key: OmegaConf.select(cfg, key) for key in values} == values
    assert cfg.logger.wandb.mode == "online"


def test_online_wandb_without_a_login_stops_at_once_with_one_line(tmp_path, corpus_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings (run_script drops WANDB_*)
    result = run_script("train.py", *RUN, f"data.path={corpus_path}", f"hydra.run.dir={tmp_path / 'run'}",
                        "logger=wandb", "logger.wandb.mode=online")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: logger.wandb.mode=online needs a W&B login")
    assert not (tmp_path / "run" / "wandb").exists()
