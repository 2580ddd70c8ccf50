"""A corpus prepared once into a compact token file, which every later run and every DDP process memory-maps.

A character-level corpus (``tokenizer="char"``) is prepared into
``<cache dir>/<corpus file name>.<path hash>.char.tokens``, one file: a magic line, a line of JSON (the corpus's
fingerprint, the tokenizer, its vocabulary, the tokens' dtype and count), then the tokens, uint8 when the
vocabulary has at most 256 symbols, else uint16. One file rather than tokens beside a metadata file: written to
a temporary name and renamed, a reader sees a whole preparation or none, never the vocabulary of one beside the
tokens of another.

Preparing streams the corpus in chunks of bytes and never holds it whole: a first pass decodes UTF-8
incrementally and collects the vocabulary (``sorted(set(text))``, as the lecture's), a second encodes each chunk
through a lookup table from code points to token ids. A run then costs the same memory whatever the corpus's
size, beyond the pages of the file that its batches touch.

A byte-level corpus (``tokenizer="byte"``) needs no preparation: its bytes are its tokens, so the corpus file
itself is mapped, as uint8.
"""

import codecs
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from gpt.core.corpus import PROJECT_DATA_DIR
from gpt.core.errors import UserError
from gpt.core.tokenizer import BYTE_VOCAB

log = logging.getLogger(__name__)

MAGIC = b"char-gpt tokens 1\n"  # the format's name and version: a file that does not start so is prepared again
CHUNK = 8 << 20  # bytes read at a time: large enough for numpy to dominate, small enough to cost little memory
SAMPLE = 1 << 20  # bytes of each of the three samples of the corpus's fingerprint
PROGRESS_EVERY_S = 5.0
MAX_VOCAB = 1 << 16  # what a uint16 token holds
UNICODE = 0x110000  # the number of code points
TOKENIZERS = ("char", "byte")


def token_file(corpus: Path, cache_dir: str | None = None) -> Path:
    """Where the tokens of ``corpus`` go: ``cache_dir``, or (none given) beside the corpus when its folder is
    writable, else the project's data/ folder. The name carries a hash of the corpus's absolute path, so that two
    corpora of the same name (two input.txt) never take turns overwriting one token file."""
    folder = Path(cache_dir).expanduser() if cache_dir else corpus.parent
    if not cache_dir and not writable(folder):
        folder = PROJECT_DATA_DIR
    where = hashlib.sha256(str(corpus.resolve()).encode()).hexdigest()[:8]
    return folder / f"{corpus.name}.{where}.char.tokens"


def writable(folder: Path) -> bool:
    """Whether to write into ``folder``: the process may, and its mode has a write bit. Root may write anywhere,
    so the mode is what tells a share meant to be read only (a dataset folder without write bits)."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def fingerprint(corpus: Path) -> dict:
    """What identifies a version of the corpus: its size, modification time and a hash of its first, middle and
    last MiB (all of it when it is under 3 MiB). Hashing a 1 GB corpus whole would cost seconds in every process of
    every run; any edit changes the size or the time, and the sampled hash also catches a same-size file copied
    over with its time kept, or an edit within the file system's time resolution."""
    stat = corpus.stat()
    digest = hashlib.sha256()
    with open(corpus, "rb") as f:
        if stat.st_size <= 3 * SAMPLE:
            digest.update(f.read())
        else:
            for start in (0, (stat.st_size - SAMPLE) // 2, stat.st_size - SAMPLE):
                f.seek(start)
                digest.update(f.read(SAMPLE))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sample_sha256": digest.hexdigest()}


def read_header(path: Path) -> tuple[dict, int] | None:
    """The header of a token file and the offset of its tokens; None if ``path`` is no token file of this format."""
    try:
        with open(path, "rb") as f:
            if f.readline() != MAGIC:
                return None
            header = json.loads(f.readline())
            return header, f.tell()
    except (OSError, ValueError):
        return None


def problem(path: Path, corpus: Path) -> str | None:
    """Why the token file ``path`` cannot be used for ``corpus``; None if it can."""
    if not path.is_file():
        return "it does not exist"
    read = read_header(path)
    if read is None:
        return "it is not a token file of this version"
    header, offset = read
    expected = offset + header["tokens"] * np.dtype(header["dtype"]).itemsize
    if path.stat().st_size != expected:
        return f"it is truncated: {path.stat().st_size:,} bytes of {expected:,}"
    if header["corpus"] != fingerprint(corpus):
        return f"{corpus} has changed since it was prepared"
    return None


def prepare(corpus: Path, tokenizer: str = "char", cache_dir: str | None = None) -> Path:
    """The token file of ``corpus``, prepared now unless an earlier run did (and its corpus has not changed); for
    ``tokenizer="byte"``, the corpus itself."""
    if tokenizer == "byte":
        if corpus.stat().st_size == 0:
            raise UserError(f"{corpus} is empty")
        return corpus
    path = token_file(corpus, cache_dir)
    reason = problem(path, corpus)
    if reason is None:
        return path
    if reason != "it does not exist":
        log.info(f"preparing {path} again: {reason}")
    write_tokens(corpus, path)
    return path


def load(corpus: Path, tokenizer: str = "char", cache_dir: str | None = None) -> tuple[torch.Tensor, list[str]]:
    """The prepared tokens of ``corpus``, memory-mapped (a tensor of uint8 or uint16), and the vocabulary.

    Called by every process; ``prepare`` has run before, once. A token file that is missing, truncated or was
    prepared from another version of the corpus is a one-line error.
    """
    # Copy-on-write ("c"): pages are read from the file as batches touch them and shared with every process that
    # maps it; torch wants a writable array (a read-only one warns), and nothing writes to it.
    if tokenizer == "byte":
        return torch.from_numpy(np.memmap(prepare(corpus, "byte"), dtype=np.uint8, mode="c")), BYTE_VOCAB
    path = token_file(corpus, cache_dir)
    reason = problem(path, corpus)
    if reason is not None:
        raise UserError(f"cannot use the prepared tokens {path}: {reason}; run again to prepare them")
    header, offset = read_header(path)
    tokens = np.memmap(path, dtype=header["dtype"], mode="c", offset=offset, shape=(header["tokens"],))
    return torch.from_numpy(tokens), header["vocab"]


class Progress:
    """A log line every few seconds while a long corpus is prepared (a short one prepares silently)."""

    def __init__(self, corpus: Path, size: int):
        self.corpus, self.size, self.started, self.shown = corpus, size, time.perf_counter(), time.perf_counter()

    def update(self, what: str, done: int) -> None:
        now = time.perf_counter()
        if now - self.shown >= PROGRESS_EVERY_S:
            log.info(f"preparing {self.corpus.name}: {what} {done / self.size:.0%} of {self.size / 1e6:,.0f} MB")
            self.shown = now


def chunks(corpus: Path):
    """(offset, bytes) of the corpus, ``CHUNK`` bytes at a time."""
    with open(corpus, "rb") as f:
        offset = 0
        while chunk := f.read(CHUNK):
            yield offset, chunk
            offset += len(chunk)


def code_points(corpus: Path, progress: Progress, what: str):
    """The corpus's characters as arrays of code points (uint32), chunk by chunk, decoded incrementally (a
    character may straddle two chunks); a byte sequence that is not UTF-8 is a one-line error."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    for offset, chunk in chunks(corpus):
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as err:
            at = offset - len(decoder.getstate()[0]) + err.start  # the decoder held back an unfinished character
            raise UserError(f"{corpus} is not UTF-8 text ({err.reason} at byte {at})") from None
        progress.update(what, offset + len(chunk))
        yield np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise UserError(f"{corpus} is not UTF-8 text ({err.reason} at its end)") from None


def vocabulary(corpus: Path, progress: Progress) -> tuple[np.ndarray, int]:
    """The corpus's distinct code points in order (its vocabulary), and its length in characters."""
    seen, length = np.zeros(UNICODE, dtype=bool), 0
    for points in code_points(corpus, progress, "vocabulary"):
        seen[points] = True
        length += len(points)
    vocab = np.flatnonzero(seen)
    if len(vocab) > MAX_VOCAB:
        raise UserError(
            f"{corpus} has {len(vocab):,} distinct characters, more than the {MAX_VOCAB:,} a uint16 token holds"
        )
    return vocab, length


def write_tokens(corpus: Path, path: Path) -> None:
    """Prepare the token file ``path`` of ``corpus``: written whole under a temporary name, then renamed."""
    size = corpus.stat().st_size
    if size == 0:
        raise UserError(f"{corpus} is empty")
    started = time.perf_counter()
    log.info(f"preparing {corpus} ({size / 1e6:,.1f} MB) into {path}")
    progress = Progress(corpus, size)
    key = fingerprint(corpus)  # before reading: a corpus edited while it is read does not match it afterwards
    vocab, length = vocabulary(corpus, progress)
    dtype = np.uint8 if len(vocab) <= 256 else np.uint16
    lookup = np.zeros(UNICODE, dtype=dtype)
    lookup[vocab] = np.arange(len(vocab))
    header = {"corpus": key, "tokenizer": "char", "vocab": [chr(c) for c in vocab], "dtype": np.dtype(dtype).name,
              "tokens": length}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")  # one per process: runs may race here
    try:
        with open(partial, "wb") as out:
            out.write(MAGIC + json.dumps(header).encode() + b"\n")
            for points in code_points(corpus, progress, "tokens"):
                out.write(lookup[points].tobytes())
        partial.replace(path)  # atomic: a failed or interrupted preparation leaves no token file behind
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    log.info(
        f"prepared {length:,} tokens ({len(vocab)} symbols, {np.dtype(dtype).name}) in {seconds:.1f} s "
        f"({size / 1e6 / max(seconds, 1e-9):,.0f} MB/s)"
    )
