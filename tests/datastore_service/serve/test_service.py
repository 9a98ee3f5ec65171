"""A real gRPC server on loopback: answers, bad input, health, reflection, deadlines, hot reload,
replicas that die."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from crest.v1 import datastore_pb2 as pb
from crest.v1 import datastore_pb2_grpc as pb_grpc
from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.serve.client import DraftClient, ServiceError
from datastore_service.serve.server import RunningServer, ServerSettings
from datastore_service.store.publishing import VersionedStore
from tests.datastore_service.server_process import start_server
from tests.datastore_service.sql_oracle import sql_answer
from tests.datastore_service.store_factory import publish_token_store

VOCAB = 262_144
ALPHABET = [0, 65_535, 65_536, 131_071, 200_000, 262_143, 7, 99_999]


def documents(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, len(ALPHABET) + 1)
    return [[int(t) for t in rng.choice(ALPHABET, size=300, p=weights / weights.sum())] for _ in range(4)]


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return publish_token_store(tmp_path / "store.duckdb", documents(1), VOCAB)


@pytest.fixture()
def server(store: Path):
    running = RunningServer(store, ServerSettings(port=0, reload_interval=0.05, max_message_bytes=64 * 1024)).start()
    yield running
    running.stop(grace=1)


@pytest.fixture()
def stub(server: RunningServer):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.DraftStoreStub(channel)


def lookup_request(queries, max_nodes=0, max_depth=0, selection=pb.SCORED) -> pb.LookupRequest:
    request = pb.LookupRequest(selection=selection)
    for tokens in queries:
        request.sequences.add(tokens=tokens, max_nodes=max_nodes, max_depth=max_depth)
    return request


def test_answers_equal_sql_on_the_same_store(store: Path, stub):
    rng = np.random.default_rng(9)
    queries = [[int(t) for t in rng.choice(ALPHABET, size=rng.integers(1, 4))] for _ in range(40)]
    for selection, name in ((pb.SCORED, "scored"), (pb.LONGEST_MATCH, "longest")):
        response = stub.Lookup(lookup_request(queries, max_nodes=5, max_depth=3, selection=selection))
        assert len(response.drafts) == len(queries)
        for query, draft in zip(queries, response.drafts):
            length, nodes = sql_answer(store, query, 5, 3, name)
            assert draft.context_length == length
            assert list(draft.tokens) == [n[0] for n in nodes] and list(draft.parents) == [n[1] for n in nodes]
            assert np.allclose(draft.probabilities, [n[2] for n in nodes], rtol=1e-6)
            assert draft.score == pytest.approx(sum(n[2] for n in nodes), rel=1e-5)


@pytest.mark.parametrize(("selection", "name"), [(pb.MERGED, "merged"), (pb.CHAINED, "chained")])
def test_merged_and_chained_lookups_over_grpc_answer_as_the_index_does(store: Path, stub, selection, name):
    rng = np.random.default_rng(4)
    queries = [[int(t) for t in rng.choice(ALPHABET, size=rng.integers(1, 4))] for _ in range(40)]
    response = stub.Lookup(lookup_request(queries, max_nodes=6, max_depth=3, selection=selection))
    expected = DraftIndex.load(store).lookup(queries, 6, 3, name).trees()
    assert sum(len(tree) for tree in expected) > 0
    for draft, tree in zip(response.drafts, expected):
        assert draft.context_length == tree.context_length
        assert list(draft.tokens) == tree.tokens.tolist() and list(draft.parents) == tree.parents.tolist()
        assert np.array_equal(np.array(draft.probabilities, np.float32), tree.probabilities)


def test_info_describes_the_store(stub, server: RunningServer):
    info = stub.Info(pb.InfoRequest())
    assert info.vocab_size == VOCAB and info.max_context == 3 and info.tokenizer_fingerprint == f"test-vocab-{VOCAB}"
    assert info.store_version == server.holder.index.info.store_version and info.max_batch > 0


@pytest.mark.parametrize(
    ("queries", "limits", "message"),
    [
        ([], {}, "empty batch"),
        ([[]], {}, "no tokens"),
        ([[1, 2, 3, 4]], {}, "at most 3"),
        ([[-7]], {}, "token id -7"),
        ([[VOCAB]], {}, f"token id {VOCAB} is outside"),
        ([[1]], {"max_nodes": 4_000_000}, "max_nodes"),
        ([[1]], {"max_depth": 4_000_000}, "max_depth"),
        ([[1]] * 5000, {}, "exceeds the limit"),
    ],
)
def test_bad_input_is_invalid_argument_and_the_server_lives_on(stub, queries, limits, message):
    with pytest.raises(grpc.RpcError) as error:
        stub.Lookup(lookup_request(queries, **limits))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.value.details()
    assert len(stub.Lookup(lookup_request([[7]])).drafts) == 1


def test_unknown_selection_and_oversized_messages_are_refused(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.Lookup(lookup_request([[7]], selection=99))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        stub.Lookup(lookup_request([[7, 7, 7]] * 20_000))  # ~200 KB > the 64 KB limit of this server
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(stub.Lookup(lookup_request([[7]])).drafts) == 1


def test_health_and_reflection(server: RunningServer):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "crest.v1.DraftStore"):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(reflection.ServerReflectionInfo(iter([request])))
        names = {service.name for service in response.list_services_response.service}
        assert {"crest.v1.DraftStore", "grpc.health.v1.Health"} <= names


def test_deadline_shorter_than_the_call(server: RunningServer, stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.Lookup(lookup_request([[7, 7]] * 4000), timeout=1e-6)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(stub.Lookup(lookup_request([[7]]), timeout=5).drafts) == 1


class Load:
    """Clients calling Lookup in a loop; records every failure and every store version seen."""

    def __init__(self, address: str | list[str], threads: int = 8) -> None:
        self.failures: list[str] = []
        self.versions: list[str] = []
        self.calls = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.address = address
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        with DraftClient(self.address, timeout=5.0, retries=5) as client:
            stub = client.stub
            while not self.stop.is_set():
                try:
                    response = client._call(stub.Lookup, lookup_request([[7], [0, 7]]))
                    with self.lock:
                        self.calls += 1
                        if not self.versions or self.versions[-1] != response.store_version:
                            self.versions.append(response.store_version)
                except ServiceError as error:
                    with self.lock:
                        self.failures.append(str(error))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_hot_reload_under_load_fails_no_call(store: Path, server: RunningServer):
    first = server.holder.index.info.store_version
    with Load(server.address) as load:
        wait_until(lambda: load.calls > 50)
        publish_token_store(store, documents(2), VOCAB)
        wait_until(lambda: server.holder.index.info.store_version != first)
        second = server.holder.index.info.store_version
        wait_until(lambda: load.versions and load.versions[-1] == second)
        calls_before = load.calls
        wait_until(lambda: load.calls > calls_before + 50)
    assert load.failures == []
    assert load.versions[0] == first and load.versions[-1] == second


def _publish_file(store: Path, content: Path | bytes) -> None:
    versioned = VersionedStore(store)
    version = versioned.new_version()
    partial = versioned.scratch(version, "partial")
    if isinstance(content, bytes):
        partial.write_bytes(content)
    else:
        partial.write_bytes(content.read_bytes())
    versioned.publish(partial, version)


def test_corrupt_or_foreign_versions_are_refused_and_the_old_one_serves(
    store: Path, server: RunningServer, tmp_path: Path
):
    serving = server.holder.index.info.store_version
    with Load(server.address, threads=2) as load:
        _publish_file(store, b"this is not a duckdb file" * 100)
        time.sleep(0.5)
        assert server.holder.index.info.store_version == serving
        other = publish_token_store(tmp_path / "other.duckdb", documents(3), VOCAB, tokenizer="another-tokenizer")
        _publish_file(store, other.resolve())
        time.sleep(0.5)
        assert server.holder.index.info.store_version == serving
        wait_until(lambda: load.calls > 20)
    assert load.failures == [] and load.versions == [serving]


def start_replica(store: Path) -> tuple[subprocess.Popen, str]:
    process, address, _ = start_server(store)
    return process, address


def test_killed_replica_loses_no_call(store: Path):
    replicas = [start_replica(store) for _ in range(2)]
    try:
        with Load([address for _, address in replicas], threads=4) as load:
            wait_until(lambda: load.calls > 100)
            replicas[0][0].kill()
            killed_at = load.calls
            wait_until(lambda: load.calls > killed_at + 200)
        assert load.failures == []
    finally:
        for process, _ in replicas:
            process.kill()
            process.wait()


def test_sigterm_stops_cleanly(store: Path):
    process, address = start_replica(store)
    with DraftClient(address) as client:
        assert len(client.lookup([[7]])) == 1
    os.kill(process.pid, signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and "stopped" in out
