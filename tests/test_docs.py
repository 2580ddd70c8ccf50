"""What the texts say about the repository holds: every path they name exists, every module or class of the
package that the documents and configs name resolves, every file of the README's Layout exists, every link of a
document leads somewhere, and the README's test command is the one CI runs."""

import importlib
import re

import pytest

from .conftest import ROOT

DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "conf").rglob("*.yaml"))
CODE = sorted(
    str(p.relative_to(ROOT))
    for pattern in ("*.py", "gpt/**/*.py", "hydra_plugins/**/*.py", "tests/*.py", "scripts/*")
    for p in ROOT.glob(pattern)
)
TEXTS = [*DOCS, *CONFIGS, *CODE, "pyproject.toml", ".ci/run", "data/README.md", "sweep.yaml"]

# A path inside the project as the texts write one: a top folder, then a file or a folder. It ends before a
# placeholder (conf/model/<folder>/...: the folder conf/model/), an anchor or a line number.
TOP = ("gpt", "conf", "scripts", "docs", "tests", "hydra_plugins", "data", ".ci")
PATH = re.compile(r"(?<![\w./-])(?:" + "|".join(re.escape(top) for top in TOP) + r")/[\w./-]*")
# A module, class or function of the package, as in `python -m gpt.pretrain.ladder` or a Hydra _target_.
NAME = re.compile(r"(?<![\w./-])gpt(?:\.\w+)+")


def named(pattern, path: str) -> set[str]:
    return {match.rstrip(".") for match in pattern.findall((ROOT / path).read_text(encoding="utf-8"))}


@pytest.mark.parametrize("path", TEXTS)
def test_every_path_a_text_names_exists(path):
    assert [name for name in sorted(named(PATH, path)) if not (ROOT / name).exists()] == []


def resolves(name: str) -> bool:
    """A dotted name of the package: the longest prefix of it that imports as a module, then attributes of it."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[i:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


@pytest.mark.parametrize("path", [*DOCS, *CONFIGS, *(path for path in CODE if path.endswith(".sh"))])
def test_every_gpt_name_a_document_or_config_gives_resolves(path):
    assert [name for name in sorted(named(NAME, path)) if not resolves(name)] == []


def layout() -> list[str]:
    """The paths of the README's Layout: a tree of names, two spaces deeper per folder (``name/``), each followed
    by what it holds (a line that starts in that column continues the one above)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tree = readme.split("## Layout", 1)[1].split("```", 2)[1]
    paths, folders = [], []
    for line in tree.splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent > 2 * len(folders):  # a blank line, or a description's continuation
            continue
        folders = folders[: indent // 2]
        name = line.split()[0]
        paths.append("".join(folders) + name)
        if name.endswith("/"):
            folders.append(name)
    return paths


def test_every_file_and_folder_of_the_readmes_layout_exists():
    assert len(layout()) > 50 and "gpt/core/model.py" in layout()
    assert [path for path in layout() if not (ROOT / path).exists()] == []


def test_every_module_of_the_package_is_in_the_readmes_layout():
    modules = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "gpt").rglob("*.py"))]
    assert [path for path in modules if path not in layout() and not path.endswith("/__init__.py")] == []


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("path", DOCS)
def test_every_link_of_a_document_leads_to_a_file_and_heading_that_exist(path):
    doc = ROOT / path
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", doc.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://")):
            continue
        linked = (doc.parent / target).resolve() if target else doc
        if not linked.exists() or (anchor and anchor not in anchors(linked.read_text(encoding="utf-8"))):
            broken.append(f"{target}#{anchor}" if anchor else target)
    assert broken == []


def test_the_readmes_test_command_is_the_one_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (command,) = re.findall(r"```bash\n(ruff check .*)\n```", readme)
    assert (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1] == command
