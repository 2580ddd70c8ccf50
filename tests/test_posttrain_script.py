"""scripts/posttrain_seeds.sh, the two-seed post-training table: its chain of stages and its summary, run against a
stand-in `python` that records each entry point's arguments and writes what the script reads (no training)."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT

STAND_IN = f"""#!/usr/bin/env bash
case "$1" in
  train.py|finetune.py|evaluate.py)
    echo "${{OMP_NUM_THREADS:-all}} $*" >> "$CALLS"
    for arg in "$@"; do case $arg in hydra.run.dir=*) dir=${{arg#hydra.run.dir=}};; esac; done
    mkdir -p "$dir"
    case "$*" in
      train.py*) echo "best val loss 1.6329";;
      evaluate.py*seed=1337*) printf '| q | SFT |\\n| --- | --- |\\n| rater score | 0.200 |\\n' > "$dir/eval.md";;
      evaluate.py*) printf '| q | SFT |\\n| --- | --- |\\n| rater score | 0.300 |\\n' > "$dir/eval.md";;
    esac
    [[ "$*" == *" stage=$FAIL "* ]] && exit 3
    exit 0;;
  *) exec {sys.executable} "$@";;
esac
"""


def run_script(tmp_path, *seeds, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(STAND_IN)
    (bin_dir / "python").chmod(0o755)
    calls = tmp_path / "calls.log"
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "FAIL": "none"}
    environment.pop("OMP_NUM_THREADS", None)
    environment.update(env)
    result = subprocess.run(
        ["bash", "scripts/posttrain_seeds.sh", str(tmp_path / "out"), *seeds],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    return result, lines


def test_rounds_chain_and_every_method_starts_from_the_last_round(tmp_path):
    result, calls = run_script(
        tmp_path, "1337", "1338", HINTED_ROUNDS="2:900 2:300 4:600", PRETRAIN_ARGS="model.n_layer=6"
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    # pre-training first, on every core, with PRETRAIN_ARGS
    assert calls[0].split() == ["all", "train.py", f"hydra.run.dir={out}/pretrain", "model.n_layer=6"]
    seed = [c for c in calls if "seed=1337" in c]
    hinted = [c for c in seed if "stage.hinted_samples=" in c]
    assert [c.split("stage.hinted_samples=")[1].split()[0] for c in hinted] == ["2", "2", "4"]
    assert [c.split("trainer.max_steps=")[1].split()[0] for c in hinted] == ["900", "300", "600"]
    assert f"init_from={out}/seed1337/sft_plain/checkpoints/sft.ckpt" in hinted[0]
    assert f"init_from={out}/seed1337/sft_round1/checkpoints/sft.ckpt" in hinted[1]
    assert f"init_from={out}/seed1337/sft_round2/checkpoints/sft.ckpt" in hinted[2]
    assert f"hydra.run.dir={out}/seed1337/sft " in hinted[2] + " "
    methods = [c for c in seed if any(f"stage={m}" in c for m in ("reward", "ppo", "dpo", "grpo"))]
    assert len(methods) == 4
    assert all(f"init_from={out}/seed1337/sft/checkpoints/sft.ckpt" in c for c in methods)
    # the seeds side by side, each with half of the cores (at least one thread)
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert {c.split()[0] for c in calls[1:]} == {str(threads)}
    # evaluate.py's tables of the two seeds as one: the mean, and half the spread
    assert "| rater score | 0.250 ± 0.050 |" in result.stdout


def test_a_failed_stage_fails_the_script_and_says_where(tmp_path):
    result, calls = run_script(tmp_path, "1337", FAIL="dpo")
    assert result.returncode == 1
    assert "dpo_1337 failed" in result.stderr
    assert not any("stage=grpo" in c for c in calls)
    assert "best val loss" not in result.stdout  # it stops there: no summary from a half-made run


@pytest.mark.parametrize("rounds", ["3", "2:900 two", "2:0", "2:900,2:300"])
def test_hinted_rounds_must_be_rounds_of_samples_and_steps(tmp_path, rounds):
    result, calls = run_script(tmp_path, HINTED_ROUNDS=rounds)
    assert result.returncode == 2
    assert result.stderr.startswith("HINTED_ROUNDS must be rounds of N:STEPS")
    assert len(result.stderr.strip().splitlines()) == 1
    assert calls == []
