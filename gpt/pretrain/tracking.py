"""Each training run's result file, and the summary of a sweep.

Imported by Hydra for its callbacks in every train.py process, so it loads nothing heavy.
"""

import csv
import logging
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback

from gpt.core.report import markdown_table

log = logging.getLogger(__name__)

RESULT_FILE = "result.yaml"  # in each run folder: what the run achieved, read by SweepSummary
SUMMARY_FILE = "summary.md"  # in each sweep folder


def write_result(run_dir, **result) -> Path:
    """Write ``result`` (plain values) to the run folder's result file."""
    path = Path(run_dir) / RESULT_FILE
    path.write_text(yaml.safe_dump(result, sort_keys=False))
    return path


def continue_metrics(previous, current, resumed_at: int) -> None:
    """Put the rows of the run a resumed run started from (``previous``, a metrics.csv, if it still exists) before
    those of ``current``, up to the resume step: the resumed run's metrics.csv (and its plot) hold the whole curve,
    also after several resumes, since each file then holds all that came before it."""
    previous, current = Path(previous), Path(current)
    if not previous.is_file() or previous.resolve() == current.resolve():
        return
    before = [row for row in _rows(previous) if int(row["step"]) < resumed_at]
    after = _rows(current)
    columns = list(dict.fromkeys(key for row in before + after for key in row))
    with open(current, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(before + after)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _quoted(overrides) -> str:
    return " ".join(f"`{override}`" for override in overrides)


class SweepSummary(Callback):
    """At the end of a multirun (a grid), a Markdown table of the jobs, best val loss first, in the sweep folder.

    Each job's overrides come from its ``.hydra/overrides.yaml`` and its result from its result file, so
    the table is the same whichever launcher ran the jobs. A job without a result (it failed) is listed last.
    """

    def on_multirun_end(self, config, **kwargs) -> None:
        if "study_name" in config.hydra.sweeper:  # an Optuna study: its sweeper writes the summary, from the study
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = []
        for overrides_file in sorted(sweep_dir.glob("**/.hydra/overrides.yaml")):
            job_dir = overrides_file.parent.parent
            result_file = job_dir / RESULT_FILE
            result = yaml.safe_load(result_file.read_text()) if result_file.is_file() else {}
            overrides = yaml.safe_load(overrides_file.read_text()) or []
            jobs.append((job_dir.relative_to(sweep_dir), overrides, result.get("best_val_loss")))
        if not jobs:
            return
        common = set.intersection(*(set(overrides) for _, overrides, _ in jobs))
        jobs.sort(key=lambda job: (job[2] is None, job[2] or 0.0))
        rows = [
            [rank, job, _quoted(o for o in overrides if o not in common), "failed" if loss is None else f"{loss:.4f}"]
            for rank, (job, overrides, loss) in enumerate(jobs, 1)
        ]
        table = markdown_table(["rank", "job", "overrides", "best val loss"], rows)
        common_line = f"Common to all jobs: {_quoted(sorted(common))}" if common else "No override common to all jobs."
        path = sweep_dir / SUMMARY_FILE
        path.write_text(f"# {sweep_dir}: {len(jobs)} jobs, best first\n\n{common_line}\n\n{table}")
        log.info(f"sweep summary {path}:\n{table}")
