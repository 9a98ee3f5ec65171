"""Versions an operator can trust: pruning never removes the published, a pinned or a served
version; a rollback counts as a recent publish; an identical rebuild publishes nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from crest_cli.main import main
from datastore_service.errors import StoreError
from datastore_service.rest.build import publish_rest_store
from datastore_service.serve.server import RunningServer, ServerSettings
from datastore_service.store.publishing import VersionedStore
from datastore_service.store.reader import resolve_store
from datastore_service.store.replicas import LEASE_TTL, Lease, read_leases
from tests.datastore_service.store_factory import publish_token_store

VOCAB = 50


def documents(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 8, 200) + seed % 5).tolist() for _ in range(3)]


def publish(store: Path, seed: int) -> str:
    """Publish a version with content of its own; returns its version id."""
    publish_token_store(store, documents(seed), VOCAB)
    return resolve_store(store).stem


def store_keeping(folder: Path, keep: int) -> Path:
    """A store path whose later publishes keep `keep` other versions."""
    store = folder / "s.duckdb"
    VersionedStore(store).versions.mkdir()
    VersionedStore(store, keep=keep).prune()
    return store


def names(store: Path) -> set[str]:
    return {v.name for v in VersionedStore(store).list_versions()}


def test_pruning_spares_published_pinned_and_served_versions(tmp_path: Path):
    store = store_keeping(tmp_path, 10)
    served = publish(store, 1)
    server = RunningServer(store, ServerSettings(port=0, reload_interval=3600, summary_interval=0)).start()
    try:
        pinned = publish(store, 2)
        VersionedStore(store).pin(pinned[:20])  # a unique prefix names a version
        old = [publish(store, seed) for seed in (3, 4, 5)]
        published = publish(store, 6)
        versioned = VersionedStore(store)
        assert versioned.resolve("published").name == published

        removed = {v.name for v in versioned.prune(keep=1)}

        assert names(store) == {served, pinned, old[-1], published}
        assert removed == set(old[:-1])
        listed = {v.name: v for v in versioned.list_versions()}
        assert listed[served].served_by and server.address in listed[served].served_by[0]
        assert listed[pinned].pinned and listed[published].published
    finally:
        server.stop(grace=0)
    # Stopped, the replica's lease is gone and its version is prunable like any other.
    assert read_leases(VersionedStore(store).versions) == []
    VersionedStore(store).unpin("published")  # unpinning a version that is not pinned is harmless
    assert served in {v.name for v in VersionedStore(store).prune(keep=0)}


def write_lease(versions: Path, host: str, pid: int, version: str, heartbeat_at: float) -> None:
    (versions / "replicas").mkdir(exist_ok=True)
    lease = Lease(host, pid, "10.0.0.1:50051", version, heartbeat_at, heartbeat_at)
    (versions / "replicas" / f"{host}-{pid}.json").write_text(json.dumps(asdict(lease)))


def test_only_live_replicas_protect_their_version(tmp_path: Path):
    store = store_keeping(tmp_path, 10)
    killed, silent, elsewhere = (publish(store, seed) for seed in (1, 2, 3))
    publish(store, 4)
    versions = VersionedStore(store).versions
    exited = subprocess.Popen(["true"])
    exited.wait()
    now = time.time()
    write_lease(versions, socket.gethostname(), exited.pid, killed, now)  # its process is gone
    write_lease(versions, "other-host", 7, silent, now - LEASE_TTL - 1)  # no heartbeat for too long
    write_lease(versions, "other-host", 8, elsewhere, now)  # alive as far as anyone here can tell

    assert {v.name for v in VersionedStore(store).prune(keep=0)} == {killed, silent}
    assert elsewhere in names(store)
    assert [lease.pid for lease in read_leases(versions)] == [8]  # dead leases are cleared by the prune


def test_a_rolled_back_version_counts_as_recently_published(tmp_path: Path, capsys):
    store = tmp_path / "s.duckdb"
    first, second, third = (publish(store, seed) for seed in (1, 2, 3))
    assert main(["versions", "publish", str(store), "previous"]) == 0  # the one before `third`
    assert resolve_store(store).stem == second
    time.sleep(0.01)
    assert main(["versions", "publish", str(store), first]) == 0
    fourth = publish(store, 4)  # keeps 2 besides the published: the two most recently published
    assert names(store) == {fourth, first, second}
    assert third not in names(store)
    assert main(["versions", str(store)]) == 0  # `crest versions STORE` lists
    listing = capsys.readouterr().out
    assert "3 version(s)" in listing and f"{fourth}" in listing and "published" in listing


def test_keep_given_once_is_remembered(tmp_path: Path):
    store = tmp_path / "s.duckdb"
    publish(store, 1)
    VersionedStore(store, keep=0).prune()
    assert VersionedStore(store).keep == 0
    publish(store, 2)
    assert len(names(store)) == 1
    with pytest.raises(StoreError, match="--keep must be 0 or more"):
        VersionedStore(store, keep=-1)


def test_an_identical_rebuild_publishes_nothing(tmp_path: Path):
    store = tmp_path / "s.duckdb"
    first = publish(store, 1)
    assert publish(store, 1) == first and names(store) == {first}
    second = publish(store, 2)
    assert second != first and names(store) == {first, second}

    rest = tmp_path / "r.rest"
    doc_ids, tokens = np.repeat([0, 1], 50), np.arange(100) % 7
    identity = {"tokenizer_name": "t", "tokenizer_fingerprint": "t-fp", "corpus_name": "c", "corpus_fingerprint": "c"}
    made = [publish_rest_store(doc_ids, tokens, 1.0, rest, {**identity, "vocab_size": VOCAB}) for _ in range(2)]
    assert [m.unchanged for m in made] == [False, True]
    assert made[1].version_file == made[0].version_file == resolve_store(rest)


def test_version_commands_say_what_is_wrong_in_one_line(tmp_path: Path, capsys):
    store = tmp_path / "s.duckdb"
    publish(store, 1)
    assert main(["versions", "pin", str(store), "nope"]) == 1
    assert "has no version 'nope'" in capsys.readouterr().err
    assert main(["versions", str(tmp_path / "missing.duckdb")]) == 1
    assert "no versions folder" in capsys.readouterr().err
