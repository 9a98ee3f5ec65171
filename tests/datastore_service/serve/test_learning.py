"""A learning server on loopback: Observe teaches lookups, bad input teaches nothing, tenants reach
their own stores only, metrics move, and a SIGKILL (mid-ingest or mid-snapshot) loses at most the
last snapshot interval and never the published store."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from crest.v1 import datastore_pb2 as pb
from crest.v1 import datastore_pb2_grpc as pb_grpc
from datastore_service.build.observed_counts import tokens_in
from datastore_service.draft import MAX_DEPTH_LIMIT, DraftBatch, QueryBatch, right_aligned
from datastore_service.lookup.chaining import chain_trees
from datastore_service.overlay.overlay import OverlaySettings
from datastore_service.serve.client import DraftClient, ServiceError
from datastore_service.serve.credentials import ClientSecurity
from datastore_service.serve.security import ServerSecurity, TenantTokens
from datastore_service.serve.server import RunningServer, ServerSettings
from datastore_service.serve.service import MAX_OBSERVE_TOKENS
from datastore_service.serve.stores import StoreSpec
from datastore_service.store.snapshots import SnapshotFolder
from tests.datastore_service.server_process import start_server
from tests.datastore_service.store_factory import publish_token_store

VOCAB = 1000
LEARN = OverlaySettings(refresh_interval=0.05, snapshot_interval=0.3)


def documents(offset: int) -> list[list[int]]:
    return [[(7 * i + offset) % 50 for i in range(400)], [(3 * i + offset) % 40 + 100 for i in range(400)]]


def marker(first: int) -> list[int]:
    """A sequence the stores never saw, twice over (so its n-grams reach min_count 2)."""
    return list(range(first, first + 6)) * 2


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def drafts_after(client: DraftClient, token: int) -> list[int]:
    return client.lookup([[token]], max_nodes=4)[0].tokens.tolist()


@pytest.fixture()
def stores(tmp_path: Path) -> dict[str, Path]:
    return {
        name: publish_token_store(tmp_path / f"{name}.duckdb", documents(i), VOCAB)
        for i, name in enumerate(("code", "chat"))
    }


def test_observed_tokens_draft_in_later_lookups(stores):
    running = RunningServer(stores["code"], ServerSettings(port=0, learn=LEARN)).start()
    try:
        with DraftClient(running.address) as client:
            assert drafts_after(client, 900) == []
            assert client.observe([marker(900), [5, 6]]) == 14
            wait_until(lambda: drafts_after(client, 900)[:1] == [901])
            tree = client.lookup([[903, 904]], max_nodes=8)[0]
            tree.check_integrity()
            assert tree.context_length == 2 and tree.tokens.tolist() == [905]  # "905 900" was seen once only
            assert client.info().learning and client.info().observed_tokens == 14
    finally:
        running.stop(grace=1)


def merged_answers_of(client: DraftClient):
    """The server's MERGED answer to a batch, asked one query at a time (a chaining `Answer`)."""

    def answer(batch: QueryBatch) -> DraftBatch:
        trees = [
            client.lookup([[int(t) for t in tail if t >= 0]], int(nodes), int(depth), "merged")[0]
            for tail, nodes, depth in zip(batch.tails, batch.max_nodes, batch.max_depth)
        ]
        sizes = [len(tree) for tree in trees]
        return DraftBatch(
            np.concatenate([tree.tokens for tree in trees]),
            np.concatenate([tree.parents for tree in trees]),
            np.concatenate([tree.probabilities for tree in trees]),
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            np.array([tree.context_length for tree in trees], np.int32),
            np.array([tree.score for tree in trees], np.float32),
        )

    return answer


def test_chained_lookups_grow_from_learned_trees_too(stores):
    """The server chains through the overlay: its CHAINED answer is what chaining the server's
    MERGED answers (learned trees merged in) gives, and it drafts the observed sequence further."""
    running = RunningServer(stores["code"], ServerSettings(port=0, learn=LEARN)).start()
    try:
        with DraftClient(running.address) as client:
            client.observe([marker(900)])
            wait_until(lambda: drafts_after(client, 900)[:1] == [901])
            queries = [[900], [902, 903], [7, 14], [5]]
            chained = client.lookup(queries, max_nodes=12, selection="chained")
            rows = right_aligned(np.array([t for q in queries for t in q]), np.array([len(q) for q in queries]), 3)
            batch = QueryBatch(rows, np.array([len(q) for q in queries]), np.full(4, 12), np.full(4, MAX_DEPTH_LIMIT))
            expected = chain_trees(merged_answers_of(client), batch, width=3).trees()
            for got, want in zip(chained, expected):
                got.check_integrity()
                assert got.tokens.tolist() == want.tokens.tolist() and got.parents.tolist() == want.parents.tolist()
                assert np.array_equal(got.probabilities, want.probabilities)
            # The learned tree of [900] stops at the store's depth (4); chaining drafts the marker on.
            merged = client.lookup([[900]], max_nodes=12, selection="merged")[0]
            assert merged.tokens.tolist() == [901, 902, 903, 904]
            assert chained[0].tokens.tolist() == [901, 902, 903, 904, 905]
    finally:
        running.stop(grace=1)


def test_bad_observe_input_is_refused_whole(stores):
    running = RunningServer(stores["code"], ServerSettings(port=0, learn=LEARN)).start()
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.DraftStoreStub(channel)

            def refused(request: pb.ObserveRequest) -> grpc.StatusCode:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Observe(request)
                return caught.value.code()

            def sequences(*lists) -> list[pb.ObservedSequence]:
                return [pb.ObservedSequence(tokens=t) for t in lists]

            invalid = grpc.StatusCode.INVALID_ARGUMENT
            assert refused(pb.ObserveRequest()) == invalid  # no sequences
            assert refused(pb.ObserveRequest(sequences=sequences([1, 2], []))) == invalid  # an empty one
            assert refused(pb.ObserveRequest(sequences=sequences([1, 2], [3, VOCAB]))) == invalid  # out of vocabulary
            assert refused(pb.ObserveRequest(sequences=sequences([1, -1]))) == invalid
            assert refused(pb.ObserveRequest(sequences=sequences([1] * (MAX_OBSERVE_TOKENS + 1)))) == invalid
            assert refused(pb.ObserveRequest(store="nope", sequences=sequences([1, 2]))) == grpc.StatusCode.NOT_FOUND
            time.sleep(0.2)
            info = stub.Info(pb.InfoRequest())
            assert info.observed_tokens == 0
            assert running.stores.get("").overlay.stats.counted_tokens == 0
            assert len(running.stores.get("").overlay.table) == 0  # nothing was counted
    finally:
        running.stop(grace=1)
    static = RunningServer(stores["code"], ServerSettings(port=0)).start()
    try:
        with DraftClient(static.address) as client, pytest.raises(ServiceError) as caught:
            client.observe([[1, 2]])
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        static.stop(grace=1)


def test_tenants_reach_their_own_stores_only(stores, tmp_path):
    tokens = tmp_path / "tenants.json"
    tokens.write_text(
        json.dumps({"a": {"token": "token-of-a", "stores": ["code"]}, "b": {"token": "token-of-b", "stores": ["chat"]}})
    )
    security = ServerSecurity(token="shared-admin", tenants=TenantTokens.load(tokens))
    specs = [StoreSpec("code", stores["code"]), StoreSpec("chat", stores["chat"])]
    running = RunningServer(specs, ServerSettings(port=0, learn=LEARN, security=security)).start()

    def client(token: str, store: str) -> DraftClient:
        return DraftClient(running.address, security=ClientSecurity(token=token), store=store)

    calls = {
        "Lookup": lambda c: c.lookup([[7]]),
        "Observe": lambda c: c.observe([[7, 14, 21]]),
        "Info": lambda c: c.info(),
    }
    try:
        for name, call in calls.items():
            for token, own, other in (("token-of-a", "code", "chat"), ("token-of-b", "chat", "code")):
                with client(token, own) as mine:
                    call(mine)  # its own store answers
                for store in (other, "", "no-such-store"):
                    with client(token, store) as theirs, pytest.raises(ServiceError) as caught:
                        call(theirs)
                    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED, (name, token, store)
            for store in ("code", "chat"):
                with client("shared-admin", store) as admin:
                    call(admin)
            with client("wrong", "code") as stranger, pytest.raises(ServiceError) as caught:
                call(stranger)
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        with client("shared-admin", "missing") as admin, pytest.raises(ServiceError) as caught:
            admin.info()
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert running.stores.get("code").overlay.stats.observed_tokens == 3 * 2  # tenant a + admin, nobody else
    finally:
        running.stop(grace=1)


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_move_as_lookups_happen(stores):
    specs = [StoreSpec("code", stores["code"]), StoreSpec("chat", stores["chat"])]
    running = RunningServer(specs, ServerSettings(port=0, learn=LEARN, metrics_port=0)).start()
    try:
        before = scrape(running.metrics_port)
        with DraftClient(running.address, store="code") as client:
            for _ in range(5):
                client.lookup([[7], [999], [7, 14]], max_nodes=4)
            client.observe([marker(900)])
            with pytest.raises(ServiceError):
                client.lookup([[VOCAB]])
        after = scrape(running.metrics_port)
        assert (
            after['crest_lookup_seconds_count{store="code"}']
            - before.get('crest_lookup_seconds_count{store="code"}', 0)
            == 5
        )
        assert after['crest_lookup_batch_size_sum{store="code"}'] == 15
        assert after['crest_lookup_sequences_total{matched_length="0",store="code"}'] == 5  # [999] never matches
        assert after['crest_lookup_nodes_returned_total{store="code"}'] > 0
        assert after['crest_observed_tokens_total{store="code"}'] == 12
        assert after['crest_errors_total{code="INVALID_ARGUMENT",method="Lookup",store="code"}'] == 1
        assert after['crest_reloads_total{outcome="refused",store="chat"}'] == 0
        assert any(key.startswith('crest_store_info{store="chat"') for key in after)
        assert after['crest_overlay_bytes{store="code"}'] > 0
        assert after['crest_overlay_ingest_cpu_seconds_total{store="code"}'] > 0  # the observe call's checks
    finally:
        running.stop(grace=1)


def snapshot_tokens(store: Path) -> int:
    return sum(tokens_in(s.path) for s in SnapshotFolder(store).snapshots())


@pytest.mark.parametrize("moment", ["ingest", "snapshot"])
def test_sigkill_loses_at_most_the_last_interval_and_never_the_store(stores, moment):
    store = stores["code"]
    flags = ("--learn", "--snapshot-interval", "0.5", "--refresh-interval", "0.05")
    process, address, _ = start_server(store, *flags)
    published = store.resolve()
    try:
        with DraftClient(address, timeout=10) as client:
            client.observe([marker(900)])
            wait_until(lambda: snapshot_tokens(store) == 12)  # one interval later it is on disk
            if moment == "ingest":
                client.observe([marker(950)])  # killed before its interval ends
            else:
                # Tokens below the marker's, so whether or not these reach a snapshot before the kill (machine
                # speed again), the drafts after 900 are still the marker's.
                big = [[(i * 13) % 800 for i in range(j, j + 50_000)] for j in range(8)]
                for sequence in big:
                    client.observe([sequence])
                # Killed while a snapshot is being written: catching the real write in the act depends on the
                # machine's speed, so the torn file such a kill leaves behind is put there as the writer names it.
                snapshots = SnapshotFolder(store).snapshots()
                torn = snapshots[-1].path.with_name(f".{snapshots[-1].path.name}.partial-{process.pid}")
                torn.write_bytes(snapshots[-1].path.read_bytes()[:100])
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        folder = SnapshotFolder(store)
        for snapshot in folder.snapshots():  # no half-written file under a real name
            assert pq.read_table(snapshot.path).num_rows > 0
        assert store.resolve() == published
        process, address, _ = start_server(store, *flags)  # restarts on the published store, snapshots reloaded
        with DraftClient(address, timeout=10) as client:
            assert client.info().store_version and drafts_after(client, 900)[:1] == [901]
        assert not list(folder.folder.glob(".*.partial-*"))  # the dead writer's private file is gone
    finally:
        process.kill()
        process.wait()
