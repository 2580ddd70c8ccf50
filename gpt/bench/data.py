"""The data figures of docs/data.md: what a corpus of any size costs a run. Run from the project folder:

  python -m gpt.bench.data --size-mb 1000 --out DIR [--source FILE] [--steps 20] [train.py overrides ...]

Writes a corpus of --size-mb MB into DIR by repeating --source (by default the default corpus, Tiny Shakespeare:
set GPT_DATA_PATH where there is no network), prepares its token file (timed: MB/s), then trains
``model=tiny`` on it for --steps steps in fresh train.py processes, as a user starts them: on one process, then
on 2 DDP processes (CPU, gloo). The same runs on the default corpus are the reference. For each run: the seconds
from starting the process to its first training step, each process's peak memory (RSS) and, at the end of
training, how its resident memory splits: its own (tensors, the model, Python) and the pages of the mapped token
file that its batches touched (shared by the processes, given back when memory runs short). Prints a Markdown
table.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from gpt.bench.common import load_config
from gpt.bench.race import PEAK_MEMORY, run_train
from gpt.core.corpus import fetch_corpus
from gpt.pretrain import tokens

PIECE = 64 << 20  # bytes written at a time while the corpus is made


def make_corpus(source: Path, path: Path, size: int) -> None:
    """``path`` (its name gives the size): ``source`` repeated to ``size`` bytes (cut at a line's end), written in
    pieces, unless an earlier run wrote it."""
    if path.is_file():
        return
    text = source.read_bytes()
    piece = text * max(1, PIECE // len(text))
    partial = path.with_name(path.name + ".part")
    with open(partial, "wb") as out:
        written = 0
        while written < size:
            chunk = piece[: size - written]
            chunk = chunk[: chunk.rfind(b"\n") + 1] or chunk
            out.write(chunk)
            written += len(chunk)
            if len(chunk) < len(piece):
                break
    partial.replace(path)


def prepare(corpus: Path) -> dict:
    """Prepare ``corpus``'s token file from scratch, timed."""
    tokens.token_file(corpus).unlink(missing_ok=True)
    started = time.perf_counter()
    tokens.prepare(corpus)
    seconds = time.perf_counter() - started
    return {"prepare_s": seconds, "mb_per_s": corpus.stat().st_size / 1e6 / seconds}


def train_run(corpus: Path, devices: int, steps: int, overrides: list[str]) -> dict:
    """One train.py process (and its DDP workers): seconds from its start to its first training step, and the
    peak memory of each process."""
    ddp = ["trainer.strategy=ddp"] if devices > 1 else []
    with tempfile.TemporaryDirectory() as run_dir:
        launched = time.time()
        result, wall_s = run_train(
            ["model=tiny", "trainer.accelerator=cpu", f"trainer.devices={devices}", *ddp, f"data.path={corpus}",
             f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", *overrides, PEAK_MEMORY],
            run_dir,
        )  # fmt: skip
        if result.returncode:
            raise SystemExit(f"error: train.py on {corpus} failed:\n{result.stderr[-3000:]}")
        records = [json.loads(p.read_text()) for p in sorted(Path(run_dir).glob("peak_memory_rank*.json"))]
    return {
        "devices": devices,
        "start_s": min(r["train_started"] for r in records) - launched,
        "peak_rss_mb": [r["peak_memory_mb"] for r in records],
        "rss_anon_mb": [r.get("rss_anon_mb") for r in records],
        "rss_file_mb": [r.get("rss_file_mb") for r in records],
        "wall_s": wall_s,
    }


def gb(mb: float | None) -> str:
    return "?" if mb is None else f"{mb / 1024:.2f} GB"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1000.0, help="the large corpus's size in MB")
    parser.add_argument("--out", type=Path, required=True, help="a folder for the corpus, its tokens and the results")
    parser.add_argument("--source", type=Path, help="the text to repeat; default: the default corpus")
    parser.add_argument("--steps", type=int, default=20, help="training steps of each run")
    parser.add_argument("--keep", action="store_true", help="keep the large corpus and its token file")
    args, overrides = parser.parse_known_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_config([]).data
    source = args.source or fetch_corpus(data.path, data.url, data.data_dir)
    corpus = args.out / f"corpus_{args.size_mb:g}MB.txt"
    make_corpus(source, corpus, int(args.size_mb * 1e6))
    results = {"size_mb": corpus.stat().st_size / 1e6, **prepare(corpus), "runs": []}
    tokens.prepare(source)
    for name, path in (("default corpus", source), (f"{args.size_mb:g} MB", corpus)):
        for devices in (1, 2):
            results["runs"].append({"corpus": name, **train_run(path, devices, args.steps, overrides)})
    (args.out / "data_bench.json").write_text(json.dumps(results, indent=1))
    print(f"preparing {results['size_mb']:,.0f} MB: {results['prepare_s']:.1f} s, {results['mb_per_s']:.0f} MB/s\n")
    print("| corpus | processes | process start to first step | peak RSS per process | at the end: own / file pages |")
    print("| --- | --- | --- | --- | --- |")
    for run in results["runs"]:
        rss = " / ".join(gb(mb) for mb in run["peak_rss_mb"])
        split = ", ".join(f"{gb(own)} / {gb(file)}" for own, file in zip(run["rss_anon_mb"], run["rss_file_mb"]))
        print(f"| {run['corpus']} | {run['devices']} | {run['start_s']:.1f} s | {rss} | {split} |")
    if not args.keep:
        tokens.token_file(corpus).unlink(missing_ok=True)
        corpus.unlink()
    return results


if __name__ == "__main__":
    main()
