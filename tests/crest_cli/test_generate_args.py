"""`crest generate` checks its draft source before the model loads: a wrong server, token or store
is one line in about a second, and the model (seconds to load) is never touched."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

import crest_cli.generate
from crest_cli.main import main
from datastore_service.serve.security import ServerSecurity
from datastore_service.serve.server import RunningServer, ServerSettings
from tests.datastore_service.store_factory import publish_token_store

TOKEN = "generate-token"
FOREIGN_TOKENIZER = SimpleNamespace(fingerprint="test-vocab-100")  # the test store's vocabulary


class ModelLoaded(Exception):
    pass


@pytest.fixture(autouse=True)
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the model is where the checks must have stopped a bad call: make it fail loudly."""

    def load_target(*_args, **_kwargs):
        raise ModelLoaded

    monkeypatch.setattr(crest_cli.generate, "load_target", load_target)
    monkeypatch.delenv("CREST_TOKEN", raising=False)


@pytest.fixture(scope="module")
def foreign_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store built for another vocabulary than the model's."""
    documents = [[7, 8, 9, 7, 8, 10] * 20]
    return publish_token_store(tmp_path_factory.mktemp("generate") / "s.duckdb", documents, 100)


@pytest.fixture(scope="module")
def token_server(foreign_store: Path):
    server = RunningServer(
        foreign_store, ServerSettings(port=0, summary_interval=0, security=ServerSecurity(token=TOKEN))
    ).start()
    yield server
    server.stop(grace=0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def generate(*flags: str) -> list[str]:
    return ["generate", "--prompt", "def f(x):", *flags]


def test_a_draft_source_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(generate())
    assert exit_.value.code == 2
    assert "one of the arguments --store --server --no-store is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--server", "SERVER"], "needs a token"),
        (["--server", "SERVER", "--token-file", "TOKEN_FILE"], "built for tokenizer 'test-vocab'"),
        (["--server", "SERVER", "--token-file", "/no/such/token"], "cannot read token file"),
        (["--server", "DEAD"], "unavailable"),
        (["--store", "STORE"], "built for tokenizer 'test-vocab'"),
        (["--store", "/no/such/store.duckdb"], "datastore not found"),
        (["--no-store", "--no-prompt-lookup"], "nothing to draft from"),
        (["--store", "STORE", "--learn"], "use it with --server"),
    ],
)
def test_bad_sources_fail_before_the_model_loads(
    flags: list[str], message: str, token_server: RunningServer, foreign_store: Path, tmp_path: Path, capsys
):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    places = {
        "SERVER": token_server.address,
        "DEAD": f"127.0.0.1:{free_port()}",
        "TOKEN_FILE": str(token_file),
        "STORE": str(foreign_store),
    }
    assert main(generate(*(places.get(flag, flag) for flag in flags))) == 1
    error = capsys.readouterr().err
    assert error.startswith("crest: error:") and message in error and len(error.strip().splitlines()) == 1


def test_good_sources_reach_the_model(token_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ModelLoaded):
        main(generate("--no-store"))
    monkeypatch.setattr(crest_cli.generate.TargetTokenizer, "load", lambda spec: FOREIGN_TOKENIZER)
    monkeypatch.setenv("CREST_TOKEN", TOKEN)
    with pytest.raises(ModelLoaded):
        main(generate("--server", token_server.address))
