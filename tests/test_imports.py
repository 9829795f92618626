"""Imports run one way (docs/architecture.md): every module imports, and none imports a layer above its own.

Layers, bottom to top (a module may import its own layer and the layers below):

    0 shared helpers   errors, fileio, coerce, figures, provenance, console (and the package itself)
    1 merging, interop pure torch: merge methods; checkpoint format conversion
    2 checkpoints      the run directory's store
    2.5 callbacks      Lightning callbacks for any Trainer (merging + checkpoints only)
    3 datamodules      tasks and data
    4 pipeline         model, heads, fine-tuning, the study's context, stages and merge stage
    5 analysis
    6 commands, cli
    7 __main__

Every import statement counts, also those inside functions.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import pactmerge

SRC = Path(pactmerge.__file__).resolve().parent

LAYERS = {
    "": 0, "errors": 0, "fileio": 0, "coerce": 0, "figures": 0, "provenance": 0, "console": 0,
    "merging": 1, "interop": 1,
    "checkpoints": 2, "callbacks": 2.5,
    "datamodules": 3,
    "pipeline": 4,
    "analysis": 5,
    "commands": 6, "cli": 6,
    "__main__": 7,
}
EXCEPTIONS: set[tuple[str, str]] = set()


def _modules() -> list[str]:
    names = ["pactmerge"]
    for info in pkgutil.walk_packages([str(SRC)], prefix="pactmerge."):
        names.append(info.name)
    return sorted(names)


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int:
    part = _part(module)
    if part not in LAYERS:
        raise AssertionError(f"{module}: its package {part!r} has no layer; add it to LAYERS and docs/architecture.md")
    return LAYERS[part]


def _source(module: str) -> Path:
    rel = Path(*module.split(".")[1:])
    pkg = SRC / rel / "__init__.py"
    return pkg if pkg.is_file() else (SRC / rel).with_suffix(".py")


def _imports(module: str, path: Path | None = None) -> list[tuple[int, str]]:
    """(line, imported pactmerge module) of every import statement in ``module``'s source (or ``path``)."""
    path = path or _source(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pactmerge"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] == "pactmerge":
                out.append((node.lineno, target))
    return out


MODULES = _modules()


@pytest.mark.parametrize("module", [m for m in MODULES if m != "pactmerge.__main__"])  # that one runs the CLI
def test_module_imports(module):
    importlib.import_module(module)


def _upward(module: str, path: Path | None = None) -> list[str]:
    own = _layer(module)
    return [f"{module}:{line} (layer {own}) imports {target} (layer {_layer(target)})"
            for line, target in _imports(module, path)
            if (module, _part(target)) not in EXCEPTIONS and _layer(target) > own]


def test_no_import_runs_up():
    upward = [u for module in MODULES for u in _upward(module)]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text("import torch\nfrom pactmerge.merging import merge\n\n\ndef f():\n"
                    "    from ..pipeline import stages\n    import pactmerge.commands.run\n")
    found = _upward("pactmerge.callbacks.fake", fake)
    assert len(found) == 2 and "pactmerge.pipeline" in found[0] and "pactmerge.commands.run" in found[1]
