"""The job behind test.py: a pre-trained checkpoint's loss and bits per character on its corpus's test split."""

from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from gpt.core.checkpoint import read_checkpoint
from gpt.core.device import pick_device
from gpt.core.errors import UserError
from gpt.core.runs import latest_or_refuse
from gpt.pretrain.data import CharDataModule
from gpt.pretrain.lightning_module import GPTModule


def test(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt`` (the newest best.ckpt under outputs/ if not given) on the test split of the corpus it
    was trained on, with the data settings its run recorded (``data_path``: the corpus, if it has moved since);
    returns {"test_loss", "test_bpc"}, as train.py writes them to result.yaml."""
    path = cfg.ckpt or latest_or_refuse(("pretrained",), "test.py ckpt=")
    checkpoint = read_checkpoint(path).require(("pretrained",), "test.py ckpt=")
    data = dict((checkpoint.raw.get("config") or {}).get("data") or {})
    if not data:
        raise UserError(f"{checkpoint.path} does not record the data it was trained on; it predates test splits")
    data.pop("_target_", None)
    if data.get("test_start") is None:
        raise UserError(
            f"{checkpoint.path} was trained without a test split: train with data.test_start=<token> to hold one out"
        )
    data["path"] = cfg.data_path or data.get("path")
    if data["path"] and not Path(data["path"]).expanduser().is_file():
        raise UserError(f"{data['path']} does not exist: give data_path= the corpus {checkpoint.path} was trained on")
    datamodule = CharDataModule(**data)
    datamodule.prepare_data()
    datamodule.setup("test")
    if datamodule.tokenizer.chars != checkpoint.vocab:
        raise UserError(
            f"{datamodule.text_path} gives another vocabulary than {checkpoint.path} was trained with: "
            "give data_path= the corpus it was trained on"
        )
    module = GPTModule(checkpoint.model_config, checkpoint.raw["hyper_parameters"]["optim"], checkpoint.vocab)
    module.model.load_state_dict(checkpoint.state_dict)
    accelerator = "gpu" if pick_device(cfg.device).startswith("cuda") else "cpu"
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    [tested] = trainer.test(module, datamodule=datamodule, verbose=False)
    result = {"test_loss": tested["test/loss"], "test_bpc": tested["test/bpc"]}
    tokens = len(datamodule.test_dataloader().dataset) * datamodule.block_size
    print(
        f"{Path(checkpoint.path)}: test loss {result['test_loss']:.4f}, {result['test_bpc']:.4f} bits per "
        f"{datamodule.unit} ({tokens:,} tokens of {datamodule.text_path})"
    )
    return result
