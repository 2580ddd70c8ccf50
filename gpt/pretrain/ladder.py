"""The lecture's ladder, trained rung by rung: python -m gpt.pretrain.ladder [--rungs 1-8] [--steps N] [override ...]

Every rung of ``conf/model/ladder/`` (docs/ladder.md) trains through ``gpt.pretrain.training.train``, the job
behind ``python train.py model=ladder/<rung>``, with one shared budget, so that the losses differ only by
the model: the same steps, batch size, seed and loss estimates, and the same learning-rate schedule (a
warmup over the first 2% of the steps, then a cosine down to a tenth of the peak). The peak learning rate
is each rung's own recipe: 1e-2 for rungs 1-8, 1e-3 for the scaled-up model (model=small's recipe).
Overrides on the command line apply to every rung.

Writes, into the folder it prints: one run folder per rung, ``ladder.md`` (a Markdown table: parameters,
train and val loss at the last step, wall time) and ``ladder.png`` (the val loss per rung, and the val
curves over training).
"""

import argparse
import time
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

RUNGS = {int(p.stem.split("_")[0]): p.stem for p in (CONF / "model" / "ladder").glob("*.yaml")}  # 4: "4_single_head"


def parse_rungs(text: str) -> list[str]:
    """'1-8' or '1,4,9' -> the rungs' config names, in ladder order."""
    numbers = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            numbers.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise UserError(f"--rungs={text} is not a list of rungs like 1-8 or 1,4,9") from None
    if unknown := sorted(numbers - RUNGS.keys()):
        raise UserError(f"--rungs={text}: there is no rung {unknown[0]}; the ladder has rungs 1-{max(RUNGS)}")
    return [RUNGS[n] for n in sorted(numbers)]


def shared_budget(steps: int, batch_size: int, evals: int) -> list[str]:
    """The overrides every rung trains with (each rung's file keeps its own peak and minimum learning rate)."""
    if evals < 1 or steps % evals:
        raise UserError(f"--steps={steps} must be a multiple of --evals={evals}, the number of loss estimates")
    return [
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps // evals}",
        f"data.batch_size={batch_size}",
        f"optim.warmup_steps={steps // 50}",  # and the cosine ends at the last step (optim.decay_steps)
        # 2,048 fixed chunks of each split per estimate: at context 8 the default 256 chunks are only 2,048
        # characters, too few to rank rungs a few hundredths apart.
        "data.eval_chunks=2048",
    ]


def train_rung(rung: str, overrides: list[str], run_dir: Path) -> dict:
    """Train one rung in this process, as train.py would; return its row of the table and its val curve."""
    # Imported here, so that --help and bad arguments answer without loading Lightning.
    from gpt.pretrain.training import train

    try:
        cfg = compose_config("train", [f"model=ladder/{rung}", *overrides], output_dir=str(run_dir))
    except HydraException as err:
        raise UserError(f"{err}".splitlines()[0]) from None
    start = time.perf_counter()
    run_job(train, cfg)  # seeded from cfg.seed, as train.py runs it
    seconds = time.perf_counter() - start

    metrics = read_metrics(run_dir / "metrics.csv")
    model, _ = load_model(run_dir / "checkpoints" / "best.ckpt")
    return {
        "rung": rung,
        "parameters": model.num_parameters(),
        "train": metrics["train/loss_eval"][1][-1],  # both at the last step, measured on the fixed eval chunks
        "val": metrics["val/loss"][1][-1],
        "seconds": seconds,
        "val_curve": metrics["val/loss"],  # (steps, losses)
    }


def ladder_table(results: list[dict]) -> str:
    rows = [
        [r["rung"].replace("_", " ", 1).replace("_", "-"), f"{r['parameters']:,}", f"{r['train']:.3f}",
         f"{r['val']:.3f}", f"{r['seconds']:.1f} s"]
        for r in results
    ]  # fmt: skip
    header = ["rung", "parameters", "train loss", "val loss", "wall time"]
    return markdown_table(header, rows, align=["---", "---:", "---:", "---:", "---:"])


def plot(results: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    by_rung, over_time = fig.subplots(1, 2)
    names = [r["rung"] for r in results]
    bars = by_rung.bar(range(len(results)), [r["val"] for r in results], color="tab:blue")
    by_rung.bar_label(bars, fmt="%.3f", fontsize="small")
    by_rung.set_xticks(range(len(results)), names, rotation=30, ha="right")
    by_rung.set_ylim(min(r["val"] for r in results) - 0.3, max(r["val"] for r in results) + 0.15)
    by_rung.set_ylabel("val loss at the last step")
    for r in results:
        over_time.plot(*r["val_curve"], marker=".", label=r["rung"])
    over_time.set_xlabel("step")
    over_time.set_ylabel("val loss")
    over_time.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    fig.suptitle(title)
    fig.savefig(path, dpi=80)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m gpt.pretrain.ladder",
        description="Train the ladder's rungs (conf/model/ladder/) with one shared budget; write a table and a plot.",
    )
    parser.add_argument("--rungs", default=f"1-{max(RUNGS)}", help="which rungs, e.g. 1-8 or 1,4,9 (default: all)")
    parser.add_argument("--steps", type=int, default=5000, help="optimizer steps per rung (the lecture's 5000)")
    parser.add_argument("--batch-size", type=int, default=32, help="chunks per batch (default: the lecture's 32)")
    parser.add_argument("--evals", type=int, default=10, help="loss estimates per run, evenly spaced (default: 10)")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/ladder/<date>_<time>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every rung, e.g. data.path=input.txt")
    args = parser.parse_args(argv)
    try:
        rungs = parse_rungs(args.rungs)
        overrides = [*shared_budget(args.steps, args.batch_size, args.evals), *args.overrides]
        out = args.out or Path("outputs", "ladder", datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
        out.mkdir(parents=True, exist_ok=True)
        print(f"ladder: rungs {', '.join(rungs)} into {out}")
        top = RUNGS[max(RUNGS)]
        if top in rungs and not torch.cuda.is_available():
            print(f"note: {top} is a GPU model (seconds per step on a CPU); --rungs 1-{max(RUNGS) - 1} leaves it out")
        results = []
        for rung in rungs:
            print(f"\n=== {rung} ===")
            results.append(train_rung(rung, overrides, out / rung))
    except UserError as err:
        raise SystemExit(f"error: {err}") from None

    table = ladder_table(results)
    (out / "ladder.md").write_text(table)
    plot(results, out / "ladder.png", f"{args.steps} steps of batch {args.batch_size} per rung")
    print(f"\n{table}\ntable: {out / 'ladder.md'}\nplot:  {out / 'ladder.png'}")
    return out


if __name__ == "__main__":
    main()
