"""Composing the project's Hydra configs outside an entry point (benchmarks, the ladder, tests), and checking the
values typed on an entry point's command line against the config's own."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[2]  # the project folder: the entry points, conf/, tests/
CONF = ROOT / "conf"


def compose_config(name: str, overrides=(), output_dir: str = ".") -> DictConfig:
    """``conf/<name>.yaml`` with ``overrides``, as ``python <name>.py <overrides>`` would see it; ``output_dir``
    stands in for the run folder Hydra would make."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=[f"output_dir={output_dir}", *overrides])


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Settings whose number or switch may also be a word, for Lightning: devices are a count, "auto" or the GPUs' ids
# ("0,1"); the checkpoint callback's save_last is true, false or "link".
ALSO_WORDS = ("trainer.devices", "callbacks.model_checkpoint.save_last")


def mistyped_overrides(cfg: DictConfig) -> list[str]:
    """Each ``key=value`` of this Hydra run's command line that is not a number where the config has one, or not
    true or false where it has a switch, one line each naming the key: Hydra takes any value, and the job would
    fail on it deep inside (``data.batch_size=abc``). The config's own value is the one the run would have had
    without the override, the command line's group choices (``model=tiny``) kept."""
    hydra = HydraConfig.get()
    overrides = OverridesParser.create().parse_overrides(list(hydra.overrides.task))
    chosen = [o.input_line for o in overrides if o.key_or_group in hydra.runtime.choices]
    defaults = compose(hydra.job.config_name, overrides=chosen)
    problems = []
    for override in overrides:
        key = override.key_or_group
        if key in hydra.runtime.choices or key in ALSO_WORDS or override.is_delete() or override.value() is None:
            continue  # a group choice; a word-or-number setting; a key removed; null, which each setting's check knows
        default = OmegaConf.select(defaults, key, default=None, throw_on_resolution_failure=False)
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if isinstance(default, bool) and not isinstance(value, bool):
            problems.append(f"{key}={value!r} must be true or false")
        elif is_number(default) and not is_number(value):
            problems.append(f"{key}={value!r} must be a number")
    return problems
