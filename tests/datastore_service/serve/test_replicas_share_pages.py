"""Replicas on one host share the serving file's pages: two `crest serve` processes on the same
store version map the same file (same device and inode, a shared read-only mapping), so the page
cache holds it once; and both answer alike over gRPC."""

from __future__ import annotations

import os
from pathlib import Path

from crest_cli.server_process import ServerProcess
from datastore_service.serve.client import DraftClient
from datastore_service.store.reader import resolve_store
from tests.datastore_service.lookup.stores import BIG_IDS, publish_zipf_store


def mapped_serving_files(pid: int) -> set[tuple[str, int, int]]:
    """(permissions, device, inode) of each mapping of a `.serving` file in process `pid`."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(".serving"):
            major, minor = (int(part, 16) for part in fields[3].split(":"))
            found.add((fields[1], os.makedev(major, minor), int(fields[4])))
    return found


def test_two_replicas_map_one_serving_file(tmp_path: Path):
    store = publish_zipf_store(tmp_path / "store.duckdb", BIG_IDS, vocab_size=262_144)
    on_disk = os.stat(resolve_store(store).with_suffix(".serving"))
    with ServerProcess(store) as first, ServerProcess(store) as second:
        maps = [mapped_serving_files(server.process.pid) for server in (first, second)]
        assert maps[0] == maps[1] == {("r--s", on_disk.st_dev, on_disk.st_ino)}
        queries = [[a, b] for a in BIG_IDS for b in BIG_IDS]
        trees = []
        for server in (first, second):
            with DraftClient(server.address, timeout=10) as client:
                trees.append(client.lookup(queries, max_nodes=8))
    assert [t.tokens.tolist() for t in trees[0]] == [t.tokens.tolist() for t in trees[1]]
    assert sum(len(t) for t in trees[0]) > 0
