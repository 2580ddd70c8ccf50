"""Train a character-level GPT: python train.py [model=tiny|small|...] [key=value ...] (see README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.errors import UserError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from gpt.training import train  # imported here so that --help answers without loading Lightning

    try:
        return train(cfg)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
