"""Who may call a server: TLS (optionally mutual) and a shared token, on both sides of the wire.

A datastore shared across model hosts should answer only its own clients. TLS proves the server
to the client (and, with a client CA, the client to the server); the shared token, sent as
`authorization: Bearer <token>` metadata on every call, is checked by `TokenCheck` in constant
time. Health checks stay open without a token: load balancers and orchestrators probe them with
no secrets, and they reveal nothing but SERVING. A token over plain TCP is readable on the wire:
without TLS it only suits loopback or a trusted network. This module is the server's side;
the client's (`ClientSecurity`) and the file and token readers both use are in credentials.py.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health

from datastore_service.errors import CrestError
from datastore_service.serve.credentials import TOKEN_ENV, check_tls_files, read_file

TOKEN_KEYS = ("authorization", "crest-token")
OPEN_PREFIXES = (f"/{health.SERVICE_NAME}/",)


@dataclass(frozen=True)
class ServerSecurity:
    """TLS files and the shared token of a server; all None = plain TCP, no token."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # given: clients must present a certificate it signed
    token: str | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise CrestError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise CrestError("--tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def credentials(self) -> grpc.ServerCredentials:
        assert self.tls_cert is not None and self.tls_key is not None
        check_tls_files(self.tls_cert, self.tls_key, self.tls_client_ca)
        ca = read_file(self.tls_client_ca, "client CA") if self.tls_client_ca else None
        pair = (read_file(self.tls_key, "TLS key"), read_file(self.tls_cert, "TLS certificate"))
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        return [TokenCheck(self.token)] if self.token else []


def _token_in(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key in TOKEN_KEYS:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            scheme, _, rest = text.strip().partition(" ")
            return rest.strip() if scheme.lower() == "bearer" and rest else text.strip()
    return None


def _digest(token: str) -> bytes:
    # Equal-length digests: the comparison time says nothing about the token's length either.
    return hashlib.sha256(token.encode()).digest()


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED and reads nothing."""

    def refuse(_request: object, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    make: Callable[..., grpc.RpcMethodHandler] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(refuse)  # no deserializer: a refused call's payload is never parsed


class TokenCheck(grpc.ServerInterceptor):
    """Refuses every call but health checks unless it carries the shared token."""

    def __init__(self, token: str) -> None:
        self._digest = _digest(token)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        sent = _token_in(handler_call_details.invocation_metadata)
        if sent is None:
            return _refusal(
                handler,
                "this server needs a token: send metadata 'authorization: Bearer <token>' "
                f"(crest: --token-file or ${TOKEN_ENV})",
            )
        if not hmac.compare_digest(_digest(sent), self._digest):
            return _refusal(handler, "wrong token")
        return handler
