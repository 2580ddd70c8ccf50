"""A ladder of models, trained rung by rung with one budget: python -m gpt.pretrain.ladder [--ladder modern] [...]

Two ladders, each a folder of model configs whose middle rungs are the previous rung plus one change:

- ``lecture`` (``conf/model/ladder/``, docs/ladder.md): the lecture's steps from the bigram to its Transformer.
  One budget and schedule for all: 5,000 steps of batch 32, a warmup over the first 2% of the steps, then a
  cosine down to each rung's ``min_lr`` (a tenth of its peak); 2,048 fixed eval chunks per loss estimate.
- ``modern`` (``conf/model/modern/``, docs/modern.md): the lecture's tiny model at nanoGPT's CPU settings, then
  one change of today's recipes per rung. Each rung keeps its own schedule (warmup, cosine or WSD); the budget is
  2,000 steps of batch 12 and the default 256 eval chunks, as ``python train.py`` validates.

Every rung trains through ``gpt.pretrain.training.train``, the job behind ``python train.py model=<folder>/<rung>``,
once per seed (``--seeds``), with the same steps, batch size, validation cadence and eval chunks. Overrides on
the command line apply to every rung.

Writes, into the folder it prints: a run folder per rung and seed (``<rung>/seed<seed>/``), ``ladder.md`` (a
Markdown table: parameters, train and val loss at the last step as the mean over the seeds, the spread of the
val loss over the seeds, the change from the previous rung, wall time) and ``ladder.png`` (the val loss per rung
with its spread, and the mean val curves over training).
"""

import argparse
import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from hydra.errors import HydraException

from gpt.core.checkpoint import load_model
from gpt.core.config import CONF, compose_config
from gpt.core.errors import UserError
from gpt.core.job import run_job
from gpt.core.report import markdown_table
from gpt.pretrain.plots import read_metrics


@dataclass(frozen=True)
class Ladder:
    folder: str  # the rungs' configs: conf/model/<folder>/<n>_<name>.yaml
    steps: int
    batch_size: int
    evals: int  # loss estimates per run, evenly spaced
    seeds: str
    eval_chunks: int | None  # fixed chunks of each split per estimate; None: the data config's
    shared_warmup: bool  # True: every rung warms up over the first 2% of the steps; False: each rung's own

    def rungs(self) -> dict[int, str]:
        """{4: "4_single_head", ...}: the rungs' config names by number."""
        return {int(p.stem.split("_")[0]): p.stem for p in (CONF / "model" / self.folder).glob("*.yaml")}


LADDERS = {
    # 2,048 fixed chunks of each split per estimate: at context 8 the default 256 chunks are only 2,048
    # characters, too few to rank rungs a few hundredths apart.
    "lecture": Ladder("ladder", steps=5000, batch_size=32, evals=10, seeds="1337", eval_chunks=2048,
                      shared_warmup=True),
    "modern": Ladder("modern", steps=2000, batch_size=12, evals=8, seeds="1337,1338", eval_chunks=None,
                     shared_warmup=False),
}  # fmt: skip


def parse_numbers(text: str, option: str) -> list[int]:
    """'1-8' or '1,4,9' -> [1, ..., 8] or [1, 4, 9], sorted, without repeats."""
    numbers = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            numbers.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise UserError(f"{option}={text} is not a list of numbers like 1-8 or 1,4,9") from None
    return sorted(numbers)


def parse_rungs(text: str, ladder: Ladder) -> list[str]:
    """'1-8' or '1,4,9' -> the rungs' config names, in ladder order."""
    rungs, numbers = ladder.rungs(), parse_numbers(text, "--rungs")
    if unknown := sorted(set(numbers) - rungs.keys()):
        raise UserError(f"--rungs={text}: there is no rung {unknown[0]}; the ladder has rungs 1-{max(rungs)}")
    return [rungs[n] for n in numbers]


def shared_budget(ladder: Ladder, steps: int, batch_size: int, evals: int) -> list[str]:
    """The overrides every rung trains with (each rung's file keeps its own learning rates)."""
    if evals < 1 or steps % evals:
        raise UserError(f"--steps={steps} must be a multiple of --evals={evals}, the number of loss estimates")
    budget = [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps // evals}",
              f"data.batch_size={batch_size}"]  # fmt: skip
    if ladder.shared_warmup:
        budget.append(f"optim.warmup_steps={steps // 50}")  # and the schedule ends at the last step (decay_steps)
    if ladder.eval_chunks:
        budget.append(f"data.eval_chunks={ladder.eval_chunks}")
    return budget


def train_rung(ladder: Ladder, rung: str, seed: int, overrides: list[str], run_dir: Path) -> dict:
    """Train one rung with one seed in this process, as train.py would; return its losses and val curve."""
    # Imported here, so that --help and bad arguments answer without loading Lightning.
    from gpt.pretrain.training import train

    try:
        overrides = [f"model={ladder.folder}/{rung}", f"seed={seed}", *overrides]
        cfg = compose_config("train", overrides, output_dir=str(run_dir))
    except HydraException as err:
        raise UserError(f"{err}".splitlines()[0]) from None
    start = time.perf_counter()
    run_job(train, cfg)  # seeded from cfg.seed, as train.py runs it
    seconds = time.perf_counter() - start

    metrics = read_metrics(run_dir / "metrics.csv")
    model, _ = load_model(run_dir / "checkpoints" / "best.ckpt")
    return {
        "parameters": model.num_parameters(),
        "train": metrics["train/loss_eval"][1][-1],  # both at the last step, measured on the fixed eval chunks
        "val": metrics["val/loss"][1][-1],
        "seconds": seconds,
        "val_curve": metrics["val/loss"],  # (steps, losses)
    }


def summarise(rung: str, runs: list[dict]) -> dict:
    """One rung's row: the means over its seeds, and the spread (max - min) of the val loss."""
    vals = [r["val"] for r in runs]
    steps = runs[0]["val_curve"][0]
    return {
        "rung": rung,
        "seeds": len(runs),
        "parameters": runs[0]["parameters"],
        "train": statistics.fmean(r["train"] for r in runs),
        "val": statistics.fmean(vals),
        "val_min": min(vals),
        "val_max": max(vals),
        "seconds": statistics.fmean(r["seconds"] for r in runs),
        "val_curve": (steps, [statistics.fmean(losses) for losses in zip(*(r["val_curve"][1] for r in runs))]),
    }


def ladder_table(results: list[dict]) -> str:
    rows, previous = [], None
    for r in results:
        spread = f"{r['val_max'] - r['val_min']:.3f}" if r["seeds"] > 1 else ""
        change = f"{r['val'] - previous:+.3f}" if previous is not None else ""
        name = r["rung"].replace("_", " ", 1).replace("_", "-")
        rows.append([name, f"{r['parameters']:,}", f"{r['train']:.3f}", f"{r['val']:.3f}", spread, change,
                     f"{r['seconds']:.1f} s"])  # fmt: skip
        previous = r["val"]
    header = ["rung", "parameters", "train loss", "val loss", "val spread", "val change", "wall time"]
    return markdown_table(header, rows, align=["---", "---:", "---:", "---:", "---:", "---:", "---:"])


def plot(results: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    by_rung, over_time = fig.subplots(1, 2)
    names = [r["rung"] for r in results]
    vals = [r["val"] for r in results]
    spread = [[v - r["val_min"] for v, r in zip(vals, results)], [r["val_max"] - v for v, r in zip(vals, results)]]
    bars = by_rung.bar(range(len(results)), vals, yerr=spread, capsize=3, color="tab:blue")
    by_rung.bar_label(bars, fmt="%.3f", fontsize="small", padding=4)
    by_rung.set_xticks(range(len(results)), names, rotation=30, ha="right")
    by_rung.set_ylim(min(r["val_min"] for r in results) - 0.3, max(r["val_max"] for r in results) + 0.15)
    by_rung.set_ylabel("val loss at the last step (mean, seed range)")
    for r in results:
        over_time.plot(*r["val_curve"], marker=".", label=r["rung"])
    over_time.set_xlabel("step")
    over_time.set_ylabel("val loss (mean over seeds)")
    over_time.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    fig.suptitle(title)
    fig.savefig(path, dpi=80)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m gpt.pretrain.ladder",
        description="Train a ladder's rungs (conf/model/<ladder>/) with one shared budget; write a table and a plot.",
    )
    parser.add_argument("--ladder", choices=LADDERS, default="lecture", help="lecture (default) or modern")
    parser.add_argument("--rungs", help="which rungs, e.g. 1-8 or 1,4,9 (default: all)")
    parser.add_argument("--steps", type=int, help="optimizer steps per rung (lecture: 5000, modern: 2000)")
    parser.add_argument("--batch-size", type=int, help="chunks per batch (lecture: 32, modern: 12)")
    parser.add_argument("--evals", type=int, help="loss estimates per run, evenly spaced (lecture: 10, modern: 8)")
    parser.add_argument("--seeds", help="seeds, each rung trained once per seed (lecture: 1337, modern: 1337,1338)")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/ladder/<date>_<time>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every rung, e.g. data.path=input.txt")
    args = parser.parse_args(argv)
    ladder = LADDERS[args.ladder]
    steps, batch_size = args.steps or ladder.steps, args.batch_size or ladder.batch_size
    try:
        rungs = parse_rungs(args.rungs or f"1-{max(ladder.rungs())}", ladder)
        seeds = parse_numbers(args.seeds or ladder.seeds, "--seeds")
        overrides = [*shared_budget(ladder, steps, batch_size, args.evals or ladder.evals), *args.overrides]
        out = args.out or Path("outputs", "ladder", datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
        out.mkdir(parents=True, exist_ok=True)
        print(f"{args.ladder} ladder: rungs {', '.join(rungs)}, seeds {', '.join(map(str, seeds))} into {out}")
        if rungs[-1] == "9_scaled" and args.ladder == "lecture" and not torch.cuda.is_available():
            print("note: 9_scaled is a GPU model (seconds per step on a CPU); --rungs 1-8 leaves it out")
        results = []
        for rung in rungs:
            runs = []
            for seed in seeds:
                print(f"\n=== {rung}, seed {seed} ===")
                runs.append(train_rung(ladder, rung, seed, overrides, out / rung / f"seed{seed}"))
            results.append(summarise(rung, runs))
    except UserError as err:
        raise SystemExit(f"error: {err}") from None

    table = ladder_table(results)
    (out / "ladder.md").write_text(table)
    seeds_text = f"{len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
    title = f"{args.ladder} ladder: {steps} steps of batch {batch_size} per rung, {seeds_text}"
    plot(results, out / "ladder.png", title)
    print(f"\n{table}\ntable: {out / 'ladder.md'}\nplot:  {out / 'ladder.png'}")
    return out


if __name__ == "__main__":
    main()
