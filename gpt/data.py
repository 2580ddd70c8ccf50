"""Tiny Shakespeare (or any UTF-8 text) as a LightningDataModule of random character chunks."""

import itertools
import urllib.error
import urllib.request
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from gpt.errors import UserError
from gpt.tokenizer import CharTokenizer

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
PROJECT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def get_batch(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator):
    """The lecture's get_batch: ``batch_size`` random chunks of ``block_size + 1`` consecutive tokens.

    x is the first ``block_size`` tokens of each chunk and y the last ``block_size``: y[t] is the token
    that follows x[:t+1], so one chunk gives block_size predictions with contexts of 1..block_size.
    """
    offsets = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    chunks = data.unfold(0, block_size + 1, 1)[offsets]  # (batch_size, block_size + 1)
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


class RandomBatches:
    """An endless stream of training batches from ``get_batch``.

    Batch number i is drawn with a generator seeded from (seed, i), so a run resumed at batch i sees
    exactly the batches the uninterrupted run would have seen.
    """

    def __init__(self, data, block_size, batch_size, seed, start=0):
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.seed, self.start = seed, start

    def __iter__(self):
        generator = torch.Generator()
        for i in itertools.count(self.start):
            generator.manual_seed(hash((self.seed, i)) & 0xFFFF_FFFF_FFFF)  # int tuples hash reproducibly
            yield get_batch(self.data, self.block_size, self.batch_size, generator)


class CharDataModule(L.LightningDataModule):
    """Encodes a text file into one tensor of token ids and splits it: the first ``train_fraction`` trains.

    Training batches are random chunks (different on every rank); validation uses ``eval_chunks`` fixed
    chunks drawn with ``eval_seed`` from each split, so val losses of different runs are comparable.
    """

    def __init__(
        self,
        path: str | None = None,
        url: str = TINY_SHAKESPEARE_URL,
        data_dir: str | None = None,
        block_size: int = 64,
        batch_size: int = 12,
        train_fraction: float = 0.9,
        eval_chunks: int = 256,
        eval_seed: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.path = Path(path).expanduser() if path else None
        self.url = url
        self.data_dir = Path(data_dir) if data_dir else PROJECT_DATA_DIR
        self.block_size, self.batch_size = block_size, batch_size
        self.train_fraction = train_fraction
        self.eval_chunks, self.eval_seed, self.seed = eval_chunks, eval_seed, seed
        self.tokenizer: CharTokenizer | None = None

    @property
    def text_path(self) -> Path:
        """The local file given by the user, or where the download goes."""
        return self.path or self.data_dir / Path(self.url).name

    def prepare_data(self):
        if self.path is not None:
            if not self.path.is_file():
                raise UserError(f"data file {self.path} does not exist: fix data.path (or GPT_DATA_PATH)")
            return
        target = self.text_path
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        try:
            with urllib.request.urlopen(self.url, timeout=30) as response, open(partial, "wb") as out:
                out.write(response.read())
        except (urllib.error.URLError, OSError) as err:
            partial.unlink(missing_ok=True)
            raise UserError(
                f"could not download {self.url} ({err}); with no network, pass a local copy: "
                f"data.path=/path/to/input.txt or GPT_DATA_PATH=/path/to/input.txt"
            ) from None
        partial.replace(target)  # atomic: a failed download never leaves a half-written corpus behind

    def setup(self, stage=None):
        if self.tokenizer is not None:  # train.py sets up early to learn the vocabulary; Lightning calls again
            return
        try:
            text = self.text_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"data file {self.text_path} does not exist: run prepare_data() first") from None
        except UnicodeDecodeError as err:
            raise UserError(f"{self.text_path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        self.tokenizer = CharTokenizer.from_text(text)
        data = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        n_train = int(self.train_fraction * len(data))
        self.train_data, self.val_data = data[:n_train], data[n_train:]
        for split, tokens in (("train", self.train_data), ("validation", self.val_data)):
            if len(tokens) <= self.block_size:
                raise UserError(
                    f"{self.text_path}: the {split} split has {len(tokens)} characters but a chunk needs "
                    f"block_size + 1 = {self.block_size + 1}; use a longer text or a smaller model.block_size"
                )

    def train_dataloader(self):
        rank = self.trainer.global_rank if self.trainer else 0
        # On resume, continue the batch sequence where the checkpointed run stopped.
        start = self.trainer.global_step * self.trainer.accumulate_grad_batches if self.trainer else 0
        return RandomBatches(self.train_data, self.block_size, self.batch_size, (self.seed, rank), start)

    def val_dataloader(self):
        """Two fixed sets of chunks: the validation split, and the train split to estimate the train loss."""
        return [self._fixed_chunks(self.val_data), self._fixed_chunks(self.train_data)]

    def _fixed_chunks(self, data):
        generator = torch.Generator().manual_seed(self.eval_seed)
        x, y = get_batch(data, self.block_size, self.eval_chunks, generator)
        return DataLoader(TensorDataset(x, y), batch_size=self.batch_size)
