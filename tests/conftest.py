import gpt  # noqa: F401, I001  (first: it sets the OpenMP spin before torch loads)

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# A model and schedule small enough that a whole train.py run takes seconds on two CPU cores.
TINY_RUN = [
    "trainer.accelerator=cpu",
    "model.block_size=16",
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "data.batch_size=8",
    "data.eval_chunks=16",
    "optim.warmup_steps=2",
    "callbacks.text_sample.max_new_tokens=20",
    "trainer.log_every_n_steps=1",
]


def make_corpus(n_lines=2000, seed=0) -> str:
    """A small text with Shakespeare's shape (speaker, then a line), regular enough to learn quickly."""
    rng = random.Random(seed)
    speakers = ["ROMEO", "JULIET", "HAMLET", "KING LEAR"]
    words = "to be or not that is the question my lord good night sweet prince what light".split()
    lines = []
    for _ in range(n_lines):
        lines.append(f"{rng.choice(speakers)}:\n{' '.join(rng.choices(words, k=rng.randint(3, 8)))}.\n\n")
    return "".join(lines)


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_script(script: str, *args: str, cwd=ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run train.py or sample.py as a user would: a fresh process, no stdin, no W&B credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train(run_dir, corpus_path, *overrides: str, cwd=ROOT, timeout: int = 300) -> str:
    """``python train.py <overrides>`` on the text file ``corpus_path``, into the run folder ``run_dir`` (None: the
    folder Hydra picks, e.g. a multirun's jobs under its hydra.sweep.dir), in a fresh process as ``run_script``
    starts it. The test fails here, showing the end of the output, unless it exits 0. Returns the console:
    stdout, then stderr."""
    where = [] if run_dir is None else [f"hydra.run.dir={run_dir}"]
    result = run_script("train.py", *overrides, f"data.path={corpus_path}", *where, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def metrics_rows(run_dir) -> list[dict]:
    """The rows of a run's metrics.csv as written: {column: text}, "" in the columns a row does not log."""
    return list(csv.DictReader((Path(run_dir) / "metrics.csv").read_text().splitlines()))


def csv_metric(run_dir, name: str) -> list[float]:
    """Every value of the metric ``name`` in a run's metrics.csv, in file order."""
    return [float(row[name]) for row in metrics_rows(run_dir) if row[name]]


def val_curve(run_dir) -> list[tuple[int, float]]:
    """(step, val/loss) of each row of a run's metrics.csv that has one, in file order (a second writer would
    repeat steps); steps count optimizer steps from 1, as trainer.max_steps does (the CSV counts from 0)."""
    return [(int(row["step"]) + 1, float(row["val/loss"])) for row in metrics_rows(run_dir) if row["val/loss"]]


def val_losses(run_dir) -> dict[int, float]:
    """{step: val/loss} of a run, steps counted from 1 (``val_curve``)."""
    return dict(val_curve(run_dir))
