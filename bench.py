"""Benchmarks: training throughput (Lightning vs a plain PyTorch loop), MFU, a race to a val loss, sampling speed.

    python bench.py                           # every model that suits this device, sampling, then the race
    python bench.py --race small modern_small --target 1.47   # on a GPU: the lecture's recipe against the modern one
    python bench.py --quick                   # a few steps of every part: CI runs it so the script cannot rot

Prints a table per part and writes everything to bench.json (``--json``). Trailing key=value arguments are
train.py overrides for every run of the race.

- **throughput**: the model and optimizer of a config, fed the same on-device batches of random tokens, trained
  ``--steps`` steps after ``--warmup`` (compilation, allocator warm-up) through ``GPTModule`` + Lightning's
  ``Trainer`` (CSV logging every ``log_every_n_steps`` as in train.py; no progress bar) and through a plain
  loop (forward, backward, clip, optimizer, schedule). The ratio of their step times is Lightning's overhead.
- **MFU** (GPU): model FLOPs per token (6 x parameters + 12 x layers x context x width, the PaLM/nanoGPT
  estimate, counting the attention scores) x tokens/s over the device's dense bf16 peak.
- **sampling**: ``--sample-chars`` (500) characters from a newline with and without the KV cache, from the same
  weights; the outputs must match up to ``block_size``.
- **race**: whole ``train.py`` processes, as a user starts them, one after the other on the same machine (on a
  CPU: nanoGPT's CPU recipe, rung 1 of the modern ladder; the default run; the speed-run preset). The target is
  the first run's final val loss (or ``--target``); each run's whole-process wall time at its first validation
  at or below it, and its ratio to the first run's whole-process wall time. Machines differ by up to 3x in
  speed: the ratios are the figures to quote.

``scripts/gpu_report.py`` (``scripts/gpu_report.sh``) builds a GPU machine's report from these functions.
"""

import gpt  # noqa: F401, I001  (first: it sets the OpenMP spin before torch loads)

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from lightning.pytorch.loggers import CSVLogger

from gpt.pretrain.callbacks import peak_memory_mb
from gpt.pretrain.data import RandomBatches
from gpt.pretrain.lightning_module import GPTModule
from gpt.core.model import build_model
from gpt.pretrain.plots import read_metrics
from gpt.pretrain.tracking import RESULT_FILE
from gpt.core.config import compose_config
from gpt.core.report import markdown_table
from gpt.core.trainer import allow_clipping_with_fused_optimizers
from gpt.pretrain.training import resolve_speed_settings

ROOT = Path(__file__).resolve().parent
VOCAB = [chr(i) for i in range(32, 97)]  # 65 symbols, the size of Tiny Shakespeare's vocabulary

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; the first key found in the device's name
# wins. None: a name that would otherwise match a wrong entry (a MIG slice has a fraction of its GPU's peak; the
# NVL boards have their own), whose MFU is then reported unknown rather than guessed.
PEAK_BF16_FLOPS = {
    "MIG": None,
    "H100 NVL": None,
    "H200 NVL": None,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
}


# The race of whole train.py runs (the reference first) and the models sampled, by device type.
RACE = {"cpu": ["modern/1_nanogpt_cpu", "modern_tiny", "speedrun"], "cuda": ["small", "modern_small"]}
# small and modern_small on a CPU too: at context 256 the cache has something to save, and past 256 characters
# only RoPE's rolling cache keeps it (a learned-position model recomputes the window).
SAMPLING = {"cpu": ["modern_small", "small", "modern_tiny", "tiny"], "cuda": ["modern_small", "small"]}


def load_config(overrides: list[str]):
    cfg = compose_config("train", overrides)
    resolve_speed_settings(cfg)
    return cfg


def flops_per_token(model_cfg, n_params: int) -> float:
    if model_cfg.arch != "gpt":
        return 2.0 * n_params  # a table lookup is not a matmul; this only keeps the column defined
    return 6.0 * n_params + 12.0 * model_cfg.n_layer * model_cfg.block_size * model_cfg.n_embd


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a GPU named like ``torch.cuda.get_device_name``; None if not known."""
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in device_name), None)


def device_peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, peak_bf16_flops(name)


def mfu_pct(flops_per_token: float, tokens_per_s: float, peak_flops: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilisation in percent: achieved FLOP/s over the peak of ``devices`` GPUs (None: no peak known)."""
    if peak_flops is None:
        return None
    return 100 * flops_per_token * tokens_per_s / (peak_flops * devices)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PEAK_MEMORY = "+callbacks.peak_memory._target_=gpt.pretrain.callbacks.PeakMemory"  # the override that adds it


def make_module(cfg, device):
    """GPTModule exactly as train.py builds it, on ``device``, and batches of random tokens sampled there."""
    config = OmegaConf.to_container(cfg, resolve=True)
    module = GPTModule(config["model"], config["optim"], VOCAB, compile=cfg.compile).to(device)
    data = torch.randint(len(VOCAB), (1_000_000,), device=device)
    batches = RandomBatches(data, cfg.model.block_size, cfg.data.batch_size, seed=cfg.seed)
    return module, batches


def plain_loop_ms_per_step(cfg, device, steps: int, warmup: int) -> float:
    """The same model, optimizer, schedule, clipping and batches as the Lightning run, in a bare loop."""
    torch.manual_seed(cfg.seed)
    module, batches = make_module(cfg, device)
    optim = module.configure_optimizers()
    optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=cfg.trainer.precision == "bf16-mixed")
    module.train()
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            synchronize(device)
            started = time.perf_counter()
        if i == warmup + steps:
            break
        with autocast:
            _, loss = module.train_forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return (time.perf_counter() - started) * 1000 / steps


class StepTimer(L.Callback):
    """Wall time of the training batches after the warm-up ones."""

    def __init__(self, warmup: int):
        self.warmup, self.started, self.seconds = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            synchronize(pl_module.device)
            self.started = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        synchronize(pl_module.device)
        self.seconds = time.perf_counter() - self.started


def lightning_ms_per_step(cfg, device, steps: int, warmup: int, log_dir: str) -> float:
    torch.manual_seed(cfg.seed)
    module, batches = make_module(cfg, device)
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=cfg.trainer.precision,
        max_steps=warmup + steps,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        logger=CSVLogger(log_dir),
        callbacks=[timer],
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    allow_clipping_with_fused_optimizers(trainer)  # as train.py's trainer: bf16 + fused AdamW + clipping
    trainer.fit(module, train_dataloaders=batches)
    return timer.seconds * 1000 / steps


def bench_throughput(name: str, device, steps: int, warmup: int, overrides=(), plain: bool = True) -> dict:
    """Tokens/s, ms/step, peak memory and MFU of config ``model=name`` (plus ``overrides``) trained on random tokens;
    with ``plain``, also the plain loop's ms/step and Lightning's overhead (None without)."""
    accelerator = f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}"
    cfg = load_config([f"model={name}", accelerator, *overrides])
    n_params = build_model(vocab_size=len(VOCAB), **cfg.model).num_parameters()
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as log_dir:
        lightning_ms = lightning_ms_per_step(cfg, device, steps, warmup, log_dir)
    peak_mb = peak_memory_mb(device)
    plain_ms = plain_loop_ms_per_step(cfg, device, steps, warmup) if plain else None
    device_name, peak = device_peak_flops(device)
    tokens_per_s = tokens_per_step / (lightning_ms / 1000)
    return {
        "model": name,
        "parameters": n_params,
        "tokens_per_step": tokens_per_step,
        "precision": cfg.trainer.precision,
        "compile": bool(cfg.compile),
        "lightning_ms_per_step": lightning_ms,
        "plain_ms_per_step": plain_ms,
        "lightning_overhead_pct": None if plain_ms is None else 100 * (lightning_ms / plain_ms - 1),
        "tokens_per_s": tokens_per_s,
        "peak_memory_mb": peak_mb,
        "mfu_pct": mfu_pct(flops_per_token(cfg.model, n_params), tokens_per_s, peak),
        "device": device_name,
        "peak_flops": peak,
    }


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


def bench_sampling(name: str, device, new_tokens: int) -> dict:
    """``new_tokens`` characters from a newline, batch 1, with and without the KV cache, from the same weights
    (``model=name`` at its initialisation: the speed does not depend on what the weights learned). Up to
    ``block_size`` the outputs must be the same; past it a RoPE model's rolling cache differs by design
    (``LanguageModel.generate_stream``), and a learned-position model recomputes the window as without the cache."""
    cfg = load_config([f"model={name}"])
    torch.manual_seed(cfg.seed)
    model = build_model(vocab_size=len(VOCAB), **cfg.model).to(device).eval()
    start = torch.zeros((1, 1), dtype=torch.long, device=device)
    result = {"model": name, "characters": new_tokens}
    outputs = {}
    for use_cache in (False, True):
        generator = torch.Generator(device).manual_seed(0)
        synchronize(device)
        started = time.perf_counter()
        outputs[use_cache] = model.generate(start, new_tokens, generator=generator, use_cache=use_cache)
        synchronize(device)
        result[f"chars_per_s_{'cached' if use_cache else 'uncached'}"] = new_tokens / (time.perf_counter() - started)
    result["speedup"] = result["chars_per_s_cached"] / result["chars_per_s_uncached"]
    n = model.block_size
    result["identical_to_block_size"] = torch.equal(outputs[False][:, :n], outputs[True][:, :n])
    return result


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    def show(value):
        if isinstance(value, bool) or value is None:
            return str(value)
        return f"{value:,.3g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value

    print(f"\n## {title}\n")
    print(markdown_table(columns, [[show(row[c]) for c in columns] for row in rows]), end="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every run of the race")
    parser.add_argument("--models", nargs="+", help="model configs to time (default: those that suit the device)")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, caches)")
    parser.add_argument(
        "--race",
        nargs="+",
        help="model configs to train whole, the reference first (default: "
        f"{' '.join(RACE['cpu'])} on a CPU, {' '.join(RACE['cuda'])} on a GPU)",
    )
    parser.add_argument("--target", type=float, help="val loss to time (default: the reference's final val loss)")
    parser.add_argument("--sample-chars", type=int, default=500, help="characters to sample, with and without cache")
    parser.add_argument("--skip-train", action="store_true", help="skip the race of whole train.py runs")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (a smoke test)")
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    default_models = ["tiny", "small", "modern_small", "medium", "large"] if device.type == "cuda" else \
        ["bigram", "tiny", "modern_tiny"]  # fmt: skip
    models = args.models or (["tiny"] if args.quick else default_models)
    steps, warmup = (3, 1) if args.quick else (args.steps, args.warmup)
    race, overrides, sample_chars = args.race or RACE[device.type], args.overrides, args.sample_chars
    if args.quick:  # a few steps of a smaller model: the point is that every part still runs
        overrides = [*overrides, "model.n_layer=1", "trainer.max_steps=4", "trainer.val_check_interval=2",
                     "optim.warmup_steps=0"]  # fmt: skip
        race, sample_chars = args.race or ["tiny", "modern_tiny"], 16
    results = {"device": device_peak_flops(device)[0], "torch": torch.__version__, "threads": torch.get_num_threads()}

    results["throughput"] = [bench_throughput(name, device, steps, warmup) for name in models]
    print_table(
        f"Training throughput on {results['device']} ({steps} steps after {warmup} warm-up)",
        results["throughput"],
        ["model", "parameters", "precision", "compile", "tokens_per_s", "lightning_ms_per_step",
         "plain_ms_per_step", "lightning_overhead_pct", "peak_memory_mb", "mfu_pct"],
    )  # fmt: skip
    sampling_models = args.models or (["modern_tiny"] if args.quick else SAMPLING[device.type])
    results["sampling"] = [bench_sampling(name, device, sample_chars) for name in sampling_models]
    print_table(
        f"Sampling {sample_chars} characters from a newline, batch 1",
        results["sampling"],
        ["model", "chars_per_s_uncached", "chars_per_s_cached", "speedup", "identical_to_block_size"],
    )
    if not args.skip_train:
        results["race"] = bench_race(race, overrides, args.target)
        print_table(
            f"Whole train.py processes {' '.join(overrides)}, one after the other: time to val "
            f"{results['race']['target']:.4f}, ratios to {race[0]}'s whole-process wall time",
            results["race"]["runs"],
            ["model", "wall_s", "wall_ratio", "best_val_loss", "final_val_loss", "step_at_target",
             "wall_s_at_target", "ratio_at_target", "peak_memory_mb"],
        )  # fmt: skip
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
