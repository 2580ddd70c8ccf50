import os
import pickle

import pytest
import torch

from gpt.core.errors import UserError
from gpt.core.tokenizer import CharTokenizer
from gpt.pretrain.data import CharDataModule, RandomBatches, get_batch


def make_datamodule(path, **kwargs):
    dm = CharDataModule(path=str(path), **{"block_size": 16, "batch_size": 4, "eval_chunks": 10, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_split_is_first_90_percent_train_last_10_percent_val(corpus_path):
    text = corpus_path.read_text()
    dm = make_datamodule(corpus_path)
    n_train = int(0.9 * len(text))
    assert dm.tokenizer.decode(dm.train_data.tolist()) == text[:n_train]
    assert dm.tokenizer.decode(dm.val_data.tolist()) == text[n_train:]
    assert dm.train_data.dtype == torch.uint8  # the token file's dtype; batches are int64


def test_mapped_tokens_give_the_batches_of_the_in_memory_corpus(corpus_path):
    """The token file changes how the corpus is stored, not a batch: the same vocabulary, split point, training
    batches and eval chunks as the whole text encoded into one int64 tensor (the data module before token files)."""
    text = corpus_path.read_text()
    tokenizer = CharTokenizer.from_text(text)
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    n_train = int(0.9 * len(data))
    train, val = data[:n_train], data[n_train:]
    dm = make_datamodule(corpus_path, seed=3)
    assert dm.tokenizer.chars == tokenizer.chars
    in_memory = RandomBatches(train, 16, 4, seed=(3, 0))
    for _, (x, y), (old_x, old_y) in zip(range(20), dm.train_dataloader(), in_memory):
        assert x.dtype == torch.long and torch.equal(x, old_x) and torch.equal(y, old_y)
    generator = torch.Generator().manual_seed(0)
    for split, loader in zip((val, train), dm.val_dataloader()):
        x, y = get_batch(split, 16, 10, generator.manual_seed(0))
        assert torch.equal(loader.dataset.tensors[0], x) and torch.equal(loader.dataset.tensors[1], y)


def test_ddp_spawn_sends_no_corpus_to_its_workers(corpus_path):
    dm = make_datamodule(corpus_path)
    pickled = pickle.dumps(dm)
    assert len(pickled) < corpus_path.stat().st_size / 10  # the settings, not the tokens
    worker = pickle.loads(pickled)
    worker.setup("fit")  # the worker maps the token file itself
    assert torch.equal(worker.train_data, dm.train_data) and worker.tokenizer.chars == dm.tokenizer.chars


def test_train_fraction_is_configurable(corpus_path):
    dm = make_datamodule(corpus_path, train_fraction=0.5)
    assert len(dm.train_data) == int(0.5 * len(corpus_path.read_text()))


def test_batches_are_consecutive_chunks_with_targets_shifted_by_one():
    data = torch.arange(1000)  # token i sits at position i, so a chunk's start tells where it came from
    x, y = get_batch(data, block_size=8, batch_size=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y[:, :-1], x[:, 1:])  # y is x shifted left by one ...
    assert torch.equal(y[:, -1], x[:, -1] + 1)  # ... plus the token that follows the chunk
    assert torch.equal(x, x[:, :1] + torch.arange(8))  # consecutive tokens
    assert int(y.max()) <= 999


def test_chunks_cover_the_whole_range_including_the_last_token():
    data = torch.arange(10)
    x, y = get_batch(data, block_size=4, batch_size=2000, generator=torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == set(range(6))  # every start with 5 tokens after it, no further
    assert int(y.max()) == 9


def test_batch_stream_resumes_exactly_and_differs_by_rank():
    data = torch.arange(500)
    stream = iter(RandomBatches(data, 8, 4, seed=(1, 0)))
    batches = [next(stream) for _ in range(5)]
    resumed = next(iter(RandomBatches(data, 8, 4, seed=(1, 0), start=3)))
    assert torch.equal(resumed[0], batches[3][0])
    second_of_two_ranks = next(iter(RandomBatches(data, 8, 4, seed=(1, 0), rank=1, world_size=2)))
    assert torch.equal(second_of_two_ranks[0], batches[0][0][2:])  # its half of the one-device batch


def test_eval_chunks_are_fixed_whatever_the_training_seed(corpus_path):
    first = make_datamodule(corpus_path, seed=1).val_dataloader()
    second = make_datamodule(corpus_path, seed=2).val_dataloader()
    assert len(first) == 2  # the validation split, and the train split for the train-loss estimate
    for a, b in zip(first, second):
        assert all(torch.equal(ta, tb) for ta, tb in zip(a.dataset.tensors, b.dataset.tensors))
    val_x = first[0].dataset.tensors[0]
    assert val_x.shape == (10, 16)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist.*data.path"):
        CharDataModule(path=str(tmp_path / "nope.txt")).prepare_data()


def test_too_short_corpus_is_a_clear_error(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("To be, or not to be: that is the question.")
    with pytest.raises(UserError, match="block_size"):
        make_datamodule(path, block_size=64)


def test_non_utf8_file_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café ".encode("latin-1") * 100)
    with pytest.raises(UserError, match="not UTF-8"):
        make_datamodule(path)


def test_download_happens_once_into_data_dir(tmp_path, corpus_path):
    dm = CharDataModule(url=corpus_path.as_uri(), data_dir=str(tmp_path / "data"), block_size=16)
    dm.prepare_data()
    target = tmp_path / "data" / "corpus.txt"
    assert target.read_text() == corpus_path.read_text()
    target.write_text(target.read_text() + "local edit")
    dm.prepare_data()  # present: not fetched again
    assert target.read_text().endswith("local edit")


def test_failed_download_says_how_to_use_a_local_file_and_leaves_nothing(tmp_path):
    dm = CharDataModule(url="http://127.0.0.1:9/input.txt", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="data.path=.*GPT_DATA_PATH"):
        dm.prepare_data()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.environ.get("GPT_DATA_PATH"), reason="GPT_DATA_PATH (Tiny Shakespeare) not set")
def test_tiny_shakespeare_has_the_lecture_vocabulary_and_split():
    dm = CharDataModule(path=os.environ["GPT_DATA_PATH"], block_size=8)
    dm.prepare_data()
    dm.setup()
    assert dm.tokenizer.vocab_size == 65
    assert dm.tokenizer.chars[0] == "\n"
    assert (len(dm.train_data), len(dm.val_data)) == (1_003_854, 111_540)


def test_split_boundaries_in_tokens_and_a_test_split_read_whole_in_consecutive_chunks(corpus_path):
    text = corpus_path.read_text()
    n = len(text)
    dm = make_datamodule(corpus_path, train_fraction=None, val_start=n - 3000, test_start=n - 1000, batch_size=8)
    decode = dm.tokenizer.decode
    assert decode(dm.train_data.tolist()) == text[: n - 3000]
    assert decode(dm.val_data.tolist()) == text[n - 3000 : n - 1000]
    assert decode(dm.test_data.tolist()) == text[n - 1000 :]
    inputs, targets = zip(*dm.test_dataloader(), strict=True)
    x, y = torch.cat(inputs), torch.cat(targets)
    assert x.dtype == torch.long and len(x) == 999 // 16  # every whole chunk of 16 targets after the first token
    assert decode(y.flatten().tolist()) == text[n - 999 : n - 999 + len(x) * 16]  # each target once, in order
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_each_device_tests_its_share_of_equally_many_chunks(corpus_path):
    dm = make_datamodule(corpus_path, test_start=len(corpus_path.read_text()) - 1000, batch_size=6)
    shares = []
    for rank in range(3):
        dm._world = lambda rank=rank: (rank, 3, 1)  # as the trainer of a 3-device run tells each rank
        shares.append(torch.cat([x for x, _ in dm.test_dataloader()]))
    assert [len(share) for share in shares] == [20, 20, 20]  # 62 chunks: the last 2 would make the ranks uneven
    whole = torch.stack(shares, dim=1).flatten(0, 1)  # chunk i is on rank i % 3
    assert torch.equal(whole[:, 0], dm.test_data[torch.arange(60) * 16].long())


@pytest.mark.parametrize(
    "splits, message",
    [(lambda n: {"train_fraction": None, "val_start": n}, r"val_start=\d+ and data.test_start=\d+ must satisfy"),
     (lambda n: {"test_start": n + 5}, "must satisfy val_start < test_start <= its length"),
     (lambda n: {"test_start": n - 10}, r"the test split has 10 tokens but a chunk needs block_size \+ 1 = 17")],
)  # fmt: skip
def test_split_boundaries_that_cannot_work_are_refused_in_one_line(corpus_path, splits, message):
    with pytest.raises(UserError, match=message):
        make_datamodule(corpus_path, **splits(len(corpus_path.read_text())))


def test_a_corpus_without_a_test_split_says_how_to_hold_one_out(corpus_path):
    with pytest.raises(UserError, match="no test split: set data.test_start"):
        make_datamodule(corpus_path).test_dataloader()
