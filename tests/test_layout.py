"""The layout as a specification: imports run from higher layers to lower ones only, and the code
is formatted and linted by the project's ruff settings."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module may import its own layer and the layers before it, never one after.
LAYERS = [
    (
        "shared",
        [
            "crest",
            "migrations",
            "datastore_service",
            "datastore_service.draft",
            "datastore_service.errors",
            "datastore_service.paths",
            "datastore_service.sizes",
        ],
    ),
    ("store", ["datastore_service.store"]),
    ("build", ["datastore_service.build"]),
    ("rest", ["datastore_service.rest"]),
    ("lookup", ["datastore_service.lookup"]),
    ("overlay", ["datastore_service.overlay"]),
    ("serve", ["datastore_service.serve"]),
    ("decoder", ["decoder"]),
    ("top", ["crest_cli"]),
]


def layer_of(module: str) -> int | None:
    """Index of the layer owning `module` (the longest matching prefix), None for outside code."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "proto":
        parts = parts[1:]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """Every module a file imports (lazy imports inside functions included), made absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            found.append((node.lineno, base))
    return found


def source_files() -> list[Path]:
    folders = ["datastore_service", "decoder", "crest_cli", "migrations", "proto/crest"]
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def upward_imports(path: Path, module: str) -> list[str]:
    """The imports in `path` (module `module`) that reach a higher layer than its own."""
    own, found = layer_of(module), []
    for line, imported in imported_modules(path, module):
        target = layer_of(imported)
        if own is not None and target is not None and target > own:
            found.append(f"{path.name}:{line}: {LAYERS[own][0]} imports {imported} ({LAYERS[target][0]})")
    return found


def test_no_import_runs_up_a_layer():
    violations = [v for path in source_files() for v in upward_imports(path, module_name(path))]
    assert not violations, "imports that run up a layer:\n" + "\n".join(violations)


def test_the_layer_check_catches_lazy_and_relative_imports(tmp_path):
    module = tmp_path / "fake.py"
    module.write_text("from ..serve.client import DraftClient\n\ndef f():\n    from decoder import speculative\n")
    found = upward_imports(module, "datastore_service.lookup.fake")
    assert {entry.split(":")[1] for entry in found} == {"1", "4"}, found
    assert upward_imports(module, "crest_cli.fake") == []


@pytest.mark.parametrize("command", [["format", "--check", "."], ["check", "."]], ids=["format", "lint"])
def test_ruff_is_clean(command):
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: run scripts/setup (the test extra brings it)")
    result = subprocess.run([ruff, *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
