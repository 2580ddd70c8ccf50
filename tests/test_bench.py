"""The benchmarks (gpt/bench/, python bench.py): MFU and the GPUs' peaks by hand, the race's time at a target,
and bench.py --quick end to end (the GPU report they build: tests/test_gpu_report.py)."""

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from gpt.bench import throughput
from gpt.bench.benchmarking import recipe_ratios
from gpt.bench.race import time_at_target

from .conftest import ROOT, TINY_RUN, run_script


def test_mfu_is_model_flops_per_second_over_the_peak_by_hand():
    model = OmegaConf.create({"arch": "gpt", "n_layer": 6, "block_size": 256, "n_embd": 384})
    # 6 x 10M parameters + 12 x 6 layers x 256 positions x 384 wide = 60,000,000 + 7,077,888
    assert throughput.flops_per_token(model, 10_000_000) == 67_077_888
    # 67,077,888 FLOP/token x 500,000 tokens/s = 33.538944 TFLOP/s, over an H100's 989 TFLOP/s: 3.3912%
    assert throughput.mfu_pct(67_077_888, 500_000, 989e12) == pytest.approx(3.39119, abs=1e-5)
    assert throughput.mfu_pct(67_077_888, 500_000, 989e12, devices=2) == pytest.approx(3.39119 / 2, abs=1e-5)
    assert throughput.mfu_pct(67_077_888, 500_000, None) is None


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),  # the SXM board
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA GeForce RTX 4090", None),  # not in the table: unknown, never a guess
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None),  # a slice: not the whole GPU's peak
        ("NVIDIA H100 NVL", None),
    ],
)
def test_peak_bf16_flops_of_known_gpus_and_none_for_others(name, peak):
    assert throughput.peak_bf16_flops(name) == peak


def test_time_at_target_is_the_whole_process_wall_time_at_the_first_validation_at_or_below_it():
    run = {"wall_s": 100.0, "val_curve": [(250, 2.0, 10.0), (500, 1.8, 20.0), (750, 1.7, 30.0)]}  # (step, loss, s)
    assert time_at_target(run, 1.8) == {"step_at_target": 500, "wall_s_at_target": 90.0}  # 10 s of training after
    assert time_at_target(run, 1.75) == {"step_at_target": 750, "wall_s_at_target": 100.0}
    assert time_at_target(run, 1.6) == {"step_at_target": None, "wall_s_at_target": None}


def test_the_modern_recipe_is_compared_with_the_lecture_s_at_each_batch_and_compile_setting():
    rows = [
        {"model": "tiny", "tokens_per_step": 2048, "compile": False, "tokens_per_s": 40.0},
        {"model": "modern_tiny", "tokens_per_step": 2048, "compile": False, "tokens_per_s": 30.0},
        {"model": "tiny", "tokens_per_step": 2048, "compile": True, "tokens_per_s": 50.0},
        {"model": "modern_tiny", "tokens_per_step": 2048, "compile": True, "tokens_per_s": 45.0},
        {"model": "modern_tiny", "tokens_per_step": 1024, "compile": False, "tokens_per_s": 20.0},  # no tiny to match
    ]
    assert recipe_ratios(rows) == [
        {"tokens_per_step": 2048, "compile": False, "ratio": 0.75},
        {"tokens_per_step": 2048, "compile": True, "ratio": 0.9},
    ]


def test_benchmark_quick_mode_measures_every_part(corpus_path, tmp_path):
    out = tmp_path / "bench.json"
    args = ["--quick", "--batch-size", "8", "--json", str(out), f"data.path={corpus_path}"]
    result = run_script("bench.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    bench = json.loads(out.read_text())
    (throughput,) = bench["throughput"]
    assert throughput["model"] == "tiny" and throughput["tokens_per_s"] > 0
    assert throughput["tokens_per_step"] == 8 * 64  # --batch-size: 8 chunks of tiny's 64 tokens
    assert throughput["lightning_ms_per_step"] > 0 and throughput["plain_ms_per_step"] > 0
    (sampling,) = bench["sampling"]
    assert sampling["model"] == "modern_tiny" and sampling["characters"] == 16
    assert sampling["identical_to_block_size"] and sampling["chars_per_s_cached"] > 0 and sampling["time_x8"] > 0
    race = bench["race"]
    reference, default = race["runs"]
    assert (reference["model"], default["model"]) == ("tiny", "modern_tiny")
    assert race["target"] == reference["final_val_loss"] == reference["val_curve"][-1][1]
    for run in race["runs"]:
        assert run["wall_s"] > 0 and [step for step, _, _ in run["val_curve"]] == [2, 4]  # validated at steps 2, 4
        assert run["best_val_loss"] == min(loss for _, loss, _ in run["val_curve"]) and run["peak_memory_mb"] > 0
    assert reference["wall_ratio"] == 1 and reference["step_at_target"] in (2, 4)
    # the reference reached its own final loss no later than its last validation, within its whole process
    assert 0 < reference["wall_s_at_target"] <= reference["wall_s"]


def test_the_sweep_benchmark_runs_a_study_and_reports_it(corpus_path, tmp_path):
    """python -m gpt.bench.sweeps study, cut to 2 trials of 4 steps: the table docs/tracking.md quotes."""
    command = [sys.executable, "-m", "gpt.bench.sweeps", "study", "--pruner", "none", "--trials", "2", "--steps", "4",
               "--out", str(tmp_path), f"data.path={corpus_path}", "trainer.accelerator=cpu"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    header, _, row = result.stdout.strip().splitlines()[-3:]
    assert header.startswith("| pruner | trials | wall time (s) | optimizer steps trained | best val loss |")
    assert row.startswith("| none | 2 complete | ") and "| 8 of 8 |" in row


def test_data_benchmark_prepares_a_corpus_and_measures_each_process(corpus_path, tmp_path):
    out = tmp_path / "databench"
    result = subprocess.run(
        [sys.executable, "-m", "gpt.bench.data", "--size-mb", "0.3", "--steps", "2", "--out", str(out),
         "--source", str(corpus_path), *TINY_RUN[1:]],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    bench = json.loads((out / "data_bench.json").read_text())
    assert 0.29 < bench["size_mb"] <= 0.3 and bench["mb_per_s"] > 0
    runs = {(run["corpus"], run["devices"]): run for run in bench["runs"]}
    assert set(runs) == {(corpus, devices) for corpus in ("default corpus", "0.3 MB") for devices in (1, 2)}
    for run in runs.values():
        assert len(run["peak_rss_mb"]) == run["devices"] and 0 < run["start_s"] < run["wall_s"]
        # the split of the resident memory at the end, read after the peak (which the kernel updates lazily)
        assert all(own > 0 and 0 < file < own + file <= 1.1 * peak for own, file, peak in zip(
            run["rss_anon_mb"], run["rss_file_mb"], run["peak_rss_mb"], strict=True))  # fmt: skip
    assert "| 0.3 MB | 2 |" in result.stdout and sorted(p.name for p in out.iterdir()) == ["data_bench.json"]
