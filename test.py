"""A checkpoint's bits per character on its corpus's test split: python test.py [ckpt=CKPT] (docs/data.md)."""

import hydra
from omegaconf import DictConfig

from gpt.core.job import run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="test")
def main(cfg: DictConfig) -> dict:
    from gpt.pretrain.testing import test  # imported here so that --help answers without loading Lightning

    return run_job(test, cfg)


if __name__ == "__main__":
    main()
