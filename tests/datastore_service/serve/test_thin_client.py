"""The thin client: `pip install 'crest[client]'` into a fresh venv brings grpcio, protobuf and numpy
only, and its DraftClient calls a real `crest serve` (token included) like the full install's does:
with the newest runtimes pip picks, and with older ones an engine image may pin (protobuf 6,
grpcio 1.84, numpy 1.x), which the generated code's floors allow.

Each venv is cached under the user's cache, keyed by the client's files, pyproject.toml and the
pins, so a second run reuses it; a clean machine builds them (a pip install of the local tree,
~16 s each).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import venv
from pathlib import Path

import numpy as np
import pytest

from crest_cli.server_process import ServerProcess
from datastore_service.lookup.index_loader import load_index
from tests.datastore_service.listening_sockets import ListeningSockets
from tests.datastore_service.store_factory import publish_token_store

ROOT = Path(__file__).resolve().parents[3]
# What the wheel is built from, and (the first two lines) what the installed client runs.
CLIENT_FILES = [
    "datastore_service/__init__.py", "datastore_service/draft.py", "datastore_service/errors.py",
    "datastore_service/serve/__init__.py", "datastore_service/serve/client.py",
    "datastore_service/serve/credentials.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto").rglob("*.py")),
    "pyproject.toml",
]  # fmt: skip
WHEEL_SOURCES = ["pyproject.toml", "README.md", "LICENSE", "datastore_service", "decoder", "crest_cli", "migrations",
                 "proto"]  # fmt: skip
ALLOWED = {"crest", "grpcio", "protobuf", "numpy", "typing-extensions", "pip", "setuptools"}
# Runtimes to install the client with: pip's choice, and older majors/minors than we develop on.
RUNTIMES = {"newest": (), "older": ("protobuf==6.33.6", "grpcio==1.84.0", "numpy==1.26.4")}
HEAVY = ("duckdb", "torch", "transformers", "pyarrow", "tokenizers", "sqlalchemy", "grpc_health", "grpc_tools")
STALE_SECONDS = 24 * 3600
TOKEN = "thin-client-token"
DOCUMENTS = [[1, 2, 3, 4, 1, 2, 3, 5] * 20, [6, 7, 1, 2, 3, 4] * 10]
QUERIES = [[1, 2], [3, 4, 1], [9]]

CALLER = """
import json, sys
from datastore_service.serve.client import DraftClient, ServiceError
from datastore_service.serve.credentials import ClientSecurity

address, token, queries = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with DraftClient(address, timeout=5, security=ClientSecurity(token=token)) as client:
    info = client.info()
    trees = client.lookup(queries, max_nodes=6)
with DraftClient(address, timeout=5) as tokenless:
    try:
        tokenless.info()
        refused = None
    except ServiceError as error:
        refused = error.code.name
import datastore_service
print(json.dumps({
    "module": datastore_service.__file__,
    "max_context": info.max_context,
    "trees": [[t.tokens.tolist(), t.parents.tolist(), t.context_length] for t in trees],
    "refused": refused,
    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY),
}))
"""


def _python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def _client_key(pins: tuple[str, ...]) -> str:
    digest = hashlib.sha256(" ".join(pins).encode())
    for name in CLIENT_FILES:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def _build_venv(target: Path, scratch: Path, pins: tuple[str, ...]) -> None:
    """pip install '<tree>[client]' (and `pins`) into a new venv at `target` (built aside, then renamed in)."""
    source = scratch / "source"
    source.mkdir()
    for name in WHEEL_SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, source / name)
    building = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    venv.create(building, with_pip=True)
    subprocess.run(
        [_python(building), "-m", "pip", "install", "--disable-pip-version-check", "-q", f"{source}[client]", *pins],
        check=True,
        timeout=300,
    )
    try:
        building.rename(target)
    except OSError:  # another run finished the same venv first
        shutil.rmtree(building, ignore_errors=True)


@pytest.fixture(scope="module", params=sorted(RUNTIMES))
def thin_venv(request: pytest.FixtureRequest, user_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pins = RUNTIMES[request.param]
    target = user_cache / "client-venvs" / f"{request.param}-{_client_key(pins)}"
    if not _python(target).exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _build_venv(target, tmp_path_factory.mktemp("thin-client"), pins)
    target.touch()  # in use: see below
    # Venvs of earlier client files pile up (~120 MB each): drop those nobody used for a day.
    for stale in target.parent.glob(f"{request.param}-*"):
        if stale != target and time.time() - stale.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    return target


def _clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}


def test_thin_install_holds_only_grpc_protobuf_and_numpy(thin_venv: Path):
    listed = subprocess.run(
        [_python(thin_venv), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True, env=_clean_env(),
    )  # fmt: skip
    installed = {entry["name"].lower().replace("_", "-"): entry["version"] for entry in json.loads(listed.stdout)}
    assert {"crest", "grpcio", "protobuf", "numpy"} <= set(installed) <= ALLOWED, installed
    pins = RUNTIMES[thin_venv.name.partition("-")[0]]
    assert all(installed[name] == version for name, _, version in (pin.partition("==") for pin in pins))


def test_thin_client_calls_a_real_server(thin_venv: Path, tmp_path: Path):
    store = publish_token_store(tmp_path / "store.duckdb", DOCUMENTS, vocab_size=16)
    with ListeningSockets() as sockets, ServerProcess(store, env={**os.environ, "CREST_TOKEN": TOKEN}) as server:
        assert server.address.startswith("127.0.0.1:")
        result = subprocess.run(
            [_python(thin_venv), "-c", CALLER.replace("HEAVY", repr(HEAVY)), server.address, TOKEN,
             json.dumps(QUERIES)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_clean_env(),
        )  # fmt: skip
        sockets.sample()  # while the server still listens: the call can end within one sampling interval
    assert result.returncode == 0, result.stderr
    port = int(server.address.rsplit(":", 1)[1])
    assert any(entry[1] == port for entry in sockets.seen) and sockets.not_loopback() == []  # crest serve: loopback
    answer = json.loads(result.stdout)
    assert Path(answer["module"]).is_relative_to(thin_venv)  # the installed client, not this checkout
    assert answer["heavy"] == []
    assert answer["refused"] == "UNAUTHENTICATED"
    expected = load_index(store).lookup(QUERIES, max_nodes=6).trees()
    assert answer["max_context"] == 3
    assert [tree[2] for tree in answer["trees"]] == [t.context_length for t in expected]
    for (tokens, parents, _), tree in zip(answer["trees"], expected, strict=True):
        assert np.array_equal(tokens, tree.tokens) and np.array_equal(parents, tree.parents)
    assert sum(len(tree[0]) for tree in answer["trees"]) > 0
