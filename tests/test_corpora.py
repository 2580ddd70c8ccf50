"""Corpora beyond Tiny Shakespeare, end to end: a test split evaluated once at the end of a run and by test.py,
bits per character beside the loss, byte-level models."""

import math
import re

import pytest
import yaml

from gpt.core.checkpoint import read_checkpoint
from gpt.core.tokenizer import BYTE_VOCAB

from .conftest import TINY_RUN, csv_metric, make_corpus, run_script, train

RUN = [*TINY_RUN, "trainer.max_steps=10", "trainer.val_check_interval=5"]


@pytest.fixture(scope="module")
def tested_run(tmp_path_factory, corpus_path):
    """A run on a corpus with a test split: its last 2,000 characters."""
    run_dir = tmp_path_factory.mktemp("tested")
    test_start = len(corpus_path.read_text()) - 2000
    train(run_dir, corpus_path, *RUN, f"data.test_start={test_start}")
    return run_dir


def test_a_run_with_a_test_split_reports_its_test_bpc_once_at_the_end(tested_run):
    result = yaml.safe_load((tested_run / "result.yaml").read_text())
    assert result["test_bpc"] == pytest.approx(result["test_loss"] / math.log(2))
    assert result["best_val_bpc"] == pytest.approx(result["best_val_loss"] / math.log(2))
    assert csv_metric(tested_run, "test/loss") == [pytest.approx(result["test_loss"])]  # evaluated once
    for val, bpc in zip(csv_metric(tested_run, "val/loss"), csv_metric(tested_run, "val/bpc"), strict=True):
        assert bpc == pytest.approx(val / math.log(2))


def test_test_py_evaluates_any_checkpoint_on_its_runs_test_split(tested_run, corpus_path, tmp_path):
    result = yaml.safe_load((tested_run / "result.yaml").read_text())
    out = run_script("test.py", f"ckpt={tested_run / 'checkpoints' / 'best.ckpt'}", "device=cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"test loss {result['test_loss']:.4f}, {result['test_bpc']:.4f} bits per character" in out.stdout
    assert f"({1999 // 16 * 16:,} tokens of {corpus_path})" in out.stdout
    moved = tmp_path / "moved.txt"
    moved.write_text(make_corpus(2100, seed=1) + "~")  # another text: another vocabulary
    out = run_script("test.py", f"ckpt={tested_run / 'checkpoints' / 'best.ckpt'}", f"data_path={moved}", cwd=tmp_path)
    assert out.returncode == 1 and "gives another vocabulary than" in out.stderr and "Traceback" not in out.stderr
    out = run_script(
        "test.py", f"ckpt={tested_run / 'checkpoints' / 'best.ckpt'}", "data_path=missing.txt", cwd=tmp_path
    )
    assert out.returncode == 1 and "missing.txt does not exist: give data_path= the corpus" in out.stderr


def test_test_py_on_a_run_without_a_test_split_says_how_to_hold_one_out(corpus_path, tmp_path):
    train(tmp_path / "run", corpus_path, *RUN)
    out = run_script("test.py", f"ckpt={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}", cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.strip().endswith("was trained without a test split: train with "
                                                               "data.test_start=<token> to hold one out")  # fmt: skip


def test_a_byte_level_model_trains_on_any_file_and_samples_text(tmp_path):
    corpus = tmp_path / "unicode.txt"
    corpus.write_text(make_corpus(400).replace("o", "ö").replace("e", "東"), encoding="utf-8")
    console = train(
        tmp_path / "run", corpus, *RUN, "data.tokenizer=byte", f"data.test_start={corpus.stat().st_size - 500}"
    )
    assert re.search(r"test loss [\d.]+, [\d.]+ bits per byte\n", console)  # per byte, as it says
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert checkpoint.vocab == BYTE_VOCAB and checkpoint.state_dict["token_embedding.weight"].shape[0] == 256
    out = run_script("sample.py", f"ckpt={checkpoint.path}", "max_new_tokens=300", "prompt=RÖMEO:")
    assert out.returncode == 0 and out.stdout.startswith("RÖMEO:") and len(out.stdout) > 50, out.stderr[-2000:]


@pytest.mark.parametrize(
    "overrides, message",
    [(["data.val_start=100"], "data.val_start=100 fixes the split: set data.train_fraction=null"),
     (["data.train_fraction=null"], "data.train_fraction=None must be in"),
     (["data.train_fraction=null", "data.val_start=500", "data.test_start=400"], "must be after data.val_start=500"),
     (["data.tokenizer=bpe"], "data.tokenizer=bpe is not one of ['char', 'byte']")],
)  # fmt: skip
def test_bad_split_and_tokenizer_settings_are_refused_at_start_up(corpus_path, tmp_path, overrides, message):
    out = run_script("train.py", *RUN, f"data.path={corpus_path}", f"hydra.run.dir={tmp_path}", *overrides)
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr


def test_two_ddp_processes_test_the_same_chunks_as_one(tested_run, corpus_path, tmp_path):
    """Each device tests its share of the split; the mean over the devices is the whole split's (124 chunks, an
    even count: none left out), as test.py measures it on one device from the same checkpoint."""
    test_start = len(corpus_path.read_text()) - 2000
    train(tmp_path / "ddp", corpus_path, *RUN, "trainer.devices=2", f"data.test_start={test_start}")
    result = yaml.safe_load((tmp_path / "ddp" / "result.yaml").read_text())
    out = run_script("test.py", f"ckpt={result['best_checkpoint']}", "device=cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"test loss {result['test_loss']:.4f}," in out.stdout and "(1,984 tokens of" in out.stdout
