"""The text every job reads: a local file, or one downloaded once into the project's data/ (Tiny Shakespeare by
default; enwik8 and text8 come as zip archives, unpacked once)."""

import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from gpt.core.errors import UserError

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
PROJECT_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def corpus_file(path: str | None = None, url: str = TINY_SHAKESPEARE_URL, data_dir: str | None = None) -> Path:
    """The local file ``path`` given by the user, or (none given) where ``url`` is downloaded to: ``data_dir``,
    by default the project's data/ folder."""
    if path:
        return Path(path).expanduser()
    name = Path(url).name
    return (Path(data_dir) if data_dir else PROJECT_DATA_DIR) / name.removesuffix(".zip")


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
            shutil.copyfileobj(response, out)  # in pieces: enwik8's archive is 36 MB
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"could not download {url} ({err}); with no network, pass a local copy: "
            f"data.path=/path/to/{target.name} (or GPT_DATA_PATH for the default corpus)"
        ) from None
    try:
        if url.endswith(".zip"):
            unzip(partial, url)
        partial.replace(target)  # atomic: a failed download never leaves a half-written corpus behind
    finally:
        partial.unlink(missing_ok=True)
    return target


def unzip(path: Path, url: str) -> None:
    """Replace the zip archive ``path`` (downloaded from ``url``) by the one file it holds, as enwik8.zip and
    text8.zip hold theirs."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise UserError(f"{url} holds {len(members)} files; a corpus archive holds one")
            unpacked = path.with_name(path.name + ".unzipped")
            try:
                with archive.open(members[0]) as member, open(unpacked, "wb") as out:
                    shutil.copyfileobj(member, out)
            except BaseException:
                unpacked.unlink(missing_ok=True)
                raise
    except zipfile.BadZipFile:
        raise UserError(f"{url} is not a zip archive (or its download was cut short): run again") from None
    unpacked.replace(path)


def read_text(path: Path) -> str:
    """The corpus file's text, or a one-line error if it is missing or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"data file {path} does not exist: run prepare_data() first") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
