"""The token file (gpt/pretrain/tokens.py): prepared once by streaming the corpus, memory-mapped after, prepared
again when the corpus changes; and each bad input refused in one line, with nothing half-written left behind."""

import logging

import pytest
import torch

from gpt.core.errors import UserError
from gpt.core.tokenizer import BYTE_VOCAB, CharTokenizer
from gpt.pretrain import tokens

from .conftest import make_corpus

# Multi-byte characters (2, 3 and 4 bytes in UTF-8) that straddle the 7-byte chunks the tests read with.
UNICODE_TEXT = "Ça va? — naïve café, 東京 and 😀!\n" * 40


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(tokens, "CHUNK", 7)


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def prepared_files(folder) -> list[str]:
    """The token files in ``folder``, whole or partial."""
    return sorted(p.name for p in folder.iterdir() if ".tokens" in p.name)


def test_a_corpus_is_prepared_once_beside_it_and_mapped_in_a_compact_dtype(tmp_path, monkeypatch):
    corpus = write(tmp_path / "corpus.txt", make_corpus(200))
    path = tokens.prepare(corpus)
    assert path.parent == tmp_path and path.name.startswith("corpus.txt.") and path.name.endswith(".char.tokens")
    data, vocab = tokens.load(corpus)
    text = corpus.read_text()
    assert vocab == sorted(set(text)) and data.dtype == torch.uint8
    assert data.tolist() == CharTokenizer(vocab).encode(text)
    monkeypatch.setattr(tokens, "write_tokens", lambda *args: pytest.fail("prepared a second time"))
    assert tokens.prepare(corpus) == path  # the second run maps what the first prepared


def test_streamed_preparation_decodes_characters_split_between_chunks(tmp_path, small_chunks):
    corpus = write(tmp_path / "unicode.txt", UNICODE_TEXT)
    tokens.prepare(corpus)
    data, vocab = tokens.load(corpus)
    assert vocab == sorted(set(UNICODE_TEXT))  # code-point order is Python's string order
    assert CharTokenizer(vocab).decode(data.tolist()) == UNICODE_TEXT


def test_a_vocabulary_past_256_symbols_takes_uint16(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 3
    corpus = write(tmp_path / "wide.txt", text)
    tokens.prepare(corpus)
    data, vocab = tokens.load(corpus)
    assert data.dtype == torch.uint16 and len(vocab) == 300
    assert CharTokenizer(vocab).decode(data.tolist()) == text


def test_a_changed_corpus_is_prepared_again(tmp_path, caplog):
    text = make_corpus(200)
    corpus = write(tmp_path / "corpus.txt", text)
    tokens.prepare(corpus)
    edited = text[:1000] + ("X" if text[1000] != "X" else "Y") + text[1001:]  # the same size, one character off
    write(corpus, edited)
    with pytest.raises(UserError, match="has changed since it was prepared; run again"):
        tokens.load(corpus)  # a process that maps without preparing (a DDP rank) refuses it
    with caplog.at_level(logging.INFO, logger=tokens.__name__):
        tokens.prepare(corpus)
    assert "has changed since it was prepared" in caplog.text
    data, vocab = tokens.load(corpus)
    assert CharTokenizer(vocab).decode(data.tolist()) == edited


def test_a_truncated_token_file_is_refused_in_one_line_then_prepared_again(tmp_path):
    corpus = write(tmp_path / "corpus.txt", make_corpus(200))
    path = tokens.prepare(corpus)
    whole = path.read_bytes()
    path.write_bytes(whole[:-10])
    with pytest.raises(UserError, match=r"is truncated: [\d,]+ bytes of [\d,]+; run again"):
        tokens.load(corpus)
    tokens.prepare(corpus)
    assert path.read_bytes() == whole


def test_the_cache_dir_and_the_fallback_for_a_folder_without_write_bits(tmp_path, monkeypatch):
    corpus = write(tmp_path / "share" / "corpus.txt", make_corpus(50))
    assert tokens.prepare(corpus, cache_dir=str(tmp_path / "cache")).parent == tmp_path / "cache"
    monkeypatch.setattr(tokens, "PROJECT_DATA_DIR", tmp_path / "data")
    (tmp_path / "share").chmod(0o555)  # read only, even for root
    try:
        assert tokens.prepare(corpus).parent == tmp_path / "data"
    finally:
        (tmp_path / "share").chmod(0o755)
    other = write(tmp_path / "other" / "corpus.txt", make_corpus(60))  # another corpus of the same name
    assert tokens.token_file(other, str(tmp_path / "cache")) != tokens.token_file(corpus, str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty"),
     ("café ".encode("latin-1") * 10, r"is not UTF-8 text \(invalid continuation byte at byte 3\)"),
     ("abcdefg😀".encode()[:-1], r"is not UTF-8 text \(unexpected end of data at its end\)"),
     ("".join(chr(c) for c in range(0xE000, 0xE000 + 70_000)).encode(), "70,000 distinct characters, more than")],
)  # fmt: skip
def test_bad_corpora_are_refused_in_one_line_and_leave_nothing(tmp_path, small_chunks, content, message):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(content)
    with pytest.raises(UserError, match=message):
        tokens.prepare(corpus)
    assert prepared_files(tmp_path) == []


def test_the_error_names_the_byte_where_utf8_breaks_across_chunks(tmp_path, small_chunks):
    corpus = tmp_path / "bad.txt"
    # 15 good bytes, the 7-byte chunk 7-13 ends inside the last "é" (13-14), then a byte that no UTF-8 starts with
    corpus.write_bytes("aé".encode() * 5 + b"\xff" + b"a" * 20)
    with pytest.raises(UserError, match=r"invalid start byte at byte 15\)"):
        tokens.prepare(corpus)


def test_an_interrupted_preparation_leaves_the_previous_token_file_as_it_was(tmp_path, monkeypatch):
    corpus = write(tmp_path / "corpus.txt", make_corpus(200))
    path = tokens.prepare(corpus)
    before = path.read_bytes()
    write(corpus, make_corpus(300))  # changed: the next run prepares again, and is interrupted while writing
    real = tokens.code_points

    def interrupted(corpus, progress, what):
        for i, points in enumerate(real(corpus, progress, what)):
            if what == "tokens" and i == 1:
                raise KeyboardInterrupt
            yield points

    monkeypatch.setattr(tokens, "CHUNK", 1000)
    monkeypatch.setattr(tokens, "code_points", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tokens.prepare(corpus)
    assert path.read_bytes() == before and prepared_files(tmp_path) == [path.name]


def test_a_long_preparation_reports_its_progress(tmp_path, monkeypatch, caplog):
    corpus = write(tmp_path / "corpus.txt", make_corpus(500))
    monkeypatch.setattr(tokens, "CHUNK", 1000)
    monkeypatch.setattr(tokens, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger=tokens.__name__):
        tokens.prepare(corpus)
    progress = [r.getMessage() for r in caplog.records if "%" in r.getMessage()]
    chunks = -(-corpus.stat().st_size // 1000)
    assert len(progress) == 2 * chunks  # a line per chunk of each pass, at this rate
    assert progress[0].startswith("preparing corpus.txt: vocabulary ") and " tokens 100% of " in progress[-1]


def test_byte_level_tokens_are_the_file_itself_for_any_file(tmp_path):
    content = bytes(range(256)) * 3 + "café".encode()  # not UTF-8 text: any file is a byte-level corpus
    corpus = tmp_path / "any.bin"
    corpus.write_bytes(content)
    assert tokens.prepare(corpus, "byte") == corpus and prepared_files(tmp_path) == []  # nothing to prepare
    data, vocab = tokens.load(corpus, "byte")
    assert data.dtype == torch.uint8 and bytes(data.tolist()) == content and vocab == BYTE_VOCAB
    corpus.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        tokens.load(corpus, "byte")
