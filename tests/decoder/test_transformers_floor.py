"""The lowest transformers that pyproject.toml allows runs both decode loops correctly.

The floor is installed (once, cached by version) into its own folder and put first on the path of
a child process, so this checks the version users can actually get, not the one installed here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def transformers_floor() -> str:
    pyproject = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'"transformers>=([0-9.]+)', pyproject)
    assert match, "pyproject.toml states no transformers floor"
    return match.group(1)


def install(version: str) -> Path:
    folder = Path.home() / ".cache" / "crest" / "test-packages" / f"transformers-{version}"
    if not (folder / "transformers").exists():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # what an interrupted install left
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(partial),
             f"transformers=={version}"],
            check=True,
        )  # fmt: skip
        partial.rename(folder)
    return folder


def test_the_lowest_allowed_transformers_decodes_exactly():
    version = transformers_floor()
    site = install(version)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "tests.decoder.floor_check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"transformers {version}" in result.stdout and "identical" in result.stdout
