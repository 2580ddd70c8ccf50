"""The sweep figures of docs/tracking.md, measured on this machine. Run from the project folder:

  python -m gpt.bench.sweeps study --pruner none|median|halving --out DIR
      one study of the modern space (hparams_search=modern, --trials trials of --steps steps, validated 4 times,
      the sampler's default seed): wall time, trials by state, optimizer steps trained, best val loss
  python -m gpt.bench.sweeps retrain --study DIR --out DIR [--seeds 1337,1338]
      the study's best configuration and the default model, each at the default's full budget, with each seed
  python -m gpt.bench.sweeps workers --workers N --out DIR
      --trials trials of the modern space's rates (model and batch fixed: every trial costs the same) by N
      processes sharing one SQLite study, each given cores/N threads: trials per minute, trials by state

Each prints a Markdown table. Pass data.path=... (or set GPT_DATA_PATH) where there is no network.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from gpt.core.config import ROOT

TRAIN = [sys.executable, str(ROOT / "train.py")]


def run(command: list[str], env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)


def wait(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.wait():
            raise SystemExit(f"error: {' '.join(process.args)} failed (exit {process.returncode}); see its log")


def study_command(out: Path, name: str, trials: int, steps: int, *overrides: str) -> list[str]:
    return [*TRAIN, "-m", "hparams_search=modern", f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={out}",
            f"hydra.sweeper.n_trials={trials}", f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps // 4}", *overrides]  # fmt: skip


def trials_of(out: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}").trials


def table(header: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(map(str, row)) + " |" for row in [header, ["---"] * len(header), *rows]])


def study(args) -> None:
    out = args.out / args.pruner
    start = time.perf_counter()
    command = study_command(out, "modern", args.trials, args.steps, f"hydra/sweeper/pruner={args.pruner}")
    wait(run([*command, *args.overrides], log=args.out / f"{args.pruner}.log"))
    wall = time.perf_counter() - start
    trials = trials_of(out, "modern")
    steps = sum(max(t.intermediate_values, default=0) for t in trials)
    best = min(t.value for t in trials if t.state == TrialState.COMPLETE)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    states = ", ".join(f"{n} {state.name.lower()}" for state, n in counts.items() if n)
    trained = f"{steps} of {args.trials * args.steps}"
    header = ["pruner", "trials", "wall time (s)", "optimizer steps trained", "best val loss"]
    print(table(header, [[args.pruner, states, f"{wall:.0f}", trained, f"{best:.4f}"]]))


def retrain(args) -> None:
    rows = []
    for seed in args.seeds.split(","):
        best = ["--config-dir", str(args.study.resolve()), "--config-name", "best"]
        for name, config in (("best of the study", best), ("default (modern_tiny)", [])):
            run_dir = args.out / f"{name.split()[0]}-{seed}"
            budget = ["trainer.max_steps=700", "trainer.val_check_interval=175"]  # modern_tiny's
            start = time.perf_counter()
            wait(run([*TRAIN, *config, *budget, f"seed={seed}", f"hydra.run.dir={run_dir}", *args.overrides],
                     log=args.out / f"{run_dir.name}.log"))  # fmt: skip
            wall = time.perf_counter() - start
            result = yaml.safe_load((run_dir / "result.yaml").read_text())
            rows.append([name, seed, f"{result['params']:,}", f"{result['best_val_loss']:.4f}", f"{wall:.0f}"])
    print(table(["configuration", "seed", "parameters", "best val loss", "wall time (s)"], rows))


def workers(args) -> None:
    out = args.out / f"workers{args.workers}"
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    fixed = ["model.n_embd=128", "model.n_layer=4", "data.batch_size=32", "hydra/sweeper/pruner=none"]
    command = study_command(out, "workers", args.trials, args.steps, *fixed, *args.overrides)
    start = time.perf_counter()
    wait(*[run(command, env={"OMP_NUM_THREADS": str(threads)}, log=args.out / f"workers{args.workers}-{n}.log")
           for n in range(args.workers)])  # fmt: skip
    wall = time.perf_counter() - start
    trials = trials_of(out, "workers")
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    distinct = len({tuple(sorted(t.params.items())) for t in done})
    failed = sum(t.state == TrialState.FAIL for t in trials)
    header = ["workers x threads", "wall time (s)", "trials per minute", "trials done", "distinct draws", "failed"]
    print(table(header, [[f"{args.workers} x {threads}", f"{wall:.0f}", f"{len(done) / wall * 60:.2f}", len(done),
                          distinct, failed]]))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gpt.bench.sweeps", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("phase", choices=["study", "retrain", "workers"])
    parser.add_argument("--out", type=Path, required=True, help="a folder for the runs and logs")
    parser.add_argument("--pruner", default="median", help="study: hydra/sweeper/pruner (none, median, halving, ...)")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--steps", type=int, default=200, help="each trial's trainer.max_steps")
    parser.add_argument("--study", type=Path, help="retrain: the folder of a study (its best.yaml)")
    parser.add_argument("--seeds", default="1337,1338")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="more train.py overrides, e.g. data.path=...")
    args = parser.parse_intermixed_args()  # overrides may follow the options
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    {"study": study, "retrain": retrain, "workers": workers}[args.phase](args)


if __name__ == "__main__":
    main()
