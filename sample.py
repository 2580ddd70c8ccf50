"""Sample text from a checkpoint: python sample.py ckpt=PATH [prompt="ROMEO:"] [num_samples=N] ... (see README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.errors import UserError
from gpt.sampling import sample


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    try:
        sample(cfg)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
