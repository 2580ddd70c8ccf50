"""Fine-tune a pre-trained GPT: python finetune.py stage=sft|reward|ppo|dpo|grpo init_from=CKPT ... (see README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.core.job import run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="finetune")
def main(cfg: DictConfig) -> str:
    from gpt.posttrain.finetuning import finetune  # imported here so that --help answers without loading Lightning

    return run_job(finetune, cfg)


if __name__ == "__main__":
    main()
