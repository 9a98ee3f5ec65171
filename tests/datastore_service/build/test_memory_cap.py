"""The build's memory cap: a low cap spills to the scratch folder and still builds the same store;
a cap too small for any progress is a one-line error and publishes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from datastore_service.build import memory
from datastore_service.build.corpus import corpus_spec
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import EngineSettings, build_store
from datastore_service.errors import CrestError
from datastore_service.sizes import Budget
from datastore_service.store.reader import open_store

# Back-off trees: their pass holds the most at once, so a small cap makes even this corpus spill.
PARAMS = BuildParams(max_context=2, max_depth=4, backoff=2.0, budget=Budget(rows=10**9))
DRAFTS = "SELECT context, context_count, tokens, parents, counts FROM drafts ORDER BY context"


def build(corpus: Path, output: Path, memory_limit: str | None):
    settings = EngineSettings(threads=1, memory_limit=memory_limit)
    return build_store(corpus_spec(str(corpus), glob="*.py"), "smollm2", output, PARAMS, settings, progress=False)


def test_a_low_cap_spills_and_builds_the_same_store(code_corpus: Path, tmp_path: Path, monkeypatch):
    free = build(code_corpus, tmp_path / "free.duckdb", None)
    assert free.spilled == 0 and free.memory_cap == memory.default_memory_cap()
    # The cap minus the process reserve is DuckDB's share; leave it 96 MB, less than this build holds.
    monkeypatch.setattr(memory, "PROCESS_RESERVE", 0)
    monkeypatch.setattr(memory, "RESERVE_SHARE", 0.0)
    monkeypatch.setattr(memory, "MIN_ENGINE_MEMORY", 1)
    capped = build(code_corpus, tmp_path / "capped.duckdb", "96MB")
    assert capped.spilled > 0
    with open_store(free.store) as one, open_store(capped.store) as other:
        assert one.execute(DRAFTS).fetchall() == other.execute(DRAFTS).fetchall()


def test_a_cap_too_small_for_any_progress_is_one_line(code_corpus: Path, tmp_path: Path):
    with pytest.raises(CrestError) as raised:
        build(code_corpus, tmp_path / "tiny.duckdb", "300MB")
    message = str(raised.value)
    assert "memory limit 300.0 MB is too small" in message and "\n" not in message
    assert not (tmp_path / "tiny.duckdb").exists()


def test_running_out_under_the_cap_is_one_line(code_corpus: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(memory, "PROCESS_RESERVE", 0)
    monkeypatch.setattr(memory, "RESERVE_SHARE", 0.0)
    monkeypatch.setattr(memory, "MIN_ENGINE_MEMORY", 1)
    with pytest.raises(CrestError) as raised:
        build(code_corpus, tmp_path / "starved.duckdb", "4MB")
    message = str(raised.value)
    assert message.startswith("the build ran out of memory under --memory-limit 4.0 MB") and "\n" not in message
    assert not (tmp_path / "starved.duckdb").exists()


def test_memory_limit_must_be_a_size():
    with pytest.raises(CrestError, match="takes a size"):
        _ = EngineSettings(memory_limit="100000rows").memory_cap
