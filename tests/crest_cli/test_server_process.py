"""The demo's server child: starts on a free port, and never outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crest_cli.server_process import ServerProcess
from datastore_service.errors import CrestError
from datastore_service.serve.client import DraftClient
from tests.datastore_service.store_factory import publish_token_store


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return publish_token_store(tmp_path / "store.duckdb", [[1, 2, 3, 4, 1, 2, 3, 5] * 20], 100)


def test_serves_then_stops(store: Path):
    with ServerProcess(store) as server:
        with DraftClient(server.address) as client:
            assert len(client.lookup([[1, 2]])[0]) > 0
        process = server.process
    assert process.poll() is not None


def test_a_store_that_cannot_be_served_is_a_clear_error(tmp_path: Path):
    missing = tmp_path / "missing.duckdb"
    with pytest.raises(CrestError, match="crest serve did not start: .*not found"):
        with ServerProcess(missing):
            pass


def test_server_dies_with_a_killed_parent(store: Path, tmp_path: Path):
    script = (
        "import sys, time; from pathlib import Path\n"
        "from crest_cli.server_process import ServerProcess\n"
        "server = ServerProcess(Path(sys.argv[1])).__enter__()\n"
        "print(server.process.pid, flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(store)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the server outlived its killed parent")
