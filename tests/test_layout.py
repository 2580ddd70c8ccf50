"""The layers of gpt/: an arrow only points down. core stands on nothing else of gpt/, pre-training on core,
post-training on core and never on pre-training; the job files beside them (sampling.py, exporting.py) are
imported by their entry points alone."""

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

# What each layer may import of gpt/.
ALLOWED = {
    "core": ("gpt.core",),
    "pretrain": ("gpt.core", "gpt.pretrain"),
    "posttrain": ("gpt.core", "gpt.posttrain"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module the file imports, wherever in it (inside a function too), named in full: ``from gpt import
    pretrain`` and ``from . import data`` count as importing ``gpt.pretrain`` and the package's ``data``."""
    package = path.relative_to(ROOT).parent.parts  # gpt/core/model.py: ("gpt", "core")
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            modules.add(module)
            modules.update(f"{module}.{alias.name}" for alias in node.names)
    return modules


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("layer", ALLOWED)
def test_each_layer_imports_nothing_of_gpt_above_or_beside_it(layer):
    imports = {
        path.relative_to(ROOT).as_posix(): imported_modules(path) for path in (ROOT / "gpt" / layer).rglob("*.py")
    }
    assert any(within(module, "gpt.core") for modules in imports.values() for module in modules)  # it does import
    wrong = sorted(
        f"{path} imports {module}"
        for path, modules in imports.items()
        for module in modules
        if within(module, "gpt") and not any(within(module, allowed) for allowed in ALLOWED[layer])
    )
    assert wrong == []
