"""Benchmarks: training throughput (Lightning vs a plain PyTorch loop), MFU, a race to a val loss, sampling speed.

    python bench.py                           # every model that suits this device, sampling, then the race
    python bench.py --race small modern_small --target 1.47   # on a GPU: the lecture's recipe against the modern one
    python bench.py --quick                   # a few steps of every part: CI runs it so the script cannot rot
    python bench.py --skip-train --batch-size 32   # every model's throughput at one batch size, to compare them
    python bench.py --skip-train --batch-size 32 --compile   # ... and again under torch.compile

Prints a table per part and writes everything to bench.json (``--json``). Trailing key=value arguments are
train.py overrides for every run of the race.

- **throughput**: the model and optimizer of a config, fed the same on-device batches of random tokens, trained
  ``--steps`` steps after ``--warmup`` (compilation, allocator warm-up) through ``GPTModule`` + Lightning's
  ``Trainer`` (CSV logging every ``log_every_n_steps`` as in train.py; no progress bar) and through a plain
  loop (forward, backward, clip, optimizer, schedule). The ratio of their step times is Lightning's overhead.
  Each model trains at its own config's batch size, or all at ``--batch-size``: tokens/s compare at equal batches,
  and the modern recipe's tokens/s is given as a fraction of the lecture's (``modern_tiny`` over ``tiny``).
  ``--compile``: each model again with ``compile=true`` (on a CPU too), the first steps' compilation untimed.
- **MFU** (GPU): model FLOPs per token (6 x parameters + 12 x layers x context x width, the PaLM/nanoGPT
  estimate, counting the attention scores) x tokens/s over the device's dense bf16 peak.
- **sampling**: ``--sample-chars`` (500) characters from a newline with and without the KV cache, from the same
  weights; the outputs must match up to ``block_size``. Then 8 samples as one batch (``sample.py num_samples=8``):
  their time over one sample's.
- **race**: whole ``train.py`` processes, as a user starts them, one after the other on the same machine (on a
  CPU: nanoGPT's CPU recipe, rung 1 of the modern ladder; the default run; the speed-run preset). The target is
  the first run's final val loss (or ``--target``); each run's whole-process wall time at its first validation
  at or below it, and its ratio to the first run's whole-process wall time. Machines differ by up to 3x in
  speed: the ratios are the figures to quote.

Each part is a module of ``gpt.bench``: ``throughput`` (with MFU), ``sampling``, ``race``; ``gpu_report``
(``scripts/gpu_report.sh``) builds a GPU machine's report from them.
"""

import argparse
import json
from pathlib import Path

import torch

from gpt.bench.race import RACE, bench_race
from gpt.bench.sampling import BATCH, SAMPLING, bench_sampling
from gpt.bench.throughput import bench_throughput, device_peak_flops
from gpt.core.report import markdown_table


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    def show(value):
        if isinstance(value, bool) or value is None:
            return str(value)
        return f"{value:,.3g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value

    print(f"\n## {title}\n")
    print(markdown_table(columns, [[show(row[c]) for c in columns] for row in rows]), end="")


def recipe_ratios(rows: list[dict]) -> list[dict]:
    """modern_tiny's tokens/s over tiny's, for each (batch, compile) setting both were timed at."""
    rates = {(r["model"], r["tokens_per_step"], r["compile"]): r["tokens_per_s"] for r in rows}
    return [
        {"tokens_per_step": tokens, "compile": compiled, "ratio": rate / rates[("tiny", tokens, compiled)]}
        for (model, tokens, compiled), rate in rates.items()
        if model == "modern_tiny" and ("tiny", tokens, compiled) in rates
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every run of the race")
    parser.add_argument("--models", nargs="+", help="model configs to time (default: those that suit the device)")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, caches)")
    parser.add_argument("--batch-size", type=int, help="the throughput part's batch for every model (default: each's)")
    parser.add_argument("--compile", action="store_true", help="time every model's throughput compiled as well")
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

    batch = [f"data.batch_size={args.batch_size}"] if args.batch_size else []
    settings = [batch, [*batch, "compile=true"]] if args.compile else [batch]
    results["throughput"] = [bench_throughput(name, device, steps, warmup, s) for s in settings for name in models]
    print_table(
        f"Training throughput on {results['device']} ({steps} steps after {warmup} warm-up)",
        results["throughput"],
        ["model", "parameters", "tokens_per_step", "precision", "compile", "tokens_per_s", "lightning_ms_per_step",
         "plain_ms_per_step", "lightning_overhead_pct", "peak_memory_mb", "mfu_pct"],
    )  # fmt: skip
    results["modern_over_lecture"] = recipe_ratios(results["throughput"])
    for ratio in results["modern_over_lecture"]:
        print(f"\nmodern_tiny trains at {ratio['ratio']:.2f}x tiny's tokens/s at {ratio['tokens_per_step']} tokens a "
              f"step, compile {ratio['compile']}")  # fmt: skip
    sampling_models = args.models or (["modern_tiny"] if args.quick else SAMPLING[device.type])
    results["sampling"] = [bench_sampling(name, device, sample_chars) for name in sampling_models]
    print_table(
        f"Sampling {sample_chars} characters from a newline, batch 1",
        results["sampling"],
        ["model", "chars_per_s_uncached", "chars_per_s_cached", "speedup", "identical_to_block_size", f"time_x{BATCH}"],
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
