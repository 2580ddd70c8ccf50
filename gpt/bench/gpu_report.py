"""A GPU machine's report in one command: the GPU tests, `model=small` to the end of its recipe, DDP on every GPU.

Run by ``scripts/gpu_report.sh`` (``python -m gpt.bench.gpu_report`` from the project folder does the same):

    scripts/gpu_report.sh [--out REPORT.md] [--budget-min 10] [--max-steps N] [--max-time-s S] [--tests PATH]
                          [overrides...]
    scripts/gpu_report.sh --cpu-smoke data.path=input.txt    # the same pipeline, a tiny model, 4 steps, on the CPU

1. ``python -m pytest -q -m gpu tests``: the tests marked ``gpu``. None selected is a failure: nothing was checked.
2. ``train.py model=small`` with its defaults (and the overrides given here) to the end of its recipe, after a
   short throughput probe (bench.py's Lightning loop on random tokens, in a process of its own, so that its
   memory is free again before the runs). If the probe's step time says the recipe does not fit what is left
   of the budget, ``trainer.max_steps`` is cut to what fits, and the report says so. A ``trainer.max_time``
   guard stops the run if the estimate was wrong; the report says if it fired, also before the first validation
   (then nothing is measured).
3. DDP on the visible GPUs (``trainer.devices=N``, the per-GPU batch of step 2, the same eval chunks), a short
   run: tokens/s and the scaling efficiency against step 2's one GPU. N is the most GPUs that share the eval
   chunks evenly (``data.eval_chunks``). Skipped, and said, with fewer than two GPUs.

Every figure in the report is measured by this run; estimates (only used to plan the cut) are labelled as such.
The run folders (and, without ``--out``, ``report.md``) go to ``outputs/gpu_report/<date>_<time>/`` under the
current directory.
"""

import time

STARTED = time.perf_counter()  # the budget counts from here

import argparse  # noqa: E402
import datetime  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from gpt.bench import race, throughput  # noqa: E402
from gpt.bench.common import load_config  # noqa: E402
from gpt.core.config import ROOT  # noqa: E402
from gpt.pretrain.training import STOPPED_EARLY  # noqa: E402

TARGET = 1.47  # nanoGPT's val loss for the lecture's model
STARTUP_S = 60  # allowance per train.py process for imports, data and torch.compile (an estimate, for planning only)
SAFETY = 1.25  # on the probe's ms/step, for validations, samples and checkpoints (an estimate, for planning only)
REPORT_RESERVE_S = 15  # writing the report, process exits

# --cpu-smoke: model=small shrunk to a few seconds of CPU, and its recipe cut to a handful of steps.
SMOKE_OVERRIDES = [
    "trainer.accelerator=cpu",
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=16",
    "data.batch_size=8",
    "data.eval_chunks=16",
    "optim.warmup_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=2",
    "callbacks.text_sample.max_new_tokens=20",
]
SMOKE_STEPS, SMOKE_PROBE = 4, (3, 1)  # the main run's steps; the probe's steps and warm-up steps


def fit_steps(steps: int, val_every: int) -> tuple[int, int]:
    """``steps`` made valid for train.py, which validates the last step: rounded down to a multiple of
    ``val_every``, or, when fewer, with one validation at the end. Returns (max_steps, val_check_interval)."""
    steps = max(1, steps)
    return (steps - steps % val_every, val_every) if steps >= val_every else (steps, steps)


def plan_steps(recipe: int, val_every: int, requested=None, ms_per_step=None, seconds=None, why=None) -> dict:
    """How many steps the main run trains: the recipe's, or fewer if ``requested`` (--max-steps, or ``why``) or if
    the probe's ``ms_per_step`` says the recipe does not fit in ``seconds``. ``cut`` says what was cut and why."""
    reason = None
    if requested is not None and requested < recipe:
        steps, reason = requested, why or f"--max-steps {requested}"
    elif requested is None and ms_per_step and seconds is not None:
        estimate = STARTUP_S + recipe * ms_per_step / 1000 * SAFETY
        if estimate > seconds:
            steps = int((seconds - STARTUP_S) / (ms_per_step / 1000 * SAFETY))
            reason = (
                f"to fit the budget: the probe measured {ms_per_step:.1f} ms/step, so {recipe:,} steps were estimated "
                f"at {estimate:.0f} s ({STARTUP_S} s start-up + {SAFETY} x steps x ms/step) with {seconds:.0f} s left"
            )
    if reason is None:
        return {"steps": recipe, "val_every": val_every, "cut": None}
    steps, new_val_every = fit_steps(steps, val_every)
    cut = f"trainer.max_steps {recipe:,} → {steps:,}"
    if new_val_every != val_every:
        cut += f", trainer.val_check_interval {val_every:,} → {new_val_every:,}"
    return {"steps": steps, "val_every": new_val_every, "cut": f"{cut} ({reason})"}


def duration(seconds: float) -> str:
    """``trainer.max_time`` format, DD:HH:MM:SS."""
    seconds = max(0, int(seconds))
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def shown(path) -> str:
    """A path relative to the current directory when it is under it (the report is read there)."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def elapsed() -> float:
    return time.perf_counter() - STARTED


# ----------------------------------------------------------------------------------------------- the steps


def run_gpu_tests(log_path: Path, tests: str) -> dict:
    """pytest -m gpu on ``tests`` (a folder or file of the repository). Passing means exit 0: pytest's exit 5, no
    test selected, is a failure too, since nothing was checked."""
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", tests]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    log_path.write_text(result.stdout + result.stderr)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "(no output)"
    outcome = {0: "passed", 5: "FAILED: none selected"}.get(result.returncode, f"FAILED (exit {result.returncode})")
    return {"command": f"python -m pytest -q -m gpu {tests}", "outcome": outcome, "summary": summary,
            "wall_s": wall_s, "log": shown(log_path), "ok": result.returncode == 0}  # fmt: skip


def probe(device, overrides: list[str], smoke: bool) -> dict:
    """bench.py's throughput of model=small, in a process of its own: what it holds (on a GPU its model, optimizer,
    cached blocks and CUDA context) is freed when that process exits, before the training runs start."""
    steps, warmup = SMOKE_PROBE if smoke else (50, 10)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            pid = pool.submit(os.getpid).result()
            result = pool.submit(throughput.bench_throughput, "small", device, steps, warmup, overrides, False).result()
        except Exception as err:  # reported, and the run goes on without a cut estimate
            return {"error": f"{type(err).__name__}: {err}", "steps": steps, "warmup": warmup}
    return {**result, "steps": steps, "warmup": warmup, "pid": pid}


def ddp_devices(n_gpus: int, eval_chunks: int) -> int:
    """The most of ``n_gpus`` GPUs over which ``eval_chunks`` split evenly (train.py requires it), so that the DDP
    run evaluates the same chunks as the one-GPU run."""
    return max(n for n in range(1, n_gpus + 1) if eval_chunks % n == 0)


def train_run(name: str, run_dir: Path, overrides: list[str], target: float) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = [*overrides, race.PEAK_MEMORY]
    command = shlex.join(["python", "train.py", f"hydra.run.dir={shown(run_dir)}", *overrides])
    result, wall_s = race.run_train(overrides, run_dir)
    (run_dir / "console.txt").write_text(result.stdout + result.stderr)
    run = {"name": name, "command": command, "wall_s": wall_s, "folder": shown(run_dir), "ok": not result.returncode}
    if result.returncode and STOPPED_EARLY in result.stderr:  # the time guard: a cut, not a failure
        return {**run, "ok": True, "stopped_early": True}
    if result.returncode:
        run["error"] = f"exit {result.returncode}:\n" + "\n".join(result.stderr.strip().splitlines()[-15:])
        return run
    return {**run, **race.read_run(run_dir, target)}


# ----------------------------------------------------------------------------------------------- the report


def number(value, fmt=",.0f", unit="") -> str:
    return "not measured" if value is None else f"{value:{fmt}}{unit}"


def mfu_text(run: dict, device_name: str, peak, devices: int, cfg) -> str:
    if run.get("tokens_per_s") is None:
        return "not measured"
    if device_name == "cpu":
        return "n/a on CPU"
    if peak is None:
        return f"unknown: no dense bf16 peak known for {device_name} (gpt.bench.throughput.PEAK_BF16_FLOPS)"
    fpt = throughput.flops_per_token(cfg.model, run["params"])
    value = throughput.mfu_pct(fpt, run["tokens_per_s"], peak, devices)
    return f"{value:.1f}% of {devices} x {peak / 1e12:,.0f} TFLOP/s ({fpt / 1e6:,.1f} MFLOP/token)"


def run_rows(run: dict, target: float, device_name: str, peak, devices: int, cfg, planned: int, of: str) -> list:
    """One run's table: ``of`` follows the steps run ("of the recipe's 5,000"), ``planned`` tells a stopped run."""
    rows = [("command", f"`{run['command']}`")]
    if run.get("stopped_early"):
        rows += [("outcome", "**stopped by the time guard** before its first validation: nothing measured"),
                 ("wall time", f"{run['wall_s']:.0f} s")]  # fmt: skip
        return ["| | |", "| --- | --- |", *(f"| {key} | {value} |" for key, value in rows)]
    if not run["ok"]:
        rows += [("outcome", "**FAILED**, nothing measured"), ("wall time", f"{run['wall_s']:.0f} s")]
        table = [f"| {key} | {value} |" for key, value in rows]
        return ["| | |", "| --- | --- |", *table, "", "```", run["error"], "```"]
    reached = run["train_s_at_target"]
    memory_source = "peak RSS of train.py" if device_name == "cpu" else "torch.cuda.max_memory_allocated, largest rank"
    stopped = "" if run["steps"] >= planned else f", **stopped by the time guard** ({planned:,} planned)"
    rows += [
        ("steps run", f"{run['steps']:,} {of}{stopped}"),
        ("tokens/s", f"{number(run['tokens_per_s'])} (median of the logged windows, all devices, no validation)"),
        ("MFU", mfu_text(run, device_name, peak, devices, cfg)),
        (f"time to val {target}", "not reached" if reached is None
         else f"{reached:,.0f} s into training (step {run['step_at_target']:,})"),
        ("best val", f"{run['best_val_loss']:.4f}"),
        ("peak memory", f"{number(run['peak_memory_mb'], unit=' MB')} ({memory_source})"),
        ("wall time", f"{run['wall_s']:,.0f} s (whole process)"),
        ("run folder", f"`{run['folder']}`"),
    ]  # fmt: skip
    return ["| | |", "| --- | --- |", *(f"| {key} | {value} |" for key, value in rows)]


def write_report(path: Path, r: dict) -> str:
    cfg, target, device_name, peak = r["cfg"], r["target"], r["device_name"], r["peak"]
    lines = ["# GPU report", ""]
    command = shlex.join(["scripts/gpu_report.sh", *r["argv"]])
    lines += [f"`{command}` on {r['date']}: {r['total_s']:,.0f} s in all (budget: {r['budget']}).", ""]
    if r["smoke"]:
        lines += [
            "**CPU smoke run** (`--cpu-smoke`): the report's pipeline with a tiny model and a few steps on",
            "the CPU. It checks the script; its figures are not results, and it holds no GPU figure.",
            "",
        ]

    lines += ["## Machine", "", "| | |", "| --- | --- |"]
    gpus = f"{r['gpu_name']} x {r['n_gpus']}" if r["n_gpus"] else "none visible"
    if r["smoke"]:
        gpus = f"not used (--cpu-smoke); {r['visible']} visible"
    lines += [f"| GPUs | {gpus} |", f"| torch | {torch.__version__} |",
              f"| CUDA | {torch.version.cuda or 'n/a (CPU build of torch)'} |",
              f"| CPU | {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{torch.get_num_threads()} torch threads |",
              f"| Python | {platform.python_version()} |",
              f"| data | {r['data']} |", ""]  # fmt: skip

    lines += ["## What was cut", ""]
    lines += [f"- {item}" for item in r["cuts"]] or ["Nothing: the tests, the whole recipe and the DDP run ran in full"]
    lines += [""]

    tests = r["tests"]
    lines += ["## 1. GPU tests", "", f"`{tests['command']}`: **{tests['outcome']}** ({tests['summary']}), "
              f"{tests['wall_s']:.0f} s; output in `{tests['log']}`."]  # fmt: skip
    if tests["outcome"] == "FAILED: none selected":
        lines += ["", "No test there is marked `gpu` (`@pytest.mark.gpu`), so pytest selected none: no GPU test ran."]
    lines += [""]

    main, p = r["main"], r["probe"]
    lines += [f"## 2. `model=small`, default settings ({r['recipe']:,}-step recipe)", ""]
    lines += [
        f"Speed settings as resolved here: precision {cfg.trainer.precision}, compile {cfg.compile}, "
        f"fused AdamW {cfg.optim.fused}; batch {cfg.data.batch_size} x {cfg.model.block_size} tokens.",
        "",
    ]
    if "error" in p:
        lines += [f"Throughput probe (bench.py, {p['steps']} steps): **failed**, no cut estimated: `{p['error']}`", ""]
    else:
        probe_mfu = "n/a on CPU" if device_name == "cpu" else number(p["mfu_pct"], ".1f", "%") if peak else "unknown"
        memory = "peak RSS of the probe's process" if device_name == "cpu" else "torch.cuda.max_memory_allocated"
        lines += [f"Throughput probe (bench.py's Lightning loop on random tokens, {p['steps']} steps after "
                  f"{p['warmup']} warm-up): {p['tokens_per_s']:,.0f} tokens/s, "
                  f"{p['lightning_ms_per_step']:.1f} ms/step, MFU {probe_mfu}, "
                  f"peak memory {p['peak_memory_mb']:,.0f} MB ({memory}).", ""]  # fmt: skip
    of = f"of the recipe's {r['recipe']:,}" + (" (cut: see above)" if r["planned"] < r["recipe"] else "")
    lines += run_rows(main, target, device_name, peak, 1, cfg, r["planned"], of) + [""]

    lines += ["## 3. DDP on every visible GPU", ""]
    ddp = r["ddp"]
    if "skipped" in ddp:
        lines += [f"**Skipped**: {ddp['skipped']}.", ""]
    else:
        lines += [f"A short run ({ddp['planned']:,} steps, not the recipe) on {ddp['devices']} GPUs with the per-GPU "
                  f"batch of step 2 (data.batch_size {ddp['batch']}) and its eval chunks: weak scaling.",
                  ""]  # fmt: skip
        lines += run_rows(ddp["run"], target, device_name, peak, ddp["devices"], cfg, ddp["planned"], "(a short run)")
        one, many = main.get("tokens_per_s"), ddp["run"].get("tokens_per_s")
        if one and many:
            lines += [f"| scaling efficiency | {100 * many / (ddp['devices'] * one):.0f}% "
                      f"({many:,.0f} / ({ddp['devices']} x {one:,.0f}) tokens/s of step 2) |"]  # fmt: skip
        lines += [""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


# ----------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides for the runs (e.g. data.path=input.txt)")
    parser.add_argument("--out", help="the markdown report (default: report.md in the report's run folder)")
    parser.add_argument("--budget-min", type=float, default=10, help="minutes for the whole report; 0: no limit")
    parser.add_argument("--max-steps", type=int, help="cut model=small's recipe to this many steps")
    parser.add_argument("--max-time-s", type=int, help="the main run's time guard (default: what the budget leaves)")
    parser.add_argument("--tests", default="tests", help="the folder or file of tests marked gpu to run")
    parser.add_argument("--ddp-steps", type=int, default=200, help="steps of the DDP run")
    parser.add_argument("--target", type=float, default=TARGET, help="the val loss to time (default 1.47)")
    parser.add_argument("--cpu-smoke", action="store_true", help="the pipeline with a tiny model on the CPU")
    args = parser.parse_args()

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA GPU visible: this report is for a GPU machine (--cpu-smoke checks the pipeline on the CPU)")
        return 2
    device = torch.device("cpu" if smoke else "cuda")
    n_gpus = 0 if smoke else torch.cuda.device_count()
    device_name, peak = throughput.device_peak_flops(device)
    budget_s = args.budget_min * 60 or None
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    runs = Path("outputs/gpu_report") / stamp
    runs.mkdir(parents=True, exist_ok=True)
    overrides = ["model=small", *(SMOKE_OVERRIDES if smoke else []), *args.overrides]
    cfg = load_config(overrides)  # the resolved recipe: steps, validation interval, batch, speed settings
    recipe, val_every = cfg.trainer.max_steps, cfg.trainer.val_check_interval
    cuts = []

    print(f"[{elapsed():.0f} s] 1. GPU tests", flush=True)
    tests = run_gpu_tests(runs / "gpu_tests.txt", args.tests)

    print(f"[{elapsed():.0f} s] 2. throughput probe", flush=True)
    probe_result = probe(device, overrides[1:], smoke)
    if "error" in probe_result:
        cuts.append(f"Throughput probe failed ({probe_result['error']}): no estimate, so no cut to fit the budget")
    ms = probe_result.get("lightning_ms_per_step")
    ddp_reserve = STARTUP_S + args.ddp_steps * (ms or 0) / 1000 * SAFETY if n_gpus >= 2 else 0
    seconds = budget_s and budget_s - elapsed() - ddp_reserve - REPORT_RESERVE_S
    requested, why = (SMOKE_STEPS, "--cpu-smoke: a handful of steps") if smoke else (args.max_steps, None)
    plan = plan_steps(recipe, val_every, requested, ms, seconds, why)
    if plan["cut"]:
        cuts.append(plan["cut"])
    main_overrides = overrides.copy()
    if plan["steps"] != recipe:
        main_overrides.append(f"trainer.max_steps={plan['steps']}")
    if plan["val_every"] != val_every:
        main_overrides.append(f"trainer.val_check_interval={plan['val_every']}")
    if seconds or args.max_time_s is not None:
        # the timer starts after the process has started and loaded the data
        guard = max(60, seconds - 20) if args.max_time_s is None else args.max_time_s
        main_overrides.append(f"+trainer.max_time={duration(guard)}")
    print(f"[{elapsed():.0f} s] 2. train.py model=small, {plan['steps']} steps", flush=True)
    main_run = train_run("small", runs / "small", main_overrides, args.target)
    if main_run.get("stopped_early"):
        cuts.append("The main run was stopped by its time guard (trainer.max_time) before its first validation: "
                    "nothing measured")  # fmt: skip
    elif main_run["ok"] and main_run["steps"] < plan["steps"]:
        cuts.append(f"The main run was stopped by its time guard (trainer.max_time) at step {main_run['steps']:,} "
                    f"of {plan['steps']:,}: the estimate was wrong")  # fmt: skip

    devices = ddp_devices(n_gpus, cfg.data.eval_chunks) if n_gpus else 0
    if devices < 2:
        visible = "the CPU smoke run uses no GPU" if smoke else f"{n_gpus} GPU(s) visible"
        if n_gpus >= 2:
            visible += f", and data.eval_chunks={cfg.data.eval_chunks} splits evenly over none of 2..{n_gpus}"
        ddp = {"skipped": f"{visible}; DDP needs at least 2"}
        cuts.append(f"DDP step skipped: {ddp['skipped']}")
    else:
        if devices < n_gpus:
            cuts.append(f"DDP run on {devices} of the {n_gpus} GPUs: data.eval_chunks={cfg.data.eval_chunks} must "
                        "split evenly over them")  # fmt: skip
        batch = cfg.data.batch_size * devices
        steps, left = args.ddp_steps, budget_s and budget_s - elapsed() - REPORT_RESERVE_S
        if left and ms and STARTUP_S + steps * ms / 1000 * SAFETY > left:
            steps = max(1, int((left - STARTUP_S) / (ms / 1000 * SAFETY)))
            cuts.append(f"DDP run: {args.ddp_steps:,} → {steps:,} steps, to fit the {left:.0f} s left of the budget")
        ddp_overrides = [*overrides, f"trainer.devices={devices}", f"data.batch_size={batch}",
                         f"trainer.max_steps={steps}",
                         f"trainer.val_check_interval={steps}"]  # fmt: skip  # one validation, at the end
        print(f"[{elapsed():.0f} s] 3. DDP on {devices} GPUs, {steps} steps", flush=True)
        run = train_run("ddp", runs / "ddp", ddp_overrides, args.target)
        ddp = {"devices": devices, "batch": batch, "planned": steps, "run": run}

    report = {
        "argv": sys.argv[1:], "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "budget": f"{args.budget_min:g} min" if budget_s else "none", "smoke": smoke, "cfg": cfg,
        "target": args.target, "device_name": device_name, "peak": peak, "n_gpus": n_gpus,
        "gpu_name": torch.cuda.get_device_name(0) if n_gpus else None, "visible": torch.cuda.device_count(),
        "data": cfg.data.path or "Tiny Shakespeare, downloaded into data/",
        "cuts": cuts, "tests": tests, "probe": probe_result, "main": main_run, "recipe": recipe,
        "planned": plan["steps"], "ddp": ddp,
    }  # fmt: skip
    report["total_s"] = elapsed()
    out = Path(args.out or runs / "report.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    print("\n" + write_report(out, report))
    print(f"wrote {shown(out)}")
    runs_ok = main_run["ok"] and ddp.get("run", {"ok": True})["ok"]
    return 0 if tests["ok"] and runs_ok else 1


if __name__ == "__main__":
    sys.exit(main())
