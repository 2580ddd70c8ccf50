from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger


class TextSample(L.Callback):
    """After each validation, sample text from the model so the user watches it learn.

    The sample starts from a newline, as in the lecture, and uses the same random draws every time, so
    successive samples differ only because the model changed. It is printed, appended to
    ``samples.txt`` in the run folder and, with W&B, logged as a table.
    """

    def __init__(self, max_new_tokens: int = 200, seed: int = 0):
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        tokenizer = pl_module.tokenizer
        idx = torch.tensor([tokenizer.prompt_ids()], device=pl_module.device)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        tokens = pl_module.model.generate(idx, self.max_new_tokens, generator=generator)  # still in eval mode
        text = tokenizer.decode(tokens[0].tolist())
        step = trainer.global_step
        pl_module.print(f"\n--- sample at step {step} ---{text}\n---")
        with open(Path(trainer.default_root_dir) / "samples.txt", "a", encoding="utf-8") as f:
            f.write(f"--- step {step} ---{text}\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(key="samples", columns=["step", "text"], data=[[step, text]], step=step)
