"""Compare pre-trained, SFT and PPO checkpoints on held-out questions: python evaluate.py sft=CKPT ... (README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.errors import UserError


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> str:
    from gpt.evaluation import evaluate  # imported here so that --help answers without loading Lightning

    try:
        return evaluate(cfg)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
