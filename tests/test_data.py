import os

import pytest
import torch

from gpt.core.errors import UserError
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
    assert dm.train_data.dtype == torch.long


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
