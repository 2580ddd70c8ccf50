"""Export a checkpoint's model to share: python export.py ckpt=PATH out=DIR (see README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.core.job import run_job
from gpt.exporting import export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> str:
    return run_job(export, cfg)


if __name__ == "__main__":
    main()
