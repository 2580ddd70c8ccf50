"""Optuna studies of train.py, run by the project's Hydra sweeper (``python train.py -m hparams_search=NAME``).

- The search space, read from Hydra's sweep syntax (``choice``, ``interval``, ``tag(log, ...)``, ``range``), and
  the checks made before the first trial: a key that is not in the config, or that the chosen recipe ignores.
- The study, in a database every worker opens (SQLite by default, a server such as PostgreSQL across
  machines), with a heartbeat: a worker killed mid-trial leaves a trial that the next worker marks failed.
- The loop each worker runs until the study holds ``n_trials`` complete or pruned trials, however many workers
  share it and however often it was stopped.
- The trial a job runs as (``current_trial``), which ``gpt.pretrain.callbacks.TrialPruning`` reports to.

The Hydra side (parsing the command line, composing and launching the jobs) is the sweeper plugin's,
``hydra_plugins/gpt_optuna_sweeper``; the report written at the end is ``gpt.pretrain.sweep_report``'s.
"""

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
import sqlalchemy
from hydra.core.override_parser.types import Override, Transformer
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import TrialState

from gpt.core.errors import UserError

log = logging.getLogger(__name__)

DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials a study's n_trials counts
PRUNED_AT = "pruned_at_step"  # a trial's user attribute: the step its run stopped at, when the pruner stopped it
SPACE, FIXED = "search_space", "fixed_overrides"  # the study's user attributes: what every worker must share


@dataclass(frozen=True)
class TrialRef:
    """The Optuna trial a train.py job runs as, in plain data: a DDP worker process can rebuild it."""

    storage: str
    study_name: str
    trial_id: int
    number: int
    pruner: dict  # the study's pruner, as a Hydra config: Optuna does not store it with the study


_current: TrialRef | None = None


def current_trial() -> TrialRef | None:
    """The trial the job running in this process is, or None outside an Optuna sweep."""
    return _current


@contextmanager
def running(trial: TrialRef) -> Iterator[None]:
    """Make ``trial`` the current one while a job of the sweep runs in this process."""
    global _current
    _current = trial
    try:
        yield
    finally:
        _current = None


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one searched key, from Hydra's sweep syntax."""
    sweep = override.value()
    if override.is_interval_sweep():  # interval(a, b): floats; int(interval(a, b)): integers; tag(log, ...)
        kind = IntDistribution if isinstance(sweep.start, int) and isinstance(sweep.end, int) else FloatDistribution
        return kind(sweep.start, sweep.end, log="log" in sweep.tags)
    if override.is_discrete_sweep():  # choice(a, b, ...), a,b,..., range(a, b[, step])
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    raise UserError(f"{override.input_line}: a searched key takes choice(...), interval(...) or range(...)")


def search_space(overrides: list[Override]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The searched keys with their distributions, and the fixed overrides every trial gets.

    ``overrides`` are the sweeper's ``params`` followed by the command line: a later override of a key wins,
    so ``model.n_layer=4`` on the command line fixes a key the config searches, and ``optim.lr=1e-3,2e-3`` searches
    it among those values.
    """
    space, fixed = {}, {}
    for override in overrides:
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = override.input_line
    return space, list(fixed.values())


def check_space(space: dict[str, BaseDistribution], cfg: DictConfig) -> None:
    """Refuse, before the first trial, a space that cannot work with the job config ``cfg`` (composed from the
    fixed overrides): a key the config does not have, or one the chosen recipe ignores."""
    optim, searched = cfg.get("optim") or {}, set(space)
    muon_only = sorted(key for key in searched if key.startswith(("optim.muon_", "optim.ns_")))
    problems = []
    if muon_only and optim.get("name") != "muon":
        problems.append(
            f"{', '.join(muon_only)}: read by optim=muon only, and this model trains with optim={optim.get('name')} "
            "(hparams_search=lecture searches AdamW's models)"
        )
    problems += [
        f"{key} is not a key of the config (python train.py --cfg job lists them)"
        for key in sorted(searched - set(muon_only))
        if OmegaConf.select(cfg, key, default=KeyError) is KeyError
    ]
    if not problems and not searched & {"model", "optim"}:  # a searched recipe decides per trial
        if optim.get("name") == "muon" and "optim.lr" in searched and "optim.muon_lr" not in searched:
            problems.append(
                "optim.lr: under optim=muon it sets only the embeddings', head's and gains' rate; search "
                "optim.muon_lr, the blocks' rate, too (hparams_search=modern)"
            )
        if "optim.decay_fraction" in searched and optim.get("schedule") != "wsd":
            problems.append(
                f"optim.decay_fraction: only optim.schedule=wsd reads it, this recipe's is {optim.get('schedule')}"
            )
    if problems:
        raise UserError("the search space cannot work: " + "; ".join(problems))


def open_study(
    study_name: str,
    storage: str,
    direction: str,
    heartbeat_interval: int,
    space: dict[str, BaseDistribution],
    fixed: list[str],
) -> optuna.Study:
    """Create the study, or load it if a worker or an earlier sweep made it; refuse one with another space.

    Each running trial's worker records a heartbeat every ``heartbeat_interval`` seconds; a trial whose
    heartbeat stops for twice that (its worker was killed) is marked failed by the next worker that looks.
    """
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=heartbeat_interval)
            study = optuna.create_study(study_name=study_name, storage=rdb, direction=direction, load_if_exists=True)
            break
        except Exception as err:  # SQLAlchemy's errors for a bad URL, a missing driver, a server that is not there
            reason = str(err).strip().splitlines()[0]
            # Workers started together on a new database all create Optuna's tables: those that lose the race
            # find them half made ("already exists", or a duplicate key). Once made, they open.
            if attempt < 4 and (isinstance(err, sqlalchemy.exc.IntegrityError) or "already exists" in reason):
                time.sleep(1 + attempt)
                continue
            raise UserError(
                f"hydra.sweeper.storage={storage} cannot be opened: {reason} (an SQLAlchemy URL: sqlite:///FILE, "
                "postgresql://USER@HOST/DB, ...)"
            ) from None
    wanted = {key: distribution_to_json(value) for key, value in space.items()}
    stored = study.user_attrs.get(SPACE)
    if stored is None:
        study.set_user_attr(SPACE, wanted)
        study.set_user_attr(FIXED, fixed)
    elif stored != wanted:
        differ = sorted(key for key in stored.keys() | wanted.keys() if stored.get(key) != wanted.get(key))
        raise UserError(
            f"study {study_name} in {storage} searches another space ({', '.join(differ)} differ): give this "
            "space another hydra.sweeper.study_name, or continue the study with its own"
        )
    elif study.user_attrs.get(FIXED) != fixed:
        log.warning(
            f"study {study_name} was started with the fixed overrides {study.user_attrs.get(FIXED)}; this worker "
            f"runs its trials with {fixed}: their val losses may not compare"
        )
    return study


class StudyFull(Exception):
    """Another worker asked for a trial at the same moment and took the study's last place."""


def optimize(
    study: optuna.Study,
    n_trials: int,
    sampler: DictConfig,
    space: dict[str, BaseDistribution],
    run: Callable[[optuna.Trial, dict], float],
    poll_seconds: float,
) -> None:
    """Run trials until the study holds ``n_trials`` complete or pruned ones, counting every worker's.

    Each trial draws its parameters from a sampler seeded with (``sampler.seed``, the trial's number): the
    same study gives the same trials, and workers that share it, or a sweep continued after a stop, never
    repeat one another's draws. (Optuna draws a trial's parameters at its first ``suggest``, once its number is
    known: the sampler is replaced between the two.)

    ``run(trial, params)`` runs the job and returns the value to minimise; it raises ``optuna.TrialPruned`` for a
    pruned run. A trial that fails stops the sweep, as in Hydra's
    grids: run the same command again, once the cause is fixed, to go on. While the last places are held by
    other workers' trials, this worker checks every ``poll_seconds`` whether one of them failed.
    """
    seed = sampler.get("seed")

    def objective(trial: optuna.Trial) -> float:
        trials = study.get_trials(deepcopy=False)
        if sum(t.number < trial.number and t.state in (*DONE, TrialState.RUNNING) for t in trials) >= n_trials:
            trial.set_user_attr("not_run", f"the study had its {n_trials} trials")
            raise StudyFull
        drawn = {} if seed is None else {"seed": hash((seed, trial.number)) & 0xFFFF_FFFF}
        study.sampler = instantiate(sampler, **drawn)
        return run(trial, {name: suggest(trial, name, dist) for name, dist in space.items()})

    waiting_for = None
    while True:
        with warnings.catch_warnings():  # as the heartbeat
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        done = sum(trial.state in DONE for trial in trials)
        running = [trial.number for trial in trials if trial.state == TrialState.RUNNING]
        if done >= n_trials:
            return
        if done + len(running) < n_trials:
            study.optimize(objective, n_trials=1, catch=(StudyFull,))
            continue
        # The last places are taken by other workers' trials: wait, in case one of them fails.
        if running != waiting_for:
            log.info(f"{done} of {n_trials} trials done; waiting for trial(s) {running} of other workers")
            waiting_for = running
        time.sleep(poll_seconds)


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution):
    """A value of ``dist`` for ``name``, drawn by the study's sampler."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
