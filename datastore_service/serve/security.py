"""Who may call a server: TLS (optionally mutual) and a shared token, on both sides of the wire.

A datastore shared across model hosts should answer only its own clients. TLS proves the server
to the client (and, with a client CA, the client to the server); the shared token, sent as
`authorization: Bearer <token>` metadata on every call, is checked by `TokenCheck` in constant
time. Health checks stay open without a token: load balancers and orchestrators probe them with
no secrets, and they reveal nothing but SERVING. A token over plain TCP is readable on the wire:
without TLS it only suits loopback or a trusted network. This module is the server's side;
the client's (`ClientSecurity`) and the file and token readers both use are in credentials.py.

Tenant tokens (`TenantTokens`, `crest serve --tenant-tokens`) are scoped to stores: `TokenCheck`
lets them in like the shared token, and `StoreAccess` lets each reach only its own stores
(PERMISSION_DENIED otherwise, for every call that names a store). The shared token reaches all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
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
class TenantTokens:
    """Tokens that reach some stores only. File format (JSON), one entry per tenant:
    `{"team-a": {"token": "...", "stores": ["code", "code-chat"]}, ...}`."""

    scopes: tuple[tuple[bytes, frozenset[str]], ...]  # (sha256 of the token, the stores it reaches)

    @classmethod
    def load(cls, path: Path) -> TenantTokens:
        try:
            tenants = json.loads(read_file(path, "tenant tokens file"))
        except json.JSONDecodeError as exc:
            raise CrestError(f"tenant tokens file {path} is not JSON: {exc}") from exc
        if not isinstance(tenants, dict) or not tenants:
            raise CrestError(f"tenant tokens file {path}: expected an object of tenants")
        scopes = []
        for tenant, entry in tenants.items():
            token, stores = (entry.get("token"), entry.get("stores")) if isinstance(entry, dict) else (None, None)
            if not isinstance(token, str) or not token.strip() or not isinstance(stores, list) or not stores:
                raise CrestError(f'tenant {tenant!r} in {path}: needs a non-empty "token" and a list of "stores"')
            scopes.append((_digest(token.strip()), frozenset(map(str, stores))))
        if len({digest for digest, _ in scopes}) != len(scopes):
            raise CrestError(f"tenant tokens file {path}: two tenants share a token")
        return cls(tuple(scopes))

    def scope_of(self, token: str) -> frozenset[str] | None:
        """The stores `token` reaches, None if no tenant has it (every entry compared, in constant time)."""
        sent, found = _digest(token), None
        for digest, stores in self.scopes:
            if hmac.compare_digest(sent, digest):
                found = stores
        return found


@dataclass(frozen=True)
class ServerSecurity:
    """TLS files and the shared token of a server; all None = plain TCP, no token."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # given: clients must present a certificate it signed
    token: str | None = None
    tenants: TenantTokens | None = None  # tokens scoped to stores

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
        return [TokenCheck(self.token, self.tenants)] if self.token or self.tenants else []


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

    def __init__(self, token: str | None, tenants: TenantTokens | None = None) -> None:
        self._digest = _digest(token) if token else None
        self._tenants = tenants

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
        shared = self._digest is not None and hmac.compare_digest(_digest(sent), self._digest)
        if not shared and (self._tenants is None or self._tenants.scope_of(sent) is None):
            return _refusal(handler, "wrong token")
        return handler


class StoreAccess:
    """Which stores a call may reach: all with the shared token (or no tokens at all), a tenant's own otherwise."""

    def __init__(self, security: ServerSecurity) -> None:
        self._tenants = security.tenants
        self._shared = _digest(security.token) if security.token else None

    def allows(self, metadata: tuple[tuple[str, str | bytes], ...] | None, store: str) -> bool:
        if self._tenants is None:
            return True  # TokenCheck has let the call in: the shared token reaches every store
        sent = _token_in(metadata)
        if sent is None:
            return False
        if self._shared is not None and hmac.compare_digest(_digest(sent), self._shared):
            return True
        scope = self._tenants.scope_of(sent)
        return scope is not None and store in scope
