"""What an Optuna sweep leaves in its folder for a person, rewritten by each worker when it ends:

- ``summary.md``: every trial of the study (whichever worker ran it), best first, with its state, val loss and
  parameters, and how much each parameter mattered;
- ``best.yaml``: the best trial's whole config, which train.py takes back (``--config-dir DIR --config-name best``);
- ``history.png``, ``params.png``, ``importances.png``, ``intermediate.png``: Optuna's plots of the study.
"""

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import FrozenTrial, TrialState

from gpt.core.report import markdown_table
from gpt.pretrain.sweeps import FIXED, PRUNED_AT
from gpt.pretrain.tracking import SUMMARY_FILE

log = logging.getLogger(__name__)

BEST_CONFIG = "best.yaml"
PLOTS = {  # file: (Optuna's matplotlib plot, what it shows)
    "history.png": ("plot_optimization_history", "the val loss of each trial, and the best so far"),
    "params.png": ("plot_slice", "the val loss against each searched parameter"),
    "importances.png": ("plot_param_importances", "how much of the val loss's spread each parameter explains"),
    "intermediate.png": ("plot_intermediate_values", "each trial's val loss at each validation, up to its last"),
}  # fmt: skip


def write_report(study: optuna.Study, sweep_dir: Path, compose: Callable[[list[str]], DictConfig]) -> Path:
    """Write the summary, the best config and the plots of ``study`` into ``sweep_dir``; ``compose(overrides)`` is
    train.py's job config for those overrides. Returns the summary's path."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    fixed = study.user_attrs.get(FIXED, [])
    lines = [f"# Study `{study.study_name}`: {len(trials)} trials", ""]
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    lines.append(", ".join(f"{n} {state.name.lower()}" for state, n in counts.items() if n) + ".")
    lines.append(f"Every trial ran with {_quoted(fixed)}." if fixed else "No fixed override.")
    if complete:
        best = study.best_trial
        overrides = [*fixed, *(f"{key}={value}" for key, value in best.params.items())]
        best_file = _write_best_config(compose(overrides), sweep_dir, best)
        lines += [
            f"Best: trial {best.number}, val loss {best.value:.4f}. Train its configuration again (add any override, "
            f"such as trainer.max_steps=N): `python train.py --config-dir {sweep_dir} --config-name {best_file.stem}`",
        ]
    lines += ["", _trials_table(trials, list(study.user_attrs.get("search_space", {})))]
    importances = _importances(study)
    if importances:
        lines += ["## Importances", "", "What share of the val loss's spread over the complete trials each parameter",
                  "explains (Optuna's default evaluator).", "",
                  markdown_table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in importances.items()],
                                 ["---", "---:"])]  # fmt: skip
    plots = [f"- `{name}`: {about}" for name, (_, about) in PLOTS.items() if _plot(study, name, sweep_dir)]
    lines += ["## Plots", "", *plots]
    path = sweep_dir / SUMMARY_FILE
    _write_atomically(path, "\n".join(lines) + "\n")
    log.info(f"study summary: {path}")
    return path


def _trials_table(trials: list[FrozenTrial], params: list[str]) -> str:
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}
    ranked = sorted(trials, key=lambda t: (order.get(t.state, 2), t.value if t.value is not None else 0.0, t.number))
    rows = []
    for rank, trial in enumerate(ranked, 1):
        state = trial.state.name.lower()
        if trial.state == TrialState.PRUNED:
            state += f" at step {trial.user_attrs.get(PRUNED_AT, trial.last_step)}"
        value = "" if trial.value is None else f"{trial.value:.4f}"
        rows.append([rank, trial.number, state, value, *(_format(trial.params.get(key, "")) for key in params)])
    header = ["rank", "trial", "state", "val loss", *params]
    return markdown_table(header, rows, ["---:", "---:", "---", "---:", *["---:"] * len(params)])


def _write_best_config(cfg: DictConfig, sweep_dir: Path, best: FrozenTrial) -> Path:
    with open_dict(cfg):
        del cfg["hydra"]  # the sweep's own settings; train.py adds its defaults
    header = f"# The whole config of the study's best trial, {best.number} (val loss {best.value:.4f}).\n"
    path = sweep_dir / BEST_CONFIG
    _write_atomically(path, header + OmegaConf.to_yaml(cfg))
    return path


def _importances(study: optuna.Study) -> dict[str, float]:
    try:
        return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):  # too few complete trials, or a single value of every parameter
        return {}


def _plot(study: optuna.Study, name: str, sweep_dir: Path) -> bool:
    """Optuna's plot ``name`` of the study as a PNG in the sweep folder; False when it has nothing to show."""
    from matplotlib import pyplot as plt  # Optuna's plots draw on pyplot's figures

    function = getattr(optuna.visualization.matplotlib, PLOTS[name][0])
    category_log = logging.getLogger("matplotlib.category")  # "categorical units" for choices such as (16, 32)
    level = category_log.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every one of them is "experimental", some warn about few trials
        category_log.setLevel(logging.WARNING)
        try:
            axes = function(study)
        except (ValueError, RuntimeError):
            return False
        finally:
            category_log.setLevel(level)
    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    figure.savefig(sweep_dir / name, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return True


def _write_atomically(path: Path, text: str) -> None:
    """Workers sharing a folder rewrite the same files: each write replaces the file whole, never half-written."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    partial.replace(path)


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _quoted(overrides) -> str:
    return " ".join(f"`{override}`" for override in overrides)
