"""`crest serve` tells what it does: refused calls with the peer, one summary per interval (JSON
when asked), every call at debug level; and it listens on loopback only unless told otherwise."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path

import psutil
import pytest

from crest_cli.server_process import ServerProcess
from datastore_service.serve.client import DraftClient, ServiceError
from datastore_service.serve.credentials import ClientSecurity
from tests.datastore_service.store_factory import publish_token_store

VOCAB = 100
TOKEN = "log-test-token"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    documents = [[7, 8, 9, 7, 8, 10] * 40, [1, 2, 3, 1, 2, 4] * 40]
    return publish_token_store(tmp_path_factory.mktemp("log") / "store.duckdb", documents, VOCAB)


def ipv4(ip: str) -> str:
    """grpc listens on an IPv6 socket bound to the IPv4-mapped address (::ffff:127.0.0.1)."""
    address = ipaddress.ip_address(ip)
    return str(getattr(address, "ipv4_mapped", None) or address)


def log_lines(server: ServerProcess) -> list[str]:
    server.log.seek(0)
    return server.log.read().splitlines()


def refused(address: str, token: str | None) -> None:
    with DraftClient(address, security=ClientSecurity(token=token)) as client, pytest.raises(ServiceError):
        client.lookup([[7, 8]])


def test_json_log_has_refusals_with_peers_and_summaries_that_add_up(store: Path):
    env = {**os.environ, "CREST_TOKEN": TOKEN}
    flags = ["--log-format", "json", "--summary-interval", "0.3"]
    with ServerProcess(store, flags, env=env) as server:
        with DraftClient(server.address, security=ClientSecurity(token=TOKEN)) as client:
            for _ in range(10):
                client.lookup([[7, 8], [1, 2], [3]], max_nodes=4)
            client.info()
            with pytest.raises(ServiceError):
                client.lookup([[VOCAB + 5]])  # a token id outside the vocabulary: INVALID_ARGUMENT
        refused(server.address, "wrong")
        refused(server.address, None)
        time.sleep(0.5)  # one more summary interval
    entries = [json.loads(line) for line in log_lines(server)]  # every line is one JSON object

    refusals = [e for e in entries if e.get("event") == "refused"]
    assert len(refusals) == 2 and all(e["peer"].startswith("ipv4:127.0.0.1:") for e in refusals)
    assert {e["level"] for e in refusals} == {"warning"}
    assert any("wrong token" in e["message"] for e in refusals)
    summaries = [e for e in entries if e.get("event") == "summary"]
    assert len(summaries) >= 2  # one per interval, and a last one at stop
    total = lambda key: sum(s[key] for s in summaries)  # noqa: E731
    assert total("calls") == 14 and total("sequences") == 30 and total("refused") == 2
    by_method = sum((s["calls_by_method"].get("Lookup", 0) for s in summaries), 0)
    assert by_method == 13
    errors = {}
    for summary in summaries:
        for status, count in summary["errors_by_status"].items():
            errors[status] = errors.get(status, 0) + count
    assert errors == {"UNAUTHENTICATED": 2, "INVALID_ARGUMENT": 1}
    busy = [s for s in summaries if s["sequences"]]
    assert all(0 < s["lookup_p50_ms"] <= s["lookup_p99_ms"] for s in busy)
    assert any(e.get("event") == "start" and e["address"] == server.address for e in entries)


def test_log_level_decides_what_is_logged(store: Path):
    with ServerProcess(store, ["--log-level", "debug", "--summary-interval", "0"]) as server:
        with DraftClient(server.address) as client:
            client.lookup([[7, 8]])
    debug = log_lines(server)
    assert any("/crest.v1.DraftStore/Lookup OK from ipv4:127.0.0.1:" in line for line in debug)
    assert not any("last " in line for line in debug)  # --summary-interval 0: no summary

    with ServerProcess(store, ["--log-level", "warning", "--summary-interval", "0.2"]) as server:
        with DraftClient(server.address) as client:
            client.lookup([[7, 8]])
        time.sleep(0.3)  # a summary interval passes: at warning level it is not logged
    assert not any(" INFO " in line for line in log_lines(server))


def test_serve_listens_on_loopback_only_by_default(store: Path):
    with ServerProcess(store, ["--metrics-port", "0"]) as server:  # the gRPC port and the metrics port
        listening = [
            c.laddr
            for c in psutil.Process(server.process.pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert len(listening) == 2, listening
        assert {ipv4(address.ip) for address in listening} == {"127.0.0.1"}
        assert f"127.0.0.1:{server.address.rsplit(':', 1)[1]}" in {f"127.0.0.1:{a.port}" for a in listening}
