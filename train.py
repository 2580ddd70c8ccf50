"""Train a character-level GPT: python train.py [model=tiny|small|...] [key=value ...] (see README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.core.job import run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from gpt.pretrain.training import train  # imported here so that --help answers without loading Lightning

    return run_job(train, cfg)


if __name__ == "__main__":
    main()
