"""Tiny Shakespeare (or any UTF-8 text) as a LightningDataModule of random character chunks, drawn from the
corpus's token file (gpt.pretrain.tokens): prepared once, memory-mapped by every run."""

import itertools
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from gpt.core.corpus import TINY_SHAKESPEARE_URL, corpus_file, fetch_corpus
from gpt.core.errors import UserError
from gpt.core.tokenizer import ByteTokenizer, CharTokenizer, tokenizer_for
from gpt.pretrain import tokens


def get_batch(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator):
    """The lecture's get_batch: ``batch_size`` random chunks of ``block_size + 1`` consecutive tokens.

    x is the first ``block_size`` tokens of each chunk and y the last ``block_size``: y[t] is the token
    that follows x[:t+1], so one chunk gives block_size predictions with contexts of 1..block_size.
    """
    offsets = torch.randint(len(data) - block_size, (batch_size,), generator=generator, device=data.device)
    return chunks_at(data, block_size, offsets)


def chunks_at(data: torch.Tensor, block_size: int, offsets: torch.Tensor):
    """Inputs and targets (int64) of the chunks of ``block_size + 1`` tokens that start at ``offsets``.

    ``data`` keeps the token file's compact dtype (uint8 or uint16), on the device too: only the chunks cut from
    it become the int64 the embedding takes.
    """
    chunks = data.unfold(0, block_size + 1, 1)[offsets].long()  # (len(offsets), block_size + 1)
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


class ChunksAt(Dataset):
    """The chunks of ``data`` that start at ``offsets``, cut as they are read: a split of any size costs the
    memory of a batch, not an int64 copy of itself."""

    def __init__(self, data: torch.Tensor, block_size: int, offsets: torch.Tensor):
        self.data, self.block_size, self.offsets = data, block_size, offsets

    def __len__(self):
        return len(self.offsets)

    def __getitem__(self, i):
        x, y = chunks_at(self.data, self.block_size, self.offsets[i : i + 1])
        return x[0], y[0]


def micro_batch_size(batch_size: int, world_size: int, accumulation: int) -> int:
    """Chunks per device per forward pass: ``batch_size`` (per optimizer step) split evenly over the devices
    and the gradient accumulation steps, so a config trains the same recipe on any number of devices."""
    micro, rest = divmod(batch_size, world_size * accumulation)
    if rest or not micro:
        raise UserError(
            f"data.batch_size={batch_size} chunks per optimizer step must be a multiple of devices x nodes "
            f"x trainer.accumulate_grad_batches = {world_size} x {accumulation}; change one of them"
        )
    return micro


class RandomBatches:
    """An endless stream of training micro-batches: this device's share of every optimizer step's batch.

    The batch of optimizer step s is ``batch_size`` random chunks drawn with a generator seeded from (seed, s).
    It is cut into world_size x accumulation micro-batches; rank r takes number k * world_size + r at the
    k-th micro-step. So every rank trains on different chunks, one device or N devices (with or without
    accumulation) train on exactly the same batches, and a run resumed at step s sees the batches the
    uninterrupted run would have seen. ``start`` counts micro-batches. The chunks are cut where ``data`` lives:
    with the corpus on the GPU only the offsets cross the bus, without waiting for the GPU. The offsets are
    drawn on the CPU on every device (CUDA's generator draws other numbers from the same seed), so a run
    resumed on another kind of device still sees the same batches.
    """

    def __init__(self, data, block_size, batch_size, seed, start=0, rank=0, world_size=1, accumulation=1):
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.seed, self.start = seed, start
        self.rank, self.world_size, self.accumulation = rank, world_size, accumulation
        self.micro_batch_size = micro_batch_size(batch_size, world_size, accumulation)

    def __iter__(self):
        generator = torch.Generator()
        for i in itertools.count(self.start):
            step, micro_step = divmod(i, self.accumulation)
            generator.manual_seed(hash((self.seed, step)) & 0xFFFF_FFFF_FFFF)  # int tuples hash reproducibly
            offsets = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=generator)
            first = (micro_step * self.world_size + self.rank) * self.micro_batch_size
            offsets = offsets[first : first + self.micro_batch_size]
            if self.data.is_cuda:  # from page-locked memory the copy is queued, and the CPU does not wait
                offsets = offsets.pin_memory().to(self.data.device, non_blocking=True)
            yield chunks_at(self.data, self.block_size, offsets)


class CharDataModule(L.LightningDataModule):
    """Maps a text file's tokens (prepared once into a token file) and splits them: train, validation and an
    optional test split, in that order.

    The split boundaries are in tokens: ``val_start`` (by default the first ``train_fraction`` of the corpus
    trains) and ``test_start`` (by default no test split: validation runs to the end).

    Training batches are random chunks, ``batch_size`` per optimizer step, shared out between the devices
    and accumulation steps. Validation uses ``eval_chunks`` fixed chunks drawn with ``eval_seed`` from each
    split, so val losses of different runs are comparable; each device evaluates its own share of them. The
    test split is read whole, in consecutive chunks (``test_dataloader``), once at the end of a run.
    """

    def __init__(
        self,
        path: str | None = None,
        url: str = TINY_SHAKESPEARE_URL,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        tokenizer: str = "char",
        block_size: int = 64,
        batch_size: int = 12,
        train_fraction: float | None = 0.9,
        val_start: int | None = None,
        test_start: int | None = None,
        eval_chunks: int = 256,
        eval_seed: int = 0,
        seed: int = 0,
        device_batches: bool = True,
    ):
        super().__init__()
        self.path, self.url, self.data_dir = path, url, data_dir  # the corpus: gpt.core.corpus
        self.cache_dir, self.tokenizer_name = cache_dir, tokenizer  # its tokens: gpt.pretrain.tokens
        self.block_size, self.batch_size = block_size, batch_size
        self.train_fraction, self.val_start, self.test_start = train_fraction, val_start, test_start
        self.eval_chunks, self.eval_seed, self.seed = eval_chunks, eval_seed, seed
        self.device_batches = device_batches
        self.tokenizer: CharTokenizer | ByteTokenizer | None = None
        self.test_data = None

    @property
    def unit(self) -> str:
        """What a token is, for a person: the unit of bits per character (bpc) on this corpus."""
        return "byte" if self.tokenizer_name == "byte" else "character"

    @property
    def text_path(self) -> Path:
        """The local file given by the user, or where the download goes."""
        return corpus_file(self.path, self.url, self.data_dir)

    def prepare_data(self):
        """Once per run, before any other process maps the tokens: the download, then the token file."""
        tokens.prepare(fetch_corpus(self.path, self.url, self.data_dir), self.tokenizer_name, self.cache_dir)

    def setup(self, stage=None):
        if self.tokenizer is not None:  # train.py sets up early to learn the vocabulary; Lightning calls again
            return
        data, vocab = tokens.load(self.text_path, self.tokenizer_name, self.cache_dir)
        self.tokenizer = tokenizer_for(vocab)
        n = len(data)
        val_start = int(self.train_fraction * n) if self.val_start is None else self.val_start
        test_start = n if self.test_start is None else self.test_start
        if not val_start < test_start <= n:
            raise UserError(
                f"{self.text_path} has {n:,} tokens: data.val_start={val_start} and data.test_start={test_start} "
                "must satisfy val_start < test_start <= its length; fix the split boundaries"
            )
        self.train_data, self.val_data = data[:val_start], data[val_start:test_start]
        self.test_data = data[test_start:] if self.test_start is not None else None
        splits = {"train": self.train_data, "validation": self.val_data, "test": self.test_data}
        for split, part in splits.items():
            if part is not None and len(part) <= self.block_size:
                raise UserError(
                    f"{self.text_path}: the {split} split has {len(part)} tokens but a chunk needs "
                    f"block_size + 1 = {self.block_size + 1}; use a longer text or a smaller model.block_size"
                )

    def __getstate__(self):
        # ddp_spawn pickles the data module for its workers: each maps the token file again (setup) instead of
        # receiving a copy of the whole corpus through a pipe.
        corpus = dict.fromkeys(("tokenizer", "train_data", "val_data", "test_data"))
        return {**super().__getstate__(), **corpus}

    def _world(self):
        """(rank, number of devices, accumulation steps) of the run this data module serves."""
        if self.trainer is None:
            return 0, 1, 1
        return self.trainer.global_rank, self.trainer.world_size, self.trainer.accumulate_grad_batches

    def train_dataloader(self):
        data, start = self.train_data, 0
        rank, world_size, accumulation = self._world()
        if self.trainer:
            # On resume, continue the batch sequence where the checkpointed run stopped.
            start = self.trainer.global_step * accumulation
            if self.device_batches:  # keep the corpus on the device (in its compact dtype), sample there
                data = data.to(self.trainer.strategy.root_device)
        # All ranks draw from one stream, keyed (seed, 0) as when each rank had its own: one device is unchanged.
        stream = (self.seed, 0)
        return RandomBatches(data, self.block_size, self.batch_size, stream, start, rank, world_size, accumulation)

    def val_dataloader(self):
        """Two fixed sets of chunks: the validation split, and the train split to estimate the train loss.

        Each device takes every world_size-th chunk (``eval_chunks`` is a multiple of world_size), without the
        duplicates Lightning's distributed sampler pads with: the mean over the devices is over exactly the eval set.
        """
        return [self._fixed_chunks(self.val_data), self._fixed_chunks(self.train_data)]

    def _fixed_chunks(self, data):
        rank, world_size, accumulation = self._world()
        generator = torch.Generator().manual_seed(self.eval_seed)
        x, y = get_batch(data, self.block_size, self.eval_chunks, generator)
        batch_size = micro_batch_size(self.batch_size, world_size, accumulation)
        return DataLoader(TensorDataset(x[rank::world_size], y[rank::world_size]), batch_size=batch_size)

    def test_dataloader(self):
        """The test split whole, in consecutive chunks of ``block_size`` targets: every token after the split's
        first is predicted once, but for the last ``< block_size`` (and the last chunks, fewer than the devices,
        so that each device evaluates as many chunks and the mean over the devices is over every chunk)."""
        if self.test_data is None:
            raise UserError("this corpus has no test split: set data.test_start (in tokens) to hold one out")
        rank, world_size, accumulation = self._world()
        count = (len(self.test_data) - 1) // self.block_size // world_size * world_size
        chunks = ChunksAt(self.test_data, self.block_size, torch.arange(rank, count, world_size) * self.block_size)
        return DataLoader(chunks, batch_size=micro_batch_size(self.batch_size, world_size, accumulation))
