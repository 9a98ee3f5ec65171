"""Learning then compacting equals building: a served store that observed sequences, once its
snapshots are compacted, is the store a sharded build over the corpus plus those sequences makes
(same counts, same trees), and the server that reloads it answers exactly as that store does."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from datastore_service.build.compaction import compact_store, params_of
from datastore_service.build.corpus import CorpusReport, CorpusSpec, read_documents
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import build_store
from datastore_service.errors import CrestError
from datastore_service.lookup.index_loader import load_index
from datastore_service.overlay.overlay import OverlaySettings
from datastore_service.serve.client import DraftClient
from datastore_service.serve.server import RunningServer, ServerSettings
from datastore_service.sizes import Budget
from tests.conftest import STDLIB

PARAMS = BuildParams(max_context=2, max_depth=4, top_c=8, budget=Budget(rows=10**9))
DRAFTS = "SELECT context, context_count, tokens, parents, counts FROM drafts ORDER BY context"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[CorpusSpec, CorpusSpec]:
    """The store's corpus (json) and the text the server will observe (a few email modules)."""
    base, observed = tmp_path_factory.mktemp("base"), tmp_path_factory.mktemp("observed")
    shutil.copytree(STDLIB / "json", base / "json", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("charset.py", "encoders.py", "errors.py", "iterators.py", "quoprimime.py"):
        shutil.copy(STDLIB / "email" / name, observed / name)
    return (
        CorpusSpec(path=base, format="source", glob="*.py", name="base"),
        CorpusSpec(path=observed, format="source", glob="*.py", name="observed"),
    )


def drafts(store: Path) -> list[tuple]:
    with duckdb.connect(str(store.resolve()), read_only=True) as connection:
        return connection.execute(DRAFTS).fetchall()


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_compacted_store_equals_a_build_over_corpus_and_observed_text(tmp_path, corpora, smollm2):
    base, observed = corpora
    store = tmp_path / "learning.duckdb"
    build_store(base, "smollm2", store, PARAMS, progress=False)
    sequences = smollm2.encode_batch(list(read_documents(observed, CorpusReport())))
    learn = OverlaySettings(refresh_interval=0.05, snapshot_interval=0.2)
    running = RunningServer(store, ServerSettings(port=0, reload_interval=0.05, learn=learn)).start()
    try:
        with DraftClient(running.address, timeout=10) as client:
            half = len(sequences) // 2
            assert client.observe(sequences[:half]) + client.observe(sequences[half:]) == sum(map(len, sequences))
            overlay = running.stores.get("").overlay
            wait_until(lambda: overlay.stats.counted_tokens == sum(map(len, sequences)))
            before = client.info().store_version
            wait_until(lambda: overlay.stats.snapshots >= 1 and not overlay._unsnapshotted)
            summary = compact_store(store, base, "smollm2", progress=False)
            assert summary.observed_tokens == sum(map(len, sequences))

            reference = tmp_path / "rebuilt.duckdb"
            build_store(base, "smollm2", reference, PARAMS, progress=False, shards=(observed,))
            assert drafts(store) == drafts(reference)  # same contexts, counts and trees, row by row

            wait_until(lambda: client.info().store_version != before)
            wait_until(lambda: overlay.index is running.holder.index)
            assert len(overlay.trees.view.keys) == 0  # the overlay dropped what the new version holds
            rebuilt = load_index(reference)
            rng = np.random.default_rng(3)
            flat = np.concatenate(sequences)
            starts = rng.integers(0, len(flat) - 2, 200)
            queries = [flat[s : s + rng.integers(1, 3)].tolist() for s in starts]
            for selection in ("scored", "longest"):
                served = client.lookup(queries, max_nodes=6, selection=selection)
                expected = rebuilt.lookup(queries, max_nodes=6, selection=selection).trees()
                for got, want in zip(served, expected):
                    assert got.tokens.tolist() == want.tokens.tolist()
                    assert got.parents.tolist() == want.parents.tolist()
                    assert np.allclose(got.probabilities, want.probabilities)
    finally:
        running.stop(grace=1)
    with pytest.raises(CrestError, match="nothing to compact"):
        compact_store(store, base, "smollm2", progress=False)


def test_a_store_from_before_back_off_trees_is_compacted_with_raw_trees():
    recorded = {**PARAMS.as_dict(), "overlay": {}}
    assert params_of(recorded) == PARAMS
    del recorded["backoff"]  # what stores built before back-off trees record
    assert params_of(recorded).backoff == 0.0
