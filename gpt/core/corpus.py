"""The text every job reads: a local UTF-8 file, or Tiny Shakespeare downloaded once into the project's data/."""

import os
import urllib.error
import urllib.request
from pathlib import Path

from gpt.core.errors import UserError

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
PROJECT_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def corpus_file(path: str | None = None, url: str = TINY_SHAKESPEARE_URL, data_dir: str | None = None) -> Path:
    """The local file ``path`` given by the user, or (none given) where ``url`` is downloaded to: ``data_dir``,
    by default the project's data/ folder."""
    if path:
        return Path(path).expanduser()
    return (Path(data_dir) if data_dir else PROJECT_DATA_DIR) / Path(url).name


def fetch_corpus(path: str | None = None, url: str = TINY_SHAKESPEARE_URL, data_dir: str | None = None) -> Path:
    """The corpus file (``corpus_file``), there to be read: a local ``path`` must exist, and without one ``url`` is
    downloaded unless an earlier run did; a missing file or a failed download is a one-line error."""
    target = corpus_file(path, url, data_dir)
    if path:
        if not target.is_file():
            raise UserError(f"data file {target} does not exist: fix data.path (or GPT_DATA_PATH)")
        return target
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")  # one per process: ranks may race here
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            out.write(response.read())
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"could not download {url} ({err}); with no network, pass a local copy: "
            f"data.path=/path/to/input.txt or GPT_DATA_PATH=/path/to/input.txt"
        ) from None
    partial.replace(target)  # atomic: a failed download never leaves a half-written corpus behind
    return target


def read_text(path: Path) -> str:
    """The corpus file's text, or a one-line error if it is missing or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"data file {path} does not exist: run prepare_data() first") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
