"""enwik8 and text8: their configs take the literature's splits, and their zip archives are downloaded once and
unpacked (served here from localhost), or refused in one line."""

import http.server
import threading
import zipfile

import pytest

from gpt.core.config import compose_config
from gpt.core.corpus import fetch_corpus
from gpt.core.errors import UserError

from .conftest import make_corpus


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on localhost (as an archive's host would serve it); yields its base URL."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_zip_archive_is_downloaded_once_and_unpacked_into_its_corpus(served, tmp_path):
    folder, url = served
    text = make_corpus(100)
    with zipfile.ZipFile(folder / "text8.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("text8", text)
    corpus = fetch_corpus(None, f"{url}/text8.zip", str(tmp_path / "data"))
    assert corpus == tmp_path / "data" / "text8" and corpus.read_text() == text
    assert sorted(p.name for p in corpus.parent.iterdir()) == ["text8"]  # no archive or partial file left
    (folder / "text8.zip").unlink()
    assert fetch_corpus(None, f"{url}/text8.zip", str(tmp_path / "data")) == corpus  # once: not downloaded again


@pytest.mark.parametrize(
    "archive, message",
    [(b"not a zip", "is not a zip archive (or its download was cut short): run again"),
     ("two", "holds 2 files; a corpus archive holds one")],
)  # fmt: skip
def test_a_bad_archive_is_refused_in_one_line_and_leaves_nothing(served, tmp_path, archive, message):
    folder, url = served
    if archive == "two":
        with zipfile.ZipFile(folder / "enwik8.zip", "w") as zipped:
            zipped.writestr("a", "a")
            zipped.writestr("b", "b")
    else:
        (folder / "enwik8.zip").write_bytes(archive)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fetch_corpus(None, f"{url}/enwik8.zip", str(tmp_path / "data"))
    assert list((tmp_path / "data").iterdir()) == []


def test_without_network_the_error_names_the_local_file_alternative(tmp_path):
    with pytest.raises(UserError, match=r"could not download .*; with no network, pass a local copy: data.path=\S+8"):
        fetch_corpus(None, "http://127.0.0.1:9/enwik8.zip", str(tmp_path))  # port 9: nothing listens


def test_enwik8_and_text8_configs_take_the_literatures_splits():
    for name, tokenizer in (("enwik8", "byte"), ("text8", "char")):
        data = compose_config("train", [f"data={name}"]).data
        assert (data.tokenizer, data.train_fraction, data.val_start, data.test_start) == (
            tokenizer, None, 90_000_000, 95_000_000
        )  # fmt: skip
        assert data.path is None and data.url == f"http://mattmahoney.net/dc/{name}.zip"
