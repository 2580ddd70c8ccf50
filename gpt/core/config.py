"""Composing the project's Hydra configs outside an entry point (benchmarks, the ladder, tests)."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[2]  # the project folder: the entry points, conf/, tests/
CONF = ROOT / "conf"


def compose_config(name: str, overrides=(), output_dir: str = ".") -> DictConfig:
    """``conf/<name>.yaml`` with ``overrides``, as ``python <name>.py <overrides>`` would see it; ``output_dir``
    stands in for the run folder Hydra would make."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=[f"output_dir={output_dir}", *overrides])
