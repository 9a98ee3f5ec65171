"""Shared fixtures: an isolated CREST cache, the real SmolLM2 tokenizer, small real corpora."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

import pytest

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# The user's cache, read before `crest_cache` isolates the run's: for slow artefacts keyed by
# content that later runs may share (the thin client's venv), never for stores or tokens.
USER_CACHE = Path(os.environ.get("CREST_CACHE", Path.home() / ".cache" / "crest"))


@pytest.fixture(scope="session", autouse=True)
def crest_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test run gets its own cache (tokenizer conversion, token files, stores)."""
    cache = tmp_path_factory.mktemp("crest-cache")
    previous = os.environ.get("CREST_CACHE")
    os.environ["CREST_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("CREST_CACHE", None)
    else:
        os.environ["CREST_CACHE"] = previous


@pytest.fixture(scope="session")
def user_cache() -> Path:
    return USER_CACHE


@pytest.fixture(scope="session")
def smollm2(crest_cache: Path):
    from datastore_service.build.tokenizer import TargetTokenizer

    return TargetTokenizer.load("smollm2")


@pytest.fixture(scope="session")
def code_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real stdlib modules plus one Latin-1 file (not UTF-8) and one empty file."""
    folder = tmp_path_factory.mktemp("code-corpus")
    for name in ("json", "email"):
        shutil.copytree(STDLIB / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "latin1.py").write_bytes("# caf\xe9\n".encode("latin-1"))
    (folder / "empty.py").write_text("")
    return folder
