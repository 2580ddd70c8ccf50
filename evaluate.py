"""Compare pre-trained, SFT, PPO, DPO and GRPO checkpoints on held-out questions: python evaluate.py ... (README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.core.job import run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> str:
    from gpt.posttrain.evaluation import evaluate  # imported here so that --help answers without loading Lightning

    return run_job(evaluate, cfg)


if __name__ == "__main__":
    main()
