"""Talk to a fine-tuned model: python chat.py [ckpt=PATH] ... then one question per line (see README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.core.job import run_job
from gpt.sampling import chat


@hydra.main(version_base="1.3", config_path="conf", config_name="chat")
def main(cfg: DictConfig) -> None:
    run_job(chat, cfg)


if __name__ == "__main__":
    main()
