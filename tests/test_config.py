from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gpt.core.checkpoint import Checkpoint
from gpt.core.config import compose_config
from gpt.core.errors import UserError
from gpt.core.module import MUON_UNDER_FSDP
from gpt.core.trainer import instantiate_trainer
from gpt.pretrain.lightning_module import GPTModule
from gpt.pretrain.training import check_config, fit_to_run_length, keep_schedule, resolve_speed_settings

from .conftest import ROOT, run_script

CONF = ROOT / "conf"
OPTIONS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in
           ("model", "trainer", "logger", "callbacks", "data", "optim")}  # fmt: skip
EVERY_MODEL = sorted(str(p.relative_to(CONF / "model").with_suffix("")) for p in (CONF / "model").rglob("*.yaml"))


def compose_train(*overrides, output_dir="/tmp/unused"):
    return compose_config("train", overrides, output_dir=output_dir)


@pytest.mark.parametrize("model", OPTIONS["model"])
def test_every_model_config_composes_checks_and_builds(model):
    cfg = compose_train(f"model={model}")
    check_config(cfg)
    assert cfg.data.block_size == cfg.model.block_size
    assert cfg.optim.decay_steps == cfg.trainer.max_steps
    config = OmegaConf.to_container(cfg, resolve=True)
    with torch.device("meta"):  # the large models are built without allocating their weights
        module = GPTModule(config["model"], config["optim"], vocab=[chr(i) for i in range(65)])
    n_params = module.model.num_parameters()
    expected = {"bigram": (65 * 65,) * 2, "tiny": (0.7e6, 0.9e6), "modern_tiny": (0.7e6, 0.9e6),
                "speedrun": (0.7e6, 0.9e6), "small": (10.6e6, 10.9e6), "modern_small": (10.6e6, 10.9e6),
                "medium": (80e6, 90e6), "large": (290e6, 320e6)}[model]  # fmt: skip
    assert expected[0] <= n_params <= expected[1]


@pytest.mark.parametrize("model", OPTIONS["model"])
def test_every_shipped_model_config_states_its_whole_recipe_in_its_own_file(model):
    """No shipped model builds on another model config (the ladders' rungs, conf/model/*/, are experiment records
    that each add one change to the previous rung): its file alone is its recipe."""
    defaults = OmegaConf.load(CONF / "model" / f"{model}.yaml").get("defaults", [])
    named = [entry if isinstance(entry, str) else next(iter(entry)) for entry in defaults]
    assert [name for name in named if "model" in name] == []


@pytest.mark.parametrize("trainer", OPTIONS["trainer"])
def test_every_trainer_config_instantiates(trainer, tmp_path):
    adamw = ["optim=adamw"] if trainer == "fsdp" else []  # the default's Muon refuses FSDP (test below)
    cfg = compose_train(f"trainer={trainer}", *adamw, output_dir=str(tmp_path))
    check_config(cfg)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    resolve_speed_settings(cfg)
    gpu = cfg.trainer.accelerator != "cpu" and torch.cuda.is_available()
    assert cfg.trainer.precision == ("bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true")
    assert cfg.compile == cfg.optim.fused == gpu
    assert instantiate(cfg.trainer, logger=False).max_steps == 700  # the default model's


@pytest.mark.parametrize("logger", OPTIONS["logger"])
def test_every_logger_and_callback_config_instantiates(logger, tmp_path):
    cfg = compose_train(f"logger={logger}", output_dir=str(tmp_path))
    loggers = [type(instantiate(c)).__name__ for c in (cfg.logger or {}).values()]
    assert loggers == {"csv": ["CSVLogger"], "wandb": ["CSVLogger", "WandbLogger"], "none": []}[logger]
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    names = ["ModelCheckpoint", "TextSample", "StepProgressBar", "TrainingStats", "WandbRun"]
    assert [type(c).__name__ for c in callbacks] == names
    assert Path(callbacks[0].dirpath) == tmp_path / "checkpoints"


def test_data_path_comes_from_the_environment_unless_given(monkeypatch):
    monkeypatch.setenv("GPT_DATA_PATH", "/somewhere/input.txt")
    assert compose_train().data.path == "/somewhere/input.txt"
    assert compose_train("data.path=/elsewhere.txt").data.path == "/elsewhere.txt"
    monkeypatch.delenv("GPT_DATA_PATH")
    assert compose_train().data.path is None


def test_invalid_config_lists_every_problem_at_once():
    cfg = compose_train("model.n_embd=100", "model.n_head=3", "optim.lr=-1", "data.train_fraction=1.5")
    with pytest.raises(UserError) as error:
        check_config(cfg)
    message = str(error.value)
    for problem in ("model.n_embd=100 must be divisible by model.n_head=3", "optim.lr=-1", "train_fraction"):
        assert problem in message


def refused(cfg) -> str:
    with pytest.raises(UserError) as error:
        check_config(cfg)
    return str(error.value)


def test_a_single_problem_is_one_line():
    assert refused(compose_train("data.eval_chunks=0")) == "invalid config: data.eval_chunks=0 must be >= 1"


# Each value, before, got through start-up: Lightning or torch refused it at the first step or later, in every
# process (a ZeroDivisionError, "Invalid beta parameter", "not enough values to unpack"), or took it and trained
# otherwise (a negative clipping value flips the gradients, ns_steps=0 leaves Muon's update unorthogonalised).
# optim.decay_steps=0 and optim.warmup_steps=-1 were refused already, in a line that named the warmup only.
@pytest.mark.parametrize(
    "override, problem",
    [
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be a whole number >= 1"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0 must be a whole number >= 1"),
        ("trainer.log_every_n_steps=-1", "trainer.log_every_n_steps=-1 must be a whole number >= 1"),
        ("trainer.num_nodes=0", "trainer.num_nodes=0 must be a whole number >= 1"),
        ("trainer.devices=0", "trainer.devices=0 must be >= 1, -1 (every GPU) or auto"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1 must be >= 0 (0 or null: no clipping)"),
    ],
)
def test_trainer_counts_that_would_fail_later_are_refused_at_start_up(override, problem):
    assert problem in refused(compose_train(override))


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (["optim.betas=[1.0,0.99]"], "optim.betas=[1.0, 0.99] must be two numbers in [0, 1)"),
        (["optim.betas=[0.9]"], "optim.betas=[0.9] must be two numbers in [0, 1)"),
        (["optim.decay_steps=0"], "optim.decay_steps=0 must be >= 1"),
        (["optim.warmup_steps=-1"], "optim.warmup_steps=-1 must be >= 0"),
        (["optim=muon", "optim.ns_steps=0"], "optim.ns_steps=0 must be >= 1"),
        (["optim=muon", "optim.muon_weight_decay=-0.1"], "optim.muon_weight_decay=-0.1 must be >= 0"),
        (["optim.lr=abc"], "optim.lr='abc' must be a number"),  # was a TypeError comparing it with 0
        (["optim.min_lr=low"], "optim.min_lr='low' must be a number"),
        (["optim.betas=[0.9,x]"], "optim.betas=[0.9, 'x'] must be two numbers in [0, 1)"),
        (["optim=muon", "optim.muon_momentum=true"], "optim.muon_momentum=True must be a number"),
    ],
)
def test_optimizer_settings_that_would_fail_later_are_refused_at_start_up(overrides, problem):
    assert problem in refused(compose_train(*overrides))


@pytest.mark.parametrize("strategy", ["trainer=fsdp", "trainer.strategy=fsdp"])
def test_muon_under_fsdp_is_refused_at_start_up_not_once_the_processes_run(strategy):
    """The default model's Muon needs whole matrices; the runtime guard in configure_optimizers came after every
    process had started and prepared its data."""
    assert MUON_UNDER_FSDP in refused(compose_train(strategy))
    check_config(compose_train(strategy, "optim=adamw"))


@pytest.mark.parametrize(
    "override, problem",
    [
        ("model.n_embd=0", "model.n_embd=0 must be >= 1"),
        ("model.n_embd=-32", "model.n_embd=-32 must be >= 1"),
        ("model.n_embd=abc", "model.n_embd='abc' must be a whole number >= 1"),
        ("callbacks.text_sample.max_new_tokens=-1", "callbacks.text_sample.max_new_tokens=-1 must be >= 0"),
    ],
)
def test_model_and_callback_sizes_that_would_fail_later_are_refused_at_start_up(override, problem):
    assert problem in refused(compose_train(override))


def test_the_config_check_asks_the_models_own_check():
    """A setting only the model refused, when built, is refused with the rest; and so is a key no model has."""
    message = "invalid config: model.pos='absolute' must be one of ['learned', 'rope']"
    assert refused(compose_train("model.pos=absolute")) == message
    message = "invalid config: model.n_layers is not a setting of arch=gpt: one of ['block_size', 'n_layer', "
    assert refused(compose_train("+model.n_layers=4")).startswith(message)


def test_a_trainer_value_lightning_refuses_is_one_line_naming_it():
    cfg = compose_train("trainer.accelerator=cpu", "trainer.devices=-1")  # -1: every GPU; no meaning on a CPU
    check_config(cfg)
    resolve_speed_settings(cfg)
    with pytest.raises(UserError, match=r"^trainer: Lightning refuses `devices` selected with `CPUAccelerator`"):
        instantiate_trainer(cfg.trainer, logger=False)


def test_validation_must_fall_on_the_last_step():
    with pytest.raises(UserError, match="multiple of trainer.val_check_interval"):
        check_config(compose_train("trainer.max_steps=1000", "trainer.val_check_interval=300"))


@pytest.mark.parametrize(
    "steps, interval, warmup, fitted",
    [(1000, 300, 100, (250, 100)), (20, 250, 100, (20, 2)), (2000, 250, 100, (250, 100)), (7, 5, 0, (1, 0))],
)
def test_a_run_of_any_length_gets_an_interval_and_warmup_that_fit(steps, interval, warmup, fitted):
    cfg = compose_train(
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={interval}", f"optim.warmup_steps={warmup}"
    )
    fit_to_run_length(cfg)
    check_config(cfg)
    assert (cfg.trainer.val_check_interval, cfg.optim.warmup_steps) == fitted


@pytest.mark.parametrize("model", EVERY_MODEL)
def test_a_quick_try_of_every_model_extends_to_its_recipe_on_the_same_schedule(model, tmp_path):
    """`python train.py model=M trainer.max_steps=20`, then its last.ckpt with the recipe's trainer.max_steps: the
    config train.py resumes with (fit_to_run_length, check_config, keep_schedule in train's order) is accepted
    and keeps the quick try's schedule. The warmup fitted to the try (model=tiny: 100 -> 2) was compared with the
    recipe's and the extension refused ("optim.warmup_steps=100 (the checkpoint has 2)")."""
    short = compose_train(f"model={model}", "trainer.max_steps=20")
    fit_to_run_length(short)
    check_config(short)
    saved = OmegaConf.to_container(short.optim, resolve=True)
    checkpoint = Checkpoint(tmp_path / "last.ckpt", "pretrained", {}, [], {}, {"hyper_parameters": {"optim": saved}})
    extended = compose_train(f"model={model}", f"ckpt_path={checkpoint.path}")
    assert extended.trainer.max_steps > 20
    warmup_steps = extended.optim.warmup_steps
    fit_to_run_length(extended)
    check_config(extended)
    keep_schedule(extended, checkpoint, warmup_steps)
    assert OmegaConf.to_container(extended.optim, resolve=True) == saved


def test_help_lists_the_config_groups():
    result = run_script("train.py", "--help")
    assert result.returncode == 0
    assert "model: bigram, large, medium, modern_small, modern_tiny, small, speedrun, tiny" in result.stdout
    assert "logger: csv, none, wandb" in result.stdout


def test_a_value_of_the_wrong_kind_on_the_command_line_is_one_line_naming_it(tmp_path):
    """Hydra takes any value; train.py compared data.batch_size='abc' with 1 and died in a TypeError. A group choice
    (model=tiny) decides what the setting's kind is; an added key (+...) has none to check; trainer.devices may be
    a word."""
    args = ["model=tiny", "data.batch_size=abc", "optim.lr=1e-3", "data.device_batches=maybe", "+trainer.x=y"]
    args += ["trainer.devices=auto"]  # a word Lightning takes where the config has a count
    result = run_script("train.py", *args, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-3:] == [
        "error: invalid config:",
        "  - data.batch_size='abc' must be a number",
        "  - data.device_batches='maybe' must be true or false",
    ]
