"""The project's Optuna sweeper for Hydra: ``python train.py -m hparams_search=NAME`` runs, or continues, a study.

Hydra finds it in this namespace package and builds it from ``conf/hydra/sweeper/optuna.yaml``. This is the Hydra
side (the command line, composing and launching the jobs); the study itself is ``gpt.pretrain.sweeps``'s, the
report ``gpt.pretrain.sweep_report``'s. Hydra imports every plugin module at every start: nothing heavy here.
"""

import logging
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """Runs trials of one Optuna study, one at a time, until it holds ``n_trials`` complete or pruned ones.

    Start the same command on several processes or machines (one storage they all reach) and they share the
    study; start it again after a stop and it goes on. Each trial is a train.py job whose folder is named by
    the trial's number, and which reports its val loss at each validation to the trial (for the pruner).
    """

    def __init__(self, study_name, storage, direction, n_trials, heartbeat_interval, sampler, pruner, params):
        self.study_name, self.storage, self.direction = study_name, storage, direction
        self.n_trials, self.heartbeat_interval = n_trials, heartbeat_interval
        self.sampler, self.pruner, self.params = sampler, pruner, params or {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from gpt.core.errors import UserError

        try:
            self._sweep(arguments)
        except UserError as err:
            raise SystemExit(f"error: {err}") from None

    def _sweep(self, arguments: list[str]) -> None:
        import optuna
        from hydra.utils import instantiate

        from gpt.core.errors import UserError
        from gpt.pretrain import sweeps
        from gpt.pretrain.sweep_report import write_report

        if not (isinstance(self.n_trials, int) and self.n_trials >= 1):
            raise UserError(f"hydra.sweeper.n_trials={self.n_trials} must be a whole number >= 1")
        if not (isinstance(self.heartbeat_interval, int) and self.heartbeat_interval >= 1):
            raise UserError(f"hydra.sweeper.heartbeat_interval={self.heartbeat_interval} must be whole seconds >= 1")
        pruner_cfg = OmegaConf.to_container(self.pruner, resolve=True)
        for name, cfg in (("sampler", self.sampler), ("pruner", self.pruner)):
            expected = optuna.samplers.BaseSampler if name == "sampler" else optuna.pruners.BasePruner
            try:
                ok = isinstance(instantiate(cfg), expected)
            except Exception:  # an unknown class, or arguments it does not take
                ok = False
            if not ok:
                raise UserError(
                    f"hydra.sweeper.{name}: {OmegaConf.to_container(cfg)} is not an Optuna {name} that can be built; "
                    f"choose one with hydra/sweeper/{name}=NAME (the files in conf/hydra/sweeper/{name}/)"
                )

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{key}={value}" for key, value in self.params.items()]
        space, fixed = sweeps.search_space(parser.parse_overrides([*params, *arguments]))
        if not space:
            raise UserError("nothing to search: hydra.sweeper.params is empty and no key=a,b on the command line")
        sweeps.check_space(space, self._compose(fixed))

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = sweeps.open_study(self.study_name, self.storage, self.direction, self.heartbeat_interval, space, fixed)
        study.sampler = instantiate(self.sampler)  # replaced, seeded, for each trial (gpt.pretrain.sweeps.optimize)
        log.info(
            f"study {self.study_name} ({self.storage}): {len(study.trials)} trial(s) so far, {self.n_trials} asked; "
            f"searching {', '.join(space)}"
        )

        def run(trial: optuna.Trial, params: dict) -> float:
            overrides = [*fixed, *(f"{key}={value}" for key, value in params.items())]
            # The trial's id in the storage (Optuna keeps it private; its own integrations read it the same way).
            ref = sweeps.TrialRef(self.storage, self.study_name, trial._trial_id, trial.number, pruner_cfg)
            try:
                with sweeps.running(ref):
                    (job,) = self.launcher.launch([overrides], initial_job_idx=trial.number)
            except SystemExit:  # the job's one-line error (a UserError): every trial would stop the same way
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            value = job.return_value  # raises the job's error, if it failed
            (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]  # as the job left it
            if sweeps.PRUNED_AT in frozen.user_attrs:
                raise optuna.TrialPruned(f"Its run stopped at step {frozen.user_attrs[sweeps.PRUNED_AT]}.")
            return value

        sweeps.optimize(study, self.n_trials, self.sampler, space, run, poll_seconds=min(self.heartbeat_interval, 10))
        write_report(study, sweep_dir, self._compose)

    def _compose(self, overrides: list[str]) -> DictConfig:
        """The job config of train.py for ``overrides`` (Hydra's node included), as a job would get it."""
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
