"""Faults a shared datastore meets, each with a clear message and nothing published lost: damaged
or newer-schema files (at start and on hot reload), a full disk during a build, a server killed
mid-request, a client deadline shorter than the lookup.

Covered elsewhere: an old schema and a not-DuckDB file at open (test_migrations.py), garbage and
other-tokenizer versions on hot reload (test_service.py), a build killed or interrupted midway and
DuckDB out of memory (test_cli.py), a replica killed under load (test_service.py).
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import grpc
import numpy as np
import pytest

from crest.v1 import datastore_pb2 as pb
from crest.v1 import datastore_pb2_grpc as pb_grpc
from datastore_service.draft import MAX_BATCH
from datastore_service.serve.client import DraftClient, ServiceError
from datastore_service.serve.server import RunningServer, ServerSettings
from datastore_service.serve.service import SERVER_TIME_KEY
from datastore_service.store.publishing import VersionedStore
from datastore_service.store.reader import read_store_info, resolve_store
from tests.datastore_service.server_process import start_server, stop_server
from tests.datastore_service.store_factory import publish_token_store

VOCAB = 5000
HEADERS, BLOCK = 3 * 4096, 65_536  # DuckDB's file headers; the store writer's block size


def documents(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.zipf(1.3, 2000) % 300] for _ in range(3)]


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return publish_token_store(tmp_path / "store.duckdb", documents(1), VOCAB)


def damaged_copy(store: Path, kind: str, folder: Path) -> Path:
    """A copy of the store's file, damaged as a disk or a newer crest would leave it."""
    source, target = resolve_store(store), folder / f"{kind}.duckdb"
    data = source.read_bytes()
    if kind == "corrupt":  # random bytes over part of every block after the file headers
        rng, data = np.random.default_rng(0), bytearray(data)
        for start in range(HEADERS + 512, len(data) - 1024, BLOCK // 2):
            data[start : start + 1024] = rng.bytes(1024)
        data = bytes(data)
    elif kind == "truncated":
        data = data[: len(data) * 2 // 3]
    target.write_bytes(data)
    if kind == "newer-schema":
        with duckdb.connect(str(target)) as connection:
            connection.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    return target


# DuckDB notices damage while opening or while reading, depending on where it is: both say "damaged".
MESSAGES = {"corrupt": "damaged", "truncated": "damaged", "newer-schema": "newer than this crest knows"}


@pytest.mark.parametrize("command", ["serve", "inspect"])
@pytest.mark.parametrize("kind", list(MESSAGES))
def test_damaged_or_newer_files_are_one_clear_line(store: Path, tmp_path: Path, kind: str, command: str):
    bad = damaged_copy(store, kind, tmp_path)
    flags = ["--port", "0"] if command == "serve" else []
    result = subprocess.run(
        [sys.executable, "-m", "crest_cli", command, str(bad), *flags], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("crest: error:") and MESSAGES[kind] in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def publish_file(store: Path, content: bytes) -> Path:
    versioned = VersionedStore(store)
    version = versioned.new_version()
    partial = versioned.scratch(version, "partial")
    partial.write_bytes(content)
    return versioned.publish(partial, version)


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_hot_reload_refuses_a_damaged_version_and_keeps_serving(
    store: Path, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.ERROR, logger="crest.serve")
    server = RunningServer(store, ServerSettings(port=0, reload_interval=0.05)).start()
    try:
        serving = server.holder.index.info.store_version
        good_file = resolve_store(store)
        with DraftClient(server.address, timeout=5) as client:
            before = client.lookup([[0], [1, 2]], max_nodes=8)
            bad = publish_file(store, damaged_copy(store, kind, tmp_path).read_bytes())
            wait_until(lambda: any(bad.name in r.getMessage() and "refusing" in r.getMessage() for r in caplog.records))
            assert server.holder.index.info.store_version == serving
            after = client.lookup([[0], [1, 2]], max_nodes=8)
            assert [t.tokens.tolist() for t in after] == [t.tokens.tolist() for t in before]
            assert read_store_info(good_file)["store_version"] == serving  # the old version is intact on disk
            # A sound version published after the refusal is picked up as usual.
            publish_token_store(store, documents(2), VOCAB)
            wait_until(lambda: server.holder.index.info.store_version != serving)
            assert client.info().store_version == server.holder.index.info.store_version
    finally:
        server.stop(grace=0)


def _file_size_limit(limit: int):
    def apply() -> None:
        # Writes past the limit then fail with EFBIG, as on a full disk, instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_build_is_one_line_and_the_published_store_stays(code_corpus: Path, tmp_path: Path):
    output = tmp_path / "code.duckdb"
    cli = [
        sys.executable,
        "-m",
        "crest_cli",
        "build",
        "--corpus",
        str(code_corpus / "json"),
        "--output",
        str(output),
        "--quiet",
    ]
    subprocess.run([*cli, "--budget", "100rows"], check=True, capture_output=True, timeout=300)
    old_file = resolve_store(output)
    old_bytes, old_info = old_file.read_bytes(), read_store_info(output)
    # The token file is cached by now, so the first big write is the new store version.
    result = subprocess.run(
        [*cli, "--budget", "400rows"], capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(100_000)
    )
    assert result.returncode == 1
    assert result.stderr.startswith("crest: error: out of disk space") and "was not published" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert resolve_store(output) == old_file and old_file.read_bytes() == old_bytes
    assert read_store_info(output) == old_info
    # No scratch left behind: the old version and its serving file only.
    assert sorted(output.with_name(output.name + ".versions").iterdir()) == [old_file, old_file.with_suffix(".serving")]


def test_server_killed_mid_request_is_a_clear_unavailable_error(store: Path):
    process, address, _ = start_server(store)
    try:
        with DraftClient(address, timeout=3, retries=2) as client:
            assert len(client.lookup([[0]])) == 1
            os.kill(process.pid, signal.SIGSTOP)  # the next call is sent but never answered...
            outcome: list[BaseException] = []
            call = threading.Thread(target=lambda: _record(outcome, client.lookup, [[0]]))
            started = time.monotonic()
            call.start()
            time.sleep(0.5)
            assert call.is_alive(), f"the call should be in flight, it ended with {outcome}"
            os.kill(process.pid, signal.SIGKILL)  # ...and the server dies under it
            call.join(timeout=30)
            assert not call.is_alive() and time.monotonic() - started < 3 + 2
        (error,) = outcome
        assert isinstance(error, ServiceError) and error.code == grpc.StatusCode.UNAVAILABLE, error
        assert str(error).startswith(f"draft server {address} unavailable")
    finally:
        stop_server(process)
    # What was published survives the crash: a new server answers from the same version.
    process, address, line = start_server(store)
    try:
        assert read_store_info(store)["store_version"] in line
        with DraftClient(address, timeout=5) as client:
            assert len(client.lookup([[0]])) == 1
    finally:
        stop_server(process)


def _record(outcome: list, function, *args) -> None:
    try:
        outcome.append(function(*args))
    except BaseException as error:  # noqa: BLE001 - the test inspects whatever came out
        outcome.append(error)


def test_calls_in_flight_on_a_killed_replica_fail_over(store: Path):
    (first, first_address, _), (second, second_address, _) = start_server(store), start_server(store)
    try:
        with DraftClient([first_address, second_address], timeout=10, retries=3) as client:
            # Calls for a second, so that both replicas are connected: round_robin only picks a ready
            # one, and four quick calls once all went to the replica that connected first (a busy
            # machine), leaving the stopped one never picked.
            warmed = time.monotonic() + 1.0
            while time.monotonic() < warmed:
                client.lookup([[0]])
            os.kill(first.pid, signal.SIGSTOP)
            outcomes: list = []
            calls = [threading.Thread(target=_record, args=(outcomes, client.lookup, [[0]])) for _ in range(8)]
            started = time.monotonic()
            for call in calls:
                call.start()
            time.sleep(1.0)
            stuck = sum(call.is_alive() for call in calls)
            os.kill(first.pid, signal.SIGKILL)
            for call in calls:
                call.join(timeout=30)
        assert stuck > 0, "no call was in flight on the stopped replica"
        assert all(isinstance(o, list) and len(o) == 1 for o in outcomes) and len(outcomes) == 8, outcomes
        assert time.monotonic() - started < 10
    finally:
        stop_server(first)
        stop_server(second)


def test_deadline_shorter_than_the_lookup_is_a_clear_error_and_the_server_serves_on(store: Path):
    server = RunningServer(store, ServerSettings(port=0)).start()
    try:
        heavy = pb.LookupRequest(
            sequences=[pb.SequenceQuery(tokens=[i % 300, (i * 7) % 300, 1], max_nodes=4096) for i in range(MAX_BATCH)]
        )
        with grpc.insecure_channel(server.address) as channel:
            calls = [pb_grpc.DraftStoreStub(channel).Lookup.with_call(heavy, timeout=30)[1] for _ in range(3)]
        # The fastest the server ever did it: a client allowing a quarter of that cannot be answered.
        lookup_seconds = min(int(dict(call.trailing_metadata())[SERVER_TIME_KEY]) for call in calls) / 1e6
        sequences = [list(q.tokens) for q in heavy.sequences]
        with DraftClient(server.address, timeout=lookup_seconds / 4) as hurried, pytest.raises(ServiceError) as error:
            hurried.lookup(sequences, max_nodes=4096)
        assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "did not answer within" in str(error.value) and "raise the timeout" in str(error.value)
        with DraftClient(server.address, timeout=30) as patient:
            assert len(patient.lookup(sequences, max_nodes=4096)) == MAX_BATCH
    finally:
        server.stop(grace=0)
