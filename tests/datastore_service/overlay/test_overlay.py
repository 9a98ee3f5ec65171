"""The overlay in process: merged answers are valid trees that rank store and overlay counts
together, and its memory stays within its cap however much it observes (oldest counts out)."""

from __future__ import annotations

from dataclasses import replace

import duckdb
import numpy as np
import pytest

from datastore_service.build.params import BuildParams
from datastore_service.lookup.index_loader import load_index
from datastore_service.overlay.overlay import Overlay, OverlaySettings
from datastore_service.sizes import Budget
from tests.datastore_service.store_factory import publish_token_store

VOCAB = 5000
PARAMS = BuildParams(max_context=3, max_depth=4, top_c=8, budget=Budget(rows=10**9))


def store(tmp_path):
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 60, 500).tolist() for _ in range(6)]
    return load_index(publish_token_store(tmp_path / "s.duckdb", documents, VOCAB, PARAMS))


def test_merged_answers_are_trees_ranked_over_both_counts(tmp_path):
    index = store(tmp_path)
    overlay = Overlay(None, index)
    rng = np.random.default_rng(1)
    overlay.observe([rng.integers(0, 60, 300).astype(np.int32) for _ in range(20)])
    overlay.refresh()
    queries = [rng.integers(0, 60, rng.integers(1, 4)).tolist() for _ in range(300)]
    for selection in ("scored", "longest"):
        for max_nodes, max_depth in ((8, 0), (3, 2)):
            batch = index.prepare(queries, max_nodes, max_depth)
            static = index.lookup_batch(batch, selection)
            merged = overlay.lookup(index, batch, static, selection)
            changed = 0
            for i in range(len(queries)):
                tree = merged.tree(i)
                tree.check_integrity()
                assert len(tree) <= max_nodes and (max_depth == 0 or tree.depths().max(initial=0) <= max_depth)
                changed += tree.tokens.tolist() != static.tree(i).tokens.tolist()
            assert changed > 0  # the overlay moved some answers
    # A merged tree's counts are the store's plus the overlay's: for a context both hold, the top
    # node's probability is (S + O) / (N + O_c), between the two sides' own probabilities.
    batch = index.prepare([[q] for q in range(60)], 8, 0)
    static = index.lookup_batch(batch, "longest")
    merged = overlay.lookup(index, batch, static, "longest")
    assert all(0 < p <= 1 for p in merged.probabilities)


def test_memory_stays_within_the_cap(tmp_path):
    index = store(tmp_path)
    cap = 2 * 2**20
    overlay = Overlay(None, index, OverlaySettings(max_bytes=cap))
    rng = np.random.default_rng(2)
    peak, count = 0, overlay._count

    def count_and_measure(delta) -> None:  # the cap holds inside a refresh too, where a scrape can look
        nonlocal peak
        count(delta)
        peak = max(peak, overlay.nbytes)

    overlay._count = count_and_measure
    for _ in range(40):  # each refresh adds about a tenth of the cap
        overlay.observe([rng.integers(0, VOCAB, 200).astype(np.int32) for _ in range(5)])
        overlay.refresh()
        peak = max(peak, overlay.nbytes)
    assert overlay.stats.evictions > 0 and peak <= cap
    batch = index.prepare([[int(t)] for t in rng.integers(0, VOCAB, 100)], 8, 0)
    for tree in overlay.lookup(index, batch, index.lookup_batch(batch), "scored").trees():
        tree.check_integrity()


@pytest.mark.parametrize("backoff", [0.0, 2.0])
def test_what_it_observes_takes_over_a_stored_tree_on_raw_and_back_off_stores(tmp_path, backoff):
    """A back-off store keeps each tree's counts over its own denominator (drafts.context_count, not
    the context's corpus count); the overlay adds its counts to those, so a continuation observed
    often enough leads the merged tree, with probability O / (denominator + O_c)."""
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 60, 500).tolist() for _ in range(6)]
    path = publish_token_store(tmp_path / "s.duckdb", documents, VOCAB, replace(PARAMS, backoff=backoff))
    index = load_index(path)
    context = documents[0][0]
    with duckdb.connect(str(path), read_only=True) as connection:
        (denominator,) = connection.execute(
            "SELECT context_count FROM drafts WHERE context = [$token]::INTEGER[]", {"token": context}
        ).fetchone()
    overlay = Overlay(None, index)
    overlay.observe([np.array([context, 100, 101], np.int32) for _ in range(200)])  # 100, 101: never in the corpus
    overlay.refresh()
    batch = index.prepare([[context]], 8, 0)
    static = index.lookup_batch(batch, "longest")
    assert 100 not in static.tree(0).tokens.tolist()
    tree = overlay.lookup(index, batch, static, "longest").tree(0)
    tree.check_integrity()
    assert tree.tokens[:2].tolist() == [100, 101] and tree.parents[:2].tolist() == [-1, 0]
    assert tree.probabilities[0] == pytest.approx(200 / (denominator + 200), rel=1e-5)
