"""The REST baseline against a brute-force scan of the documents, and as a store kind."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from crest_cli.server_process import ServerProcess
from datastore_service.draft import DraftTree
from datastore_service.errors import CrestError, StoreError
from datastore_service.lookup.index_loader import load_index
from datastore_service.rest.build import corpus_with_separators, publish_rest_store
from datastore_service.rest.format import open_rest_file, token_dtype
from datastore_service.rest.index import RestIndex, RestParams
from datastore_service.serve.client import DraftClient
from datastore_service.serve.server import RunningServer, ServerSettings
from datastore_service.serve.stores import StoreSet, StoreSpec
from datastore_service.store.publishing import VersionedStore
from tests.datastore_service.store_factory import publish_token_store

IDENTITY = {
    "tokenizer_name": "test",
    "tokenizer_fingerprint": "test-fp",
    "corpus_name": "random",
    "corpus_fingerprint": "random-fp",
}


def random_documents(rng: np.random.Generator, count: int, vocab: int) -> list[list[int]]:
    # A skewed distribution over a small alphabet, so n-grams repeat and tries branch.
    return [(rng.zipf(1.5, int(rng.integers(1, 60))) % vocab).tolist() for _ in range(count)]


def publish(tmp_path: Path, documents: list[list[int]], vocab_size: int, fraction: float = 1.0) -> Path:
    doc_ids = np.repeat(np.arange(len(documents)), [len(d) for d in documents])
    tokens = np.concatenate([np.asarray(d, np.int64) for d in documents])
    summary = publish_rest_store(
        doc_ids, tokens, fraction, tmp_path / "rest.rest", {**IDENTITY, "vocab_size": vocab_size}
    )
    return summary.store


def brute_force_tree(documents: list[list[int]], query: list[int], params: RestParams) -> dict[tuple, float]:
    """Every path of REST's draft for `query`, with its probability, found by scanning every document.

    Occurrences are ordered as a suffix array orders them: by the corpus from that point on, with
    each document end sorting above every token."""
    end = float("inf")
    for n in range(min(params.n_max, len(query)), params.n_min - 1, -1):
        pattern = query[-n:]
        occurrences = []
        for d, doc in enumerate(documents):
            for i in range(len(doc) - n + 1):
                if doc[i : i + n] == pattern:
                    rest = [*doc[i:], end] + [t for later in documents[d + 1 :] for t in (*later, end)]
                    occurrences.append((rest, doc[i + n : i + n + params.m]))
        if occurrences:
            occurrences.sort(key=lambda item: item[0])
            continuations = [c for _, c in occurrences[: params.k]]
            counts = Counter(tuple(c[:depth]) for c in continuations for depth in range(1, len(c) + 1))
            ranked = sorted(counts, key=lambda path: (-counts[path], len(path), path))[: params.c]
            return {path: counts[path] / len(continuations) for path in ranked}
    return {}


def tree_paths(tree: DraftTree) -> dict[tuple, float]:
    tree.check_integrity()
    paths: list[tuple] = []
    for token, parent in zip(tree.tokens.tolist(), tree.parents.tolist()):
        paths.append((paths[parent] if parent >= 0 else ()) + (token,))
    return {path: float(p) for path, p in zip(paths, tree.probabilities)}


@pytest.mark.parametrize(
    "seed, params",
    [
        (0, RestParams()),
        (1, RestParams(n_max=4, n_min=1, k=7, m=5, c=6)),
        (2, RestParams(n_max=3, n_min=2, k=3, m=3, c=64)),
        (3, RestParams(n_max=16, n_min=1, k=5000, m=10, c=3)),
    ],
)
def test_retrieval_equals_brute_force(tmp_path: Path, seed: int, params: RestParams) -> None:
    rng = np.random.default_rng(seed)
    documents = random_documents(rng, 40, vocab=12)
    index = RestIndex.load(publish(tmp_path, documents, vocab_size=12), asdict(params))
    queries = [documents[int(rng.integers(len(documents)))][: int(rng.integers(1, 20))] for _ in range(60)]
    queries += [(rng.zipf(1.5, int(rng.integers(1, 20))) % 12).tolist() for _ in range(60)]
    trees = index.lookup([q[-params.n_max :] for q in queries]).trees()
    for query, tree in zip(queries, trees):
        expected = brute_force_tree(documents, query, params)
        got = tree_paths(tree)
        assert got.keys() == expected.keys(), query
        assert all(abs(got[p] - expected[p]) < 1e-6 for p in got), query


def test_no_match_crosses_a_document_end(tmp_path: Path) -> None:
    index = RestIndex.load(publish(tmp_path, [[1, 2, 3], [4, 5, 6], [2, 3, 7, 8]], vocab_size=10))
    # [3, 4] only occurs across the first document's end: no match, no draft.
    assert len(index.lookup([[3, 4]]).tree(0)) == 0
    # After [2, 3]: the first document ends (nothing to draft), the third goes on with 7, 8.
    assert tree_paths(index.lookup([[2, 3]]).tree(0)) == {(7,): 0.5, (7, 8): 0.5}


def test_large_vocabulary_ids_are_exact(tmp_path: Path) -> None:
    vocab = 262_144
    assert token_dtype(vocab).itemsize == 4
    high = [vocab - 1, 70_000, 65_535, 65_536, vocab - 2]
    index = RestIndex.load(publish(tmp_path, [high, [5, *high]], vocab_size=vocab))
    tree = index.lookup([[vocab - 1, 70_000]]).tree(0)
    assert tree_paths(tree)[(65_535, 65_536, vocab - 2)] == 1.0


def test_query_limits_equal_smaller_rest_parameters(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    documents = random_documents(rng, 40, vocab=8)
    index = load_index(publish(tmp_path, documents, vocab_size=8))
    assert isinstance(index, RestIndex)
    for query in (documents[0][:4], documents[1][:2], documents[2][:6]):
        cut = index.lookup([query], max_nodes=3, max_depth=2).tree(0)
        assert tree_paths(cut) == pytest.approx(brute_force_tree(documents, query, RestParams(c=3, m=2)))
        assert 0 < len(cut) <= 3 and cut.depths().max() <= 2


def test_fraction_keeps_whole_documents(tmp_path: Path) -> None:
    documents = [[i % 7 + 1] * (i + 1) for i in range(30)]
    doc_ids = np.repeat(np.arange(30), [len(d) for d in documents])
    tokens, kept = corpus_with_separators(doc_ids, np.concatenate(documents), 0.25, 255, np.dtype(">u2"))
    assert 0 < kept < 30 and (tokens == 255).sum() == kept
    pieces = np.split(tokens, np.flatnonzero(tokens == 255) + 1)[:-1]
    assert all(list(piece[:-1]) in documents for piece in pieces)
    assert len(tokens) - kept <= 0.25 * sum(map(len, documents))


def test_corrupt_or_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    store = publish(tmp_path, [[1, 2, 3, 4]] * 50, vocab_size=10)
    data = store.resolve().read_bytes()
    truncated = tmp_path / "truncated.rest"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(StoreError, match="truncated"):
        load_index(truncated)
    garbled = tmp_path / "garbled.rest"
    garbled.write_bytes(data[:24] + b"\xff" * 40 + data[64:])
    with pytest.raises(StoreError, match="corrupt REST header"):
        load_index(garbled)


def test_served_over_grpc_like_a_crest_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    documents = random_documents(rng, 40, vocab=300)
    store = publish(tmp_path, documents, vocab_size=300)
    queries = [documents[i][:8] for i in range(10)]
    running = RunningServer(store, ServerSettings(port=0)).start()
    try:
        with DraftClient(running.address) as client:
            info = client.info()
            assert (info.policy, info.max_context, info.max_nodes, info.vocab_size) == ("rest", 16, 64, 300)
            served = client.lookup(queries, max_nodes=5)
        local = RestIndex.load(store).lookup(queries, max_nodes=5).trees()
        assert any(len(tree) for tree in local)
        for remote, expected in zip(served, local):
            assert tree_paths(remote) == pytest.approx(tree_paths(expected))
    finally:
        running.stop(grace=1)


def corrupt_byte(path: Path, section: str, index: int) -> None:
    """Flip one byte of element `index` of a REST file's section, in place."""
    spec = open_rest_file(path).metadata["arrays"][section]
    offset = spec["offset"] + index * np.dtype(spec["dtype"]).itemsize
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("section", ["suffix_array", "tokens"])
def test_a_flipped_byte_inside_an_array_is_a_one_line_error_at_load(tmp_path: Path, section: str) -> None:
    store = publish(tmp_path, random_documents(np.random.default_rng(3), 30, vocab=50), vocab_size=50)
    corrupt_byte(store.resolve(), section, index=17)
    with pytest.raises(StoreError, match=f"its {section} section does not match its checksum"):
        load_index(store)
    result = subprocess.run(
        [sys.executable, "-m", "crest_cli", "serve", str(store), "--port", "0"], capture_output=True, text=True
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("crest: error:"), result.stderr
    assert f"{section} section does not match its checksum" in result.stderr


def test_hot_reload_refuses_a_version_with_a_corrupt_suffix_array(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    documents = random_documents(np.random.default_rng(5), 40, vocab=60)
    store = publish(tmp_path, documents, vocab_size=60)
    good = store.resolve()
    queries = [documents[i][:6] for i in range(8)]
    running = RunningServer(store, ServerSettings(port=0, reload_interval=0.05)).start()
    try:
        with DraftClient(running.address) as client:
            before = client.lookup(queries, max_nodes=5)
            # The damaged version is made aside and published whole, as a bad disk or copy would leave it.
            staged = publish(tmp_path / "staging", documents[:30], vocab_size=60).resolve()
            corrupt_byte(staged, "suffix_array", index=len(open_rest_file(staged).suffix_array) // 2)
            versions = VersionedStore(store, suffix=".rest")
            version = versions.new_version()
            partial = versions.scratch(version, "partial")
            shutil.copyfile(staged, partial)
            bad = versions.publish(partial, version)
            deadline = time.monotonic() + 10
            while not any(bad.name in r.getMessage() and "refusing" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the damaged version was never refused"
                time.sleep(0.05)
            assert "suffix_array section does not match its checksum" in caplog.text
            assert running.holder.index.path == good and client.info().store_version != version
            after = client.lookup(queries, max_nodes=5)
        assert [tree_paths(t) for t in after] == [tree_paths(t) for t in before]
    finally:
        running.stop(grace=1)


def test_lookup_parameters_are_stored_by_the_build_and_overridden_by_a_server(tmp_path: Path) -> None:
    documents = random_documents(np.random.default_rng(11), 40, vocab=40)
    doc_ids = np.repeat(np.arange(len(documents)), [len(d) for d in documents])
    stored = RestParams(n_max=6, n_min=1, k=40, m=4, c=9)
    store = publish_rest_store(
        doc_ids, np.concatenate(documents), 1.0, tmp_path / "p.rest", {**IDENTITY, "vocab_size": 40}, lookup=stored
    ).store
    assert load_index(store).params == stored
    assert load_index(store, {"c": 3, "k": 7}).params == RestParams(n_max=6, n_min=1, k=7, m=4, c=3)
    with pytest.raises(CrestError, match="n_min <= n_max"):
        load_index(store, {"n_min": 8})
    with ServerProcess(store, ["--rest-c", "3", "--rest-m", "2"]) as server, DraftClient(server.address) as client:
        info = client.info()
        assert (info.max_context, info.max_depth, info.max_nodes) == (6, 2, 3)
        trees = client.lookup([d[:5] for d in documents[:10]])
    assert any(len(t) for t in trees) and all(len(t) <= 3 and t.depths().max(initial=0) <= 2 for t in trees)
    crest_store = publish_token_store(tmp_path / "crest.duckdb", [[1, 2, 3, 1, 2, 4] * 5], vocab_size=8)
    with pytest.raises(CrestError, match="apply to REST stores, and none is served"):
        StoreSet([StoreSpec("default", crest_store)], rest_overrides={"k": 5})
    mixed = StoreSet([StoreSpec("default", crest_store), StoreSpec("rest", store)], rest_overrides={"k": 5})
    assert mixed.get("rest").holder.index.params.k == 5
