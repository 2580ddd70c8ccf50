"""The race: whole ``train.py`` processes, as a user starts them, one after the other on the same machine, timed
to a target val loss; and what a finished run measured, read from its folder."""

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from gpt.core.config import ROOT
from gpt.pretrain.plots import read_metrics
from gpt.pretrain.tracking import RESULT_FILE

# The models raced (the reference first), by device type: on a CPU nanoGPT's CPU recipe (rung 1 of the modern
# ladder), the default run and the speed-run preset; on a GPU the lecture's recipe and the modern one.
RACE = {"cpu": ["modern/1_nanogpt_cpu", "modern_tiny", "speedrun"], "cuda": ["small", "modern_small"]}
PEAK_MEMORY = "+callbacks.peak_memory._target_=gpt.pretrain.callbacks.PeakMemory"  # the override that adds it


def run_train(overrides: list[str], run_dir) -> tuple[subprocess.CompletedProcess, float]:
    """``train.py hydra.run.dir=<run_dir> <overrides>`` in a fresh process, as a user starts it; and its wall time."""
    command = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", *overrides]
    started = time.perf_counter()
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    return result, time.perf_counter() - started


def first_reached(val_curve, target: float):
    """(step, seconds after training started) of the first validation at or below ``target``; None if none."""
    return next(((step, seconds) for step, loss, seconds in val_curve if loss <= target), None)


def read_run(run_dir, target: float | None = None) -> dict:
    """What a finished train.py run measured, from its folder: the val curve (step, loss, seconds after training
    started), the best val loss, when the val loss first reached ``target`` (if given), the steps trained, the
    median of the logged ``train/tokens_per_sec`` windows (all devices, validation excluded; the median leaves
    out the first window's compilation), and, if the run had ``PeakMemory``, the largest peak of its ranks."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir / "metrics.csv")
    (steps, losses), (_, seconds) = metrics["val/loss"], metrics["time/elapsed_s"]  # logged together
    val = list(zip(steps, losses, seconds, strict=True))
    reached = None if target is None else first_reached(val, target)
    speeds = metrics.get("train/tokens_per_sec", ([], []))[1]
    peaks = [json.loads(p.read_text())["peak_memory_mb"] for p in sorted(run_dir.glob("peak_memory_rank*.json"))]
    result_file = run_dir / RESULT_FILE
    result = OmegaConf.to_container(OmegaConf.load(result_file)) if result_file.exists() else {}
    return {
        "best_val_loss": min(loss for _, loss, _ in val),
        "target": target,
        "step_at_target": reached and reached[0],
        "train_s_at_target": reached and reached[1],  # seconds after training started (start-up excluded)
        "val_curve": val,
        "steps": result.get("steps", max(steps)),
        "params": result.get("params"),
        "tokens_per_s": statistics.median(speeds) if speeds else None,
        "peak_memory_mb": max(peaks) if peaks else None,
    }


def bench_train_run(overrides: list[str]) -> dict:
    """One whole train.py run in a fresh process, as a user starts it: its wall time, peak memory and val curve."""
    with tempfile.TemporaryDirectory() as run_dir:
        result, wall_s = run_train([*overrides, PEAK_MEMORY], run_dir)
        if result.returncode:
            raise SystemExit(f"train.py {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
        run = read_run(run_dir)  # the race's target is known once its first run has finished
    return {
        "overrides": overrides,
        "wall_s": wall_s,
        "peak_memory_mb": run["peak_memory_mb"],
        "best_val_loss": run["best_val_loss"],
        "final_val_loss": run["val_curve"][-1][1],
        "val_curve": run["val_curve"],
    }


def time_at_target(run: dict, target: float) -> dict:
    """When a whole train.py run first validated at or below ``target``: the step, and the whole-process wall time
    then: its wall time less the training time after that validation. An upper bound, by the teardown after the
    last validation (final checkpoint and plot, about a second), which it counts too."""
    hit, last_s = first_reached(run["val_curve"], target), run["val_curve"][-1][2]
    return {"step_at_target": hit and hit[0], "wall_s_at_target": hit and run["wall_s"] - (last_s - hit[1])}


def bench_race(models: list[str], overrides: list[str], target: float | None) -> dict:
    """Whole train.py runs of ``models``, one after the other on the same machine, each validating on the same
    cadence (its trainer.val_check_interval, 250 steps unless overridden) and the same eval chunks. The first is
    the reference: its final val loss is the target unless ``target`` is given, and every run's times are also
    given as a ratio of the reference's whole-process wall time."""
    runs = [{"model": name, **bench_train_run([f"model={name}", *overrides])} for name in models]
    target = runs[0]["final_val_loss"] if target is None else target
    for run in runs:
        run.update(time_at_target(run, target))
        run["wall_ratio"] = run["wall_s"] / runs[0]["wall_s"]
        run["ratio_at_target"] = run["wall_s_at_target"] and run["wall_s_at_target"] / runs[0]["wall_s"]
    return {"reference": models[0], "target": target, "runs": runs}
