"""Cache pruning removes token and count files no build used for a while, and nothing a build uses."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from crest_cli.main import main
from datastore_service.build.caches import prune_caches
from datastore_service.build.corpus import corpus_spec
from datastore_service.build.token_table import tokenize_corpus

DAY = 86_400


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of its own: pruning must not touch the files other tests share."""
    monkeypatch.setenv("CREST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def aged(path: Path, days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(b"x" * 100)
    then = time.time() - days * DAY
    os.utime(path, (then, then))
    return path


def test_prune_removes_unused_files_and_orphans_only(own_cache: Path, capsys):
    exited = subprocess.Popen(["true"])
    exited.wait()
    old_tokens = aged(own_cache / "tokens" / "old-abc.parquet", 40)
    old_counts = aged(own_cache / "counts" / "old-abc-levels4.parquet", 40)
    orphan = aged(own_cache / "tokens" / f"x-abc.partial-{exited.pid}", 0)
    writing = aged(own_cache / "counts" / f"y-abc.partial-{os.getpid()}", 40)  # a live build's scratch
    recent = aged(own_cache / "tokens" / "recent-abc.parquet", 2)
    model = aged(own_cache / "models" / "m" / "model.safetensors", 400)  # never pruned

    assert {f.path for f in prune_caches(30, dry_run=True)} == {old_tokens, old_counts, orphan}
    assert old_tokens.exists()
    assert main(["cache", "prune", "--unused-days", "30"]) == 0
    assert "removed 3 file(s)" in capsys.readouterr().out
    assert [p.exists() for p in (old_tokens, old_counts, orphan, writing, recent, model)] == [0, 0, 0, 1, 1, 1]
    assert main(["cache"]) == 0
    listing = capsys.readouterr().out
    assert "tokens" in listing and "models" in listing and "prunable" in listing


def test_a_cache_hit_marks_the_token_file_used(own_cache: Path, code_corpus: Path, smollm2):
    corpus = corpus_spec(str(code_corpus / "json"))
    first = tokenize_corpus(corpus, smollm2, progress=False)
    written = first.parquet.stat().st_mtime
    aged(first.parquet, 40)
    again = tokenize_corpus(corpus, smollm2, progress=False)
    assert again.from_cache and again.parquet == first.parquet
    assert prune_caches(30) == []  # used just now
    assert first.parquet.stat().st_mtime < written  # the hit moved the access time only
