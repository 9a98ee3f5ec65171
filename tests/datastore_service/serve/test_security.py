"""Only its clients get answers: TLS, mutual TLS and the shared token, with certificates made here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from crest.v1 import datastore_pb2 as pb
from crest.v1 import datastore_pb2_grpc as pb_grpc
from datastore_service.errors import CrestError
from datastore_service.serve.client import DraftClient, ServiceError
from datastore_service.serve.credentials import ClientSecurity
from datastore_service.serve.security import ServerSecurity
from datastore_service.serve.server import RunningServer, ServerSettings
from tests.datastore_service.certificates import CertificateAuthority
from tests.datastore_service.server_process import start_server, stop_server
from tests.datastore_service.store_factory import publish_token_store

VOCAB = 1000
TOKEN = "s3cret-shared-token"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    documents = [[7, 8, 9, 7, 8, 10] * 40, [1, 2, 3, 1, 2, 4] * 40]
    return publish_token_store(tmp_path_factory.mktemp("security") / "store.duckdb", documents, VOCAB)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    """A CA with a server and a client certificate, and a rogue CA with its own client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue = CertificateAuthority(folder, "crest-ca"), CertificateAuthority(folder, "rogue-ca")
    return {
        "ca": ca.files.cert,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", server=False),
        "rogue_ca": rogue.files.cert,
        "rogue_client": rogue.issue("rogue-client", server=False),
    }


def serve(store: Path, security: ServerSecurity) -> RunningServer:
    return RunningServer(store, ServerSettings(port=0, security=security)).start()


def answers(address: str, security: ClientSecurity = ClientSecurity()) -> bool:
    with DraftClient(address, timeout=5, retries=1, security=security) as client:
        return client.lookup([[7, 8]], max_nodes=4)[0].context_length == 2


def refusal(address: str, security: ClientSecurity = ClientSecurity()) -> ServiceError:
    with DraftClient(address, timeout=2, retries=1, security=security) as client, pytest.raises(ServiceError) as error:
        client.lookup([[7, 8]])
    return error.value


def test_tls_answers_clients_that_trust_its_ca_only(store: Path, pki):
    server = serve(store, ServerSecurity(tls_cert=pki["server"].cert, tls_key=pki["server"].key))
    try:
        assert answers(server.address, ClientSecurity(tls_ca=pki["ca"]))
        plain = refusal(server.address)
        assert plain.code == grpc.StatusCode.UNAVAILABLE and "unavailable" in str(plain) and "TLS" in str(plain)
        distrusting = refusal(server.address, ClientSecurity(tls_ca=pki["rogue_ca"]))
        assert distrusting.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=0)


def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(store: Path, pki):
    server = serve(
        store, ServerSecurity(tls_cert=pki["server"].cert, tls_key=pki["server"].key, tls_client_ca=pki["ca"])
    )
    try:
        client = pki["client"]
        assert answers(server.address, ClientSecurity(tls_ca=pki["ca"], tls_cert=client.cert, tls_key=client.key))
        assert refusal(server.address, ClientSecurity(tls_ca=pki["ca"])).code == grpc.StatusCode.UNAVAILABLE
        rogue = pki["rogue_client"]
        assert (
            refusal(server.address, ClientSecurity(tls_ca=pki["ca"], tls_cert=rogue.cert, tls_key=rogue.key)).code
            == grpc.StatusCode.UNAVAILABLE
        )
    finally:
        server.stop(grace=0)


def test_token_is_required_checked_and_accepted(store: Path):
    server = serve(store, ServerSecurity(token=TOKEN))
    try:
        missing = refusal(server.address)
        assert missing.code == grpc.StatusCode.UNAUTHENTICATED and "needs a token" in str(missing)
        wrong = refusal(server.address, ClientSecurity(token=TOKEN + "x"))
        assert wrong.code == grpc.StatusCode.UNAUTHENTICATED and "wrong token" in str(wrong)
        assert refusal(server.address, ClientSecurity(token=TOKEN[:-1])).code == grpc.StatusCode.UNAUTHENTICATED
        assert answers(server.address, ClientSecurity(token=TOKEN))
        with grpc.insecure_channel(server.address) as channel:
            # The `crest-token` key works too, for clients that can't set `authorization`.
            info = pb_grpc.DraftStoreStub(channel).Info(pb.InfoRequest(), metadata=(("crest-token", TOKEN),), timeout=5)
            assert info.vocab_size == VOCAB
            lowercase = (("authorization", f"bearer {TOKEN}"),)  # the scheme is case-insensitive
            assert pb_grpc.DraftStoreStub(channel).Info(pb.InfoRequest(), metadata=lowercase, timeout=5).vocab_size
            # Health stays open (probes carry no secrets); reflection does not.
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            with pytest.raises(grpc.RpcError) as error:
                next(
                    reflection.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                    )
                )
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(grace=0)


def test_half_given_tls_settings_are_one_clear_error(pki):
    with pytest.raises(CrestError, match="needs both --tls-cert and --tls-key"):
        ServerSecurity(tls_cert=pki["server"].cert)
    with pytest.raises(CrestError, match="needs --tls-cert"):
        ServerSecurity(tls_client_ca=pki["ca"])
    with pytest.raises(CrestError, match="give --tls-ca too"):
        ClientSecurity(tls_cert=pki["client"].cert, tls_key=pki["client"].key)


def test_crest_serve_with_mutual_tls_and_a_token_file(store: Path, pki, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    process, address, line = start_server(
        store,
        "--tls-cert",
        str(pki["server"].cert),
        "--tls-key",
        str(pki["server"].key),
        "--tls-client-ca",
        str(pki["ca"]),
        "--token-file",
        str(token_file),
    )
    try:
        assert "(mutual TLS, token required)" in line, line
        client = pki["client"]
        full = ClientSecurity(tls_ca=pki["ca"], tls_cert=client.cert, tls_key=client.key, token=TOKEN)
        assert answers(address, full)
        no_token = ClientSecurity(tls_ca=pki["ca"], tls_cert=client.cert, tls_key=client.key)
        assert refusal(address, no_token).code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stop_server(process)


def test_crest_serve_takes_the_token_from_the_environment(store: Path):
    process, address, line = start_server(store, env={**os.environ, "CREST_TOKEN": TOKEN})
    try:
        assert "(plain TCP, token required)" in line, line
        assert answers(address, ClientSecurity(token=TOKEN))
        assert refusal(address).code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stop_server(process)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{cert}"], "needs both --tls-cert and --tls-key"),
        (["--tls-cert", "/no/such.crt", "--tls-key", "{key}"], "cannot read TLS certificate /no/such.crt"),
        (["--token-file", "{empty}"], "is empty"),
        (["--tls-cert", "{ca}", "--tls-key", "{key}"], "are not a usable pair"),
        (["--tls-cert", "{empty}", "--tls-key", "{empty}"], "are not a usable pair"),
    ],
)
def test_crest_serve_bad_security_flags_are_one_line(store: Path, pki, tmp_path: Path, flags, message):
    (tmp_path / "empty").write_text("\n")
    values = {"cert": pki["server"].cert, "key": pki["server"].key, "ca": pki["ca"], "empty": tmp_path / "empty"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "crest_cli",
            "serve",
            str(store),
            "--port",
            "0",
            *[flag.format(**values) for flag in flags],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stderr.startswith("crest: error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_crest_generate_server_flags_reach_the_client(
    store: Path, pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from crest_cli.generate import draft_source
    from crest_cli.main import parser

    monkeypatch.delenv("CREST_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = serve(
        store,
        ServerSecurity(tls_cert=pki["server"].cert, tls_key=pki["server"].key, tls_client_ca=pki["ca"], token=TOKEN),
    )
    fingerprint = f"test-vocab-{VOCAB}"
    client = pki["client"]
    flags = [
        "generate",
        "--server",
        server.address,
        "--prompt",
        "x",
        "--no-prompt-lookup",
        "--tls-ca",
        str(pki["ca"]),
        "--tls-cert",
        str(client.cert),
        "--tls-key",
        str(client.key),
    ]
    try:
        source = draft_source(parser().parse_args([*flags, "--token-file", str(token_file)]), fingerprint)
        assert source.drafts([[7, 8]], 4)[0].context_length == 2
        with pytest.raises(ServiceError, match="needs a token"):
            draft_source(parser().parse_args(flags), fingerprint)
    finally:
        server.stop(grace=0)
