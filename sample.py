"""Sample text from a checkpoint: python sample.py ckpt=PATH [prompt="ROMEO:"] [num_samples=N] ... (see README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.core.job import run_job
from gpt.sampling import sample


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    run_job(sample, cfg)


if __name__ == "__main__":
    main()
