"""Sample text from a checkpoint: python sample.py ckpt=PATH [prompt="ROMEO:"] [num_samples=N] ... (see README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.core.cli import put_verbatim, take_verbatim
from gpt.core.job import run_job
from gpt.sampling import sample

TYPED = {}  # prompt=..., exactly as typed: free text that Hydra's override parser would reject


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    put_verbatim(cfg, TYPED)
    run_job(sample, cfg)


if __name__ == "__main__":
    TYPED.update(take_verbatim(["prompt"]))
    main()
