"""Optuna sweeps through train.py as a user runs them (python train.py -m hparams_search=NAME): the study and its
report, pruning (also over DDP), a sweep killed and continued, two workers sharing a PostgreSQL study, the
dashboard, and the one-line refusals; the search space and its checks as functions."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from gpt.core.config import compose_config
from gpt.core.errors import UserError
from gpt.pretrain.sweeps import PRUNED_AT, check_space, search_space

from .conftest import ROOT, TINY_RUN, run_script

# A trial of a few steps on the small test corpus, validated every 2: seconds each.
SHORT = ["trainer.accelerator=cpu", "trainer.max_steps=6", "trainer.val_check_interval=2", "data.eval_chunks=16",
         "callbacks.text_sample.max_new_tokens=20", "hydra.sweeper.n_trials=4"]  # fmt: skip


# The median pruner, judging from the second trial on: which trials it stops is easy to say (the default,
# successive halving, runs in the tests of continuing and of several workers).
MEDIAN = ["hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1"]


def sweep(*overrides, cwd=ROOT, timeout=600):
    result = run_script("train.py", "-m", *overrides, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def load_study(sweep_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def read_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of a Markdown table's rows, header and separator left out."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def last_step(trial_dir: Path) -> int:
    import torch

    return torch.load(trial_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


# --- the search space and its checks, as functions ---


def parse(*overrides):
    return OverridesParser.create().parse_overrides(list(overrides))


def test_the_sweep_syntax_becomes_optuna_distributions_and_the_command_line_wins():
    space, fixed = search_space(parse(
        "optim.lr=tag(log, interval(1e-3, 2e-2))", "model.n_layer=int(interval(2, 6))",
        "model.dropout=interval(0, 0.2)", "data.batch_size=choice(16, 32)", "model.n_embd=choice(64, 128)",
        "model.n_embd=96", "model.dropout=0.1,0.2", "trainer.max_steps=300",  # the command line, after the config's
    ))  # fmt: skip
    assert space == {
        "optim.lr": FloatDistribution(1e-3, 2e-2, log=True),
        "model.n_layer": IntDistribution(2, 6),
        "model.dropout": CategoricalDistribution([0.1, 0.2]),  # a command-line list is searched among its values
        "data.batch_size": CategoricalDistribution([16, 32]),
    }
    assert fixed == ["model.n_embd=96", "trainer.max_steps=300"]  # a plain value fixes a searched key


@pytest.mark.parametrize(
    ("overrides", "space", "message"),
    [
        (["model=tiny"], ["optim.muon_lr"], "optim.muon_lr: read by optim=muon only, and this model trains with"),
        ([], ["optim.lr"], "optim.lr: under optim=muon it sets only the embeddings', head's and gains' rate"),
        (["model=tiny"], ["optim.decay_fraction"], "only optim.schedule=wsd reads it, this recipe's is cosine"),
        ([], ["model.n_embed"], "model.n_embed is not a key of the config"),
    ],
)  # fmt: skip
def test_a_space_the_recipe_ignores_is_refused(overrides, space, message):
    cfg = compose_config("train", overrides)
    with pytest.raises(UserError, match="the search space cannot work") as refusal:
        check_space(dict.fromkeys(space, FloatDistribution(0.1, 0.2)), cfg)
    assert message in str(refusal.value)


def shipped_space(name: str):
    """An hparams_search config's space, and the job config it searches."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={name}"], return_hydra_config=True)
    space, _ = search_space(parse(*(f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items())))
    return space, cfg


def test_the_shipped_spaces_pass_their_checks_and_the_wandb_sweep_covers_the_default_one():
    for name, optim in (("modern", "muon"), ("lecture", "adamw")):
        space, cfg = shipped_space(name)
        assert cfg.optim.name == optim
        check_space(space, cfg)
    space, _ = shipped_space("modern")
    assert {"optim.muon_lr", "optim.lr", "data.batch_size", "optim.decay_fraction", "optim.weight_decay",
            "model.n_embd", "model.n_layer", "model.dropout"} == set(space)  # fmt: skip
    wandb = read_yaml(ROOT / "sweep.yaml")["parameters"]
    assert set(wandb) == set(space)
    for key, dist in space.items():  # the same ranges and scales, in W&B's words
        if isinstance(dist, CategoricalDistribution):
            assert wandb[key] == {"values": list(dist.choices)}, key
        else:
            kind = {FloatDistribution: "uniform", IntDistribution: "int_uniform"}[type(dist)]
            kind = "log_uniform_values" if dist.log else kind
            assert wandb[key] == {"distribution": kind, "min": dist.low, "max": dist.high}, key


# --- a study of the default recipe's space, through train.py ---


@pytest.fixture(scope="module")
def modern_sweep(tmp_path_factory, corpus_path):
    """4 trials of hparams_search=modern, a few steps each; the median pruner from the second trial on."""
    sweep_dir = tmp_path_factory.mktemp("modern")
    console = sweep("hparams_search=modern", *SHORT, f"data.path={corpus_path}", f"hydra.sweep.dir={sweep_dir}",
                    *MEDIAN)  # fmt: skip
    return sweep_dir, console


def test_a_pruned_sweep_of_the_modern_space_stores_every_trial_as_its_run_ended(modern_sweep):
    sweep_dir, _ = modern_sweep
    study = load_study(sweep_dir, "modern")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED, TrialState.COMPLETE]
    for trial in study.trials:
        trial_dir = sweep_dir / str(trial.number)  # each trial's run folder is named by its number
        overrides = read_yaml(trial_dir / ".hydra" / "overrides.yaml")
        assert all(f"{key}={value}" in overrides for key, value in trial.params.items())
        assert len(trial.params) == 8  # the whole modern space: nothing of it is fixed here
        if trial.state == TrialState.COMPLETE:  # reported at every validation; its value is the run's result
            assert sorted(trial.intermediate_values) == [2, 4, 6] and last_step(trial_dir) == 6
            assert trial.value == read_yaml(trial_dir / "result.yaml")["best_val_loss"]
        else:  # stopped at the validation the pruner judged, its checkpoints and result written there
            step = trial.user_attrs[PRUNED_AT]
            assert step == 2 == last_step(trial_dir) and sorted(trial.intermediate_values) == [2]
            assert trial.value == trial.intermediate_values[2] == read_yaml(trial_dir / "result.yaml")["best_val_loss"]


def test_the_sweep_folder_tells_the_study_best_first_and_gives_the_best_config_back(modern_sweep, tmp_path):
    sweep_dir, _ = modern_sweep
    study = load_study(sweep_dir, "modern")
    summary = (sweep_dir / "summary.md").read_text()
    assert summary.startswith("# Study `modern`: 4 trials\n\n3 complete, 1 pruned.")
    trials, importances = summary.split("## Importances")
    rows = table_rows(trials)
    ranked = sorted(study.trials, key=lambda t: (t.state != TrialState.COMPLETE, t.value))
    assert [(int(row[1]), row[2], row[3]) for row in rows] == [
        (t.number, "complete" if t.state == TrialState.COMPLETE else "pruned at step 2", f"{t.value:.4f}")
        for t in ranked
    ]
    shares = {name: float(share) for name, share in table_rows(importances.split("## Plots")[0])}
    assert set(shares) == set(study.best_params) and sum(shares.values()) == pytest.approx(1, abs=0.01)
    for png in ("history.png", "params.png", "importances.png", "intermediate.png"):
        assert (sweep_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    # best.yaml is the best trial's whole config; train.py takes it back, and overrides on top still apply.
    best_config = OmegaConf.load(sweep_dir / "best.yaml")
    trial_config = OmegaConf.load(sweep_dir / str(study.best_trial.number) / ".hydra" / "config.yaml")
    assert best_config == trial_config
    command = f"python train.py --config-dir {sweep_dir} --config-name best"
    assert command in summary
    run_dir = tmp_path / "again"
    result = run_script("train.py", "--config-dir", str(sweep_dir), "--config-name", "best", "trainer.max_steps=2",
                        "trainer.val_check_interval=2", f"hydra.run.dir={run_dir}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rerun = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))  # unresolved
    trained = OmegaConf.to_container(trial_config)
    assert rerun["optim"] == trained["optim"] and rerun["model"] == trained["model"]
    assert rerun["trainer"] == {**trained["trainer"], "max_steps": 2, "val_check_interval": 2}


def test_running_a_finished_study_again_runs_nothing_and_a_raised_n_trials_adds_trials(modern_sweep, corpus_path):
    sweep_dir, _ = modern_sweep
    before = load_study(sweep_dir, "modern").trials
    common = ["hparams_search=modern", *SHORT, f"data.path={corpus_path}", f"hydra.sweep.dir={sweep_dir}", *MEDIAN]
    sweep(*common)
    assert len(load_study(sweep_dir, "modern").trials) == 4
    sweep(*common, "hydra.sweeper.n_trials=5")
    after = load_study(sweep_dir, "modern").trials
    assert len(after) == 5 and [t.params for t in after[:4]] == [t.params for t in before]
    assert after[4].params not in [t.params for t in before]  # the new trial draws from its own seed
    assert "5 trials" in (sweep_dir / "summary.md").read_text().splitlines()[0]


# --- pruning that does not depend on the numbers: a learning rate at which nothing learns ---

# The lecture's AdamW recipe on the tiny test model, everything fixed but optim.lr, drawn between a rate that
# learns and one that cannot (1e-9: the val loss stays where it starts). Trials that learn are identical, and the
# median pruner stops only a trial strictly worse than the median: it prunes exactly the hopeless trials that come
# after one that learned.
HOPELESS = ["hparams_search=lecture", *TINY_RUN, *SHORT, "optim.lr=choice(1e-2, 1e-9)", "optim.min_lr=0",
            "optim.weight_decay=0.1", "model.dropout=0", "hydra/sweeper/sampler=random", *MEDIAN]  # fmt: skip


@pytest.mark.slow
def test_a_trial_running_on_two_ddp_processes_is_pruned_on_both(tmp_path, corpus_path):
    sweep(*HOPELESS, "hydra.sweeper.n_trials=3", "trainer.devices=2", f"data.path={corpus_path}",
          f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    study = load_study(tmp_path, "lecture")
    learns = [t.params["optim.lr"] == 1e-2 for t in study.trials]
    # Pruned: a hopeless trial after one that learned. Complete: the others (the first trial is never pruned).
    expected = [
        TrialState.PRUNED if not learns[n] and any(learns[:n]) else TrialState.COMPLETE for n in range(len(learns))
    ]
    assert [t.state for t in study.trials] == expected and TrialState.PRUNED in expected
    for trial in study.trials:  # both ranks stopped where rank 0 decided: the checkpoint is of that step
        assert last_step(tmp_path / str(trial.number)) == trial.user_attrs.get(PRUNED_AT, 6)


# --- a sweep killed mid-trial and run again ---


def test_a_sweep_killed_mid_trial_goes_on_with_the_same_command(tmp_path, corpus_path):
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=lecture", *TINY_RUN, *SHORT,
               "trainer.max_steps=40", "trainer.val_check_interval=10", "hydra.sweeper.n_trials=3",
               "hydra.sweeper.heartbeat_interval=1", f"data.path={corpus_path}", "hydra.sweep.dir=sweep"]  # fmt: skip
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (tmp_path / "sweep" / "1" / "checkpoints" / "last.ckpt").exists():  # trial 1 validated once
        assert first.poll() is None and time.monotonic() < deadline, "the sweep ended before it could be killed"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # kill -9, the sweep and its job: no handler runs
    first.wait()
    study = load_study(tmp_path / "sweep", "lecture")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]

    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    states = [t.state for t in load_study(tmp_path / "sweep", "lecture").trials]
    # The killed trial is failed (its heartbeat stopped); the study ends with the 3 trials asked.
    assert states[:2] == [TrialState.COMPLETE, TrialState.FAIL] and len(states) == 4
    assert all(state in (TrialState.COMPLETE, TrialState.PRUNED) for state in states[2:])
    assert "| 4 | 1 | fail |" in (tmp_path / "sweep" / "summary.md").read_text()


# --- two workers sharing one study ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of its own on a free local port, for the test's duration (Debian's package)."""
    bin_dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    initdb = shutil.which("initdb") or (str(bin_dirs[-1] / "initdb") if bin_dirs else None)
    if initdb is None:
        pytest.skip("no PostgreSQL server here (.ci/run installs Debian's postgresql)")
    pg_ctl = str(Path(initdb).parent / "pg_ctl")
    data = Path(tempfile.mkdtemp(prefix="postgres-"))  # outside pytest's folders: the postgres user must reach it
    as_postgres = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_postgres, initdb, "-D", data / "db", "-U", "postgres", "--auth=trust"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run([*as_postgres, pg_ctl, "-D", data / "db", "-l", data / "log", "-w", "start",
                    "-o", f"-h 127.0.0.1 -p {port} -k {data}"], check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", data / "db", "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_workers_share_one_study_without_losing_or_repeating_a_trial(tmp_path, corpus_path, database, request):
    """Two tasks of scripts/sweep_slurm.sh, as a SLURM array starts them, on one machine: through an SQLite file
    (workers on one machine) and a PostgreSQL server (workers on several)."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}" if database == "sqlite" else request.getfixturevalue("postgres_url")
    overrides = ["hparams_search=lecture", *TINY_RUN, *SHORT, "hydra.sweeper.n_trials=6", f"data.path={corpus_path}",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    env = {**os.environ, "OPTUNA_STORAGE": storage, "OMP_NUM_THREADS": "1",  # a core each
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    workers = [
        subprocess.Popen(["bash", str(ROOT / "scripts" / "sweep_slurm.sh"), *overrides], text=True, cwd=ROOT,
                         env={**env, "SLURM_ARRAY_TASK_ID": str(task)}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
        for task in range(2)
    ]  # fmt: skip
    logs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    trials = optuna.load_study(study_name="lecture", storage=storage).trials
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 6  # exactly the number asked
    # A trial is failed only if a worker asked for one when the other had just taken the last place: never run.
    assert all(t.user_attrs.get("not_run") for t in trials if t.state == TrialState.FAIL)
    ran = [[int(n) for n in re.findall(r"Trial (\d+) (?:finished|pruned)", log)] for log in logs]
    assert all(ran) and sorted(ran[0] + ran[1]) == sorted(t.number for t in done)  # both worked, none twice
    assert len({tuple(sorted(t.params.items())) for t in done}) == 6  # no draw repeated
    assert sorted(int(p.name) for p in (tmp_path / "sweep").iterdir() if p.name.isdigit()) == [t.number for t in done]


def test_the_slurm_workers_need_a_storage_every_node_reaches():
    env = {**os.environ, "OPTUNA_STORAGE": ""}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "sweep_slurm.sh"), "hparams_search=modern"], env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1 and "set OPTUNA_STORAGE to a database every node reaches" in result.stderr


# --- the dashboard reads the study ---


def test_optuna_dashboard_serves_the_study_on_localhost(modern_sweep):
    sweep_dir, _ = modern_sweep
    port = free_port()
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    server = subprocess.Popen([dashboard, f"sqlite:///{sweep_dir / 'optuna.db'}", "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.5)
        (study,) = studies
        assert study["study_name"] == "modern"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=5) as response:
            trials = json.load(response)["trials"]
        stored = load_study(sweep_dir, "modern").trials
        assert [(t["number"], t["state"]) for t in trials] == [(t.number, t.state.name.capitalize()) for t in stored]
    finally:
        server.terminate()
        server.wait()


# --- bad input: one line, no traceback, before the first trial ---


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hparams_search=modern", "model=tiny"], "error: the search space cannot work: optim.muon_lr"),
        (["hparams_search=lecture", "model=modern_tiny"], "error: the search space cannot work: optim.lr: under"),
        (["hparams_search=modern", "hydra.sweeper.n_trials=0"], "error: hydra.sweeper.n_trials=0 must be"),
        (["hparams_search=modern", "hydra.sweeper.pruner._target_=optuna.pruners.No"], "error: hydra.sweeper.pruner:"),
        (["hparams_search=modern", "hydra.sweeper.sampler._target_=optuna.samplers.No"], "error: hydra.sweeper.sampl"),
        (["hparams_search=modern", "hydra.sweeper.storage=postgresql://postgres@127.0.0.1:1/none"],
         "error: hydra.sweeper.storage=postgresql://postgres@127.0.0.1:1/none cannot be opened"),
    ],
)  # fmt: skip
def test_a_sweep_that_cannot_work_stops_with_one_line_before_any_trial(tmp_path, overrides, message):
    result = run_script("train.py", "-m", *overrides, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert not any(p.name.isdigit() for p in tmp_path.iterdir())  # no trial ran


def test_an_unknown_pruner_name_is_hydras_message_with_the_options_and_no_traceback(tmp_path):
    result = run_script("train.py", "-m", "hparams_search=modern", "hydra/sweeper/pruner=nope",
                        f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Could not find 'hydra/sweeper/pruner/nope'" in result.stderr
    assert all(f"\t{name}\n" in result.stderr for name in ("halving", "hyperband", "median", "none"))


def test_a_stored_study_is_not_continued_with_another_space(modern_sweep, corpus_path):
    sweep_dir, _ = modern_sweep
    result = run_script("train.py", "-m", "hparams_search=modern", *SHORT, f"data.path={corpus_path}", *MEDIAN,
                        f"hydra.sweep.dir={sweep_dir}", "model.dropout=interval(0.0, 0.5)")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    refusal = f"error: study modern in sqlite:///{sweep_dir}/optuna.db searches another space (model.dropout differ)"
    assert result.stderr.strip().splitlines()[-1].startswith(refusal)
