"""The loss curves of a run, drawn from its metrics.csv into a PNG at the end of training."""

import csv
from pathlib import Path

from matplotlib.figure import Figure


def read_metrics(csv_path) -> dict[str, tuple[list[int], list[float]]]:
    """Each metric of a CSVLogger file as (steps, values), skipping the rows where it was not logged.

    Lightning writes the metrics of its step s after optimizer step s + 1, so steps are counted from 1 here:
    the last validation of a 2000-step run is at step 2000.
    """
    series = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"]) + 1
            for name, value in row.items():
                if name not in ("step", "epoch") and value:
                    steps, values = series.setdefault(name, ([], []))
                    steps.append(step)
                    values.append(float(value))
    return series


def plot_losses(csv_path, png_path) -> Path:
    """Train and val loss against step (top) and the learning rate (bottom), saved as ``png_path``."""
    metrics = read_metrics(csv_path)
    fig = Figure(figsize=(8, 6), layout="constrained")  # not pyplot's: no display, no global backend state
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    if "train/loss" in metrics:
        loss_ax.plot(*metrics["train/loss"], lw=0.8, alpha=0.5, label="train (each logged batch)")
    for name, label in (("train/loss_eval", "train (eval chunks)"), ("val/loss", "val")):
        if name in metrics:
            loss_ax.plot(*metrics[name], marker="o", ms=3, label=label)
    if "val/loss" in metrics:
        steps, values = metrics["val/loss"]
        best = min(range(len(values)), key=values.__getitem__)
        loss_ax.set_title(f"best val loss {values[best]:.4f} at step {steps[best]}")
    loss_ax.set_ylabel("cross-entropy loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()
    if "train/lr" in metrics:
        lr_ax.plot(*metrics["train/lr"], color="tab:green")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step")
    lr_ax.grid(alpha=0.3)
    fig.savefig(png_path, dpi=100)
    return Path(png_path)
