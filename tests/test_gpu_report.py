"""The GPU report (gpt/bench/gpu_report.py, run by scripts/gpu_report.sh): its planning by hand, its report's GPU
sections from given figures, and the whole pipeline end to end in its CPU smoke mode (the MFU it reports:
tests/test_bench.py)."""

import os
import re
import subprocess
import sys

import pytest
import torch

from gpt.bench import gpu_report, throughput
from gpt.bench.common import load_config

from .conftest import ROOT


def test_the_recipe_runs_whole_when_it_fits_and_is_cut_to_whole_validations_when_not():
    whole = {"steps": 5000, "val_every": 250, "cut": None}
    assert gpu_report.plan_steps(5000, 250, ms_per_step=20, seconds=600) == whole
    # 60 s start-up + 5000 x 20 ms x 1.25 = 185 s > 150 s left: (150 - 60) / 25 ms = 3600 steps, down to 3500
    plan = gpu_report.plan_steps(5000, 250, ms_per_step=20, seconds=150)
    assert plan["steps"] == 3500 and plan["val_every"] == 250
    assert plan["cut"].startswith("trainer.max_steps 5,000 → 3,500 (to fit the budget: the probe measured 20.0 ms")
    plan = gpu_report.plan_steps(5000, 250, requested=100)  # fewer than one validation interval: one at the end
    assert plan["steps"] == plan["val_every"] == 100
    assert plan["cut"] == "trainer.max_steps 5,000 → 100, trainer.val_check_interval 250 → 100 (--max-steps 100)"
    assert gpu_report.plan_steps(5000, 250, requested=9000)["cut"] is None  # a budget, not an extension
    assert gpu_report.plan_steps(5000, 250)["cut"] is None  # no probe, no budget: the recipe
    assert gpu_report.duration(500) == "00:00:08:20"


def test_ddp_runs_on_the_most_gpus_over_which_the_eval_chunks_split_evenly():
    """The DDP run evaluates step 2's chunks (256 for model=small); it rounded data.eval_chunks up to a multiple of
    the GPUs instead, another eval set (258 on 3 GPUs)."""
    assert [gpu_report.ddp_devices(n, 256) for n in (1, 2, 3, 4, 5, 6, 7, 8)] == [1, 2, 2, 4, 4, 4, 4, 8]
    assert gpu_report.ddp_devices(4, 255) == 3 and gpu_report.ddp_devices(2, 255) == 1  # 1: skipped, and said


def test_the_throughput_probe_runs_and_frees_its_memory_in_a_process_of_its_own():
    """On a GPU, the probe's model, optimizer and cached blocks stayed allocated in the report's process while the
    training runs after it ran on the same GPU: now they go with a process that has exited."""
    result = gpu_report.probe(torch.device("cpu"), gpu_report.SMOKE_OVERRIDES, smoke=True)
    assert result["tokens_per_s"] > 0 and result["pid"] != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(result["pid"], 0)  # gone


def test_the_gpu_sections_of_the_report_from_given_figures(tmp_path):
    """What the report writes on a 2-GPU machine, from made-up inputs (no GPU here): MFU over the known peak, the
    scaling efficiency against one GPU, and a run that the time guard stopped."""
    cfg = load_config(["model=small"])
    run = {"ok": True, "command": "python train.py model=small", "wall_s": 200.0, "folder": "outputs/x",
           "steps": 2000, "tokens_per_s": 1e6, "params": 10_000_000, "train_s_at_target": None,
           "step_at_target": None, "best_val_loss": 1.5, "peak_memory_mb": 3000.0}  # fmt: skip
    ddp = {**run, "steps": 200, "tokens_per_s": 1.8e6}
    text = gpu_report.write_report(tmp_path / "r.md", {
        "argv": [], "date": "today", "budget": "10 min", "smoke": False, "cfg": cfg, "target": 1.47,
        "device_name": "NVIDIA H200", "peak": 989e12, "n_gpus": 2, "gpu_name": "NVIDIA H200", "visible": 2,
        "data": "input.txt",
        "cuts": [], "tests": {"command": "pytest", "outcome": "passed", "summary": "3 passed", "wall_s": 9, "log": "t"},
        "probe": {"error": "RuntimeError: x", "steps": 50, "warmup": 10}, "main": run, "recipe": 5000,
        "planned": 5000, "ddp": {"devices": 2, "batch": 128, "planned": 200, "run": ddp}, "total_s": 500,
    })  # fmt: skip
    fpt = throughput.flops_per_token(cfg.model, 10_000_000)
    assert f"| MFU | {100 * fpt * 1e6 / 989e12:.1f}% of 1 x 989 TFLOP/s" in text
    assert f"| MFU | {100 * fpt * 1.8e6 / (2 * 989e12):.1f}% of 2 x 989 TFLOP/s" in text
    assert "| scaling efficiency | 90% (1,800,000 / (2 x 1,000,000) tokens/s of step 2) |" in text
    assert "| steps run | 2,000 of the recipe's 5,000, **stopped by the time guard** (5,000 planned) |" in text
    assert "Throughput probe (bench.py, 50 steps): **failed**" in text
    assert "| GPUs | NVIDIA H200 x 2 |" in text and "Skipped" not in text
    assert (tmp_path / "r.md").read_text() == text


def gpu_report_sh(cwd, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return subprocess.run(
        ["bash", ROOT / "scripts" / "gpu_report.sh", "--cpu-smoke", "--out", "report.md", *args],
        cwd=cwd, env={**env, "PYTHON": sys.executable}, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_cpu_smoke_report_has_every_section_and_figure_and_says_what_was_cut(corpus_path, tmp_path):
    result = gpu_report_sh(tmp_path, f"data.path={corpus_path}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    sections = [
        "# GPU report",
        "**CPU smoke run**",
        "## Machine",
        "## What was cut",
        "## 1. GPU tests",
        "## 2. `model=small`, default settings (5,000-step recipe)",
        "## 3. DDP on every visible GPU",
    ]
    for section in sections:
        assert section in report
    assert "| GPUs | not used (--cpu-smoke); " in report and "| torch | " in report and "| CUDA | " in report
    assert "`python -m pytest -q -m gpu tests`: **" in report
    assert "- trainer.max_steps 5,000 → 4 (--cpu-smoke: a handful of steps)" in report  # the cut, stated
    assert "- DDP step skipped: the CPU smoke run uses no GPU; DDP needs at least 2" in report
    assert "**Skipped**: the CPU smoke run uses no GPU" in report
    assert re.search(r"Throughput probe \(bench\.py's .*: [\d,]+ tokens/s, [\d.]+ ms/step, MFU n/a on CPU", report)
    for row in [r"\| command \| `python train\.py hydra\.run\.dir=outputs/gpu_report/[\d_-]+/small model=small .*`",
                r"\| steps run \| 4 of the recipe's 5,000 \(cut: see above\) \|", r"\| tokens/s \| [\d,]+ \(",
                r"\| MFU \| n/a on CPU \|", r"\| time to val 1\.47 \| not reached \|", r"\| best val \| \d\.\d{4} \|",
                r"\| peak memory \| [\d,]+ MB \(peak RSS of train\.py\) \|", r"\| wall time \| [\d,]+ s"]:  # fmt: skip
        assert re.search(row, report), row
    assert "not measured" not in report and "FAILED" not in report
    (run_dir,) = (tmp_path / "outputs" / "gpu_report").glob("*/small")
    assert (run_dir / "metrics.csv").exists() and (run_dir / "peak_memory_rank0.json").exists()


@pytest.mark.slow
def test_cpu_smoke_report_fails_without_gpu_tests_and_tells_a_time_guard_cut_from_a_failure(corpus_path, tmp_path):
    """No test selected (pytest's exit 5) made a report that exits 0; a time guard that fires before the first
    validation made the run look FAILED (train.py then loaded a best checkpoint of "")."""
    no_gpu_tests = "tests/test_tokenizer.py"
    result = gpu_report_sh(tmp_path, "--tests", no_gpu_tests, "--max-time-s", "0", f"data.path={corpus_path}")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    assert f"`python -m pytest -q -m gpu {no_gpu_tests}`: **FAILED: none selected**" in report
    cut = (
        "- The main run was stopped by its time guard (trainer.max_time) before its first validation: nothing measured"
    )
    assert cut in report
    assert "| outcome | **stopped by the time guard** before its first validation: nothing measured |" in report
    assert "+trainer.max_time=00:00:00:00" in report and "**FAILED**, nothing measured" not in report
    (run_dir,) = (tmp_path / "outputs" / "gpu_report").glob("*/small")
    assert "error: training stopped before its first validation" in (run_dir / "console.txt").read_text()
