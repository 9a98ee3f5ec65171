"""TLS files and the shared token as both sides of the wire read them, and what a client presents.

This module and client.py are all a decoding worker needs to call a server: they import grpc,
protobuf and numpy only, so `pip install 'crest[client]'` stays free of the datastore's
dependencies (security.py adds the server's side: its credentials and the token check).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from datastore_service.errors import CrestError

TOKEN_ENV = "CREST_TOKEN"


def read_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise CrestError(f"cannot read {what} {path}: {exc.strerror}") from exc


def check_tls_files(cert: Path | None, key: Path | None, ca: Path | None) -> None:
    """Refuse unusable PEM files here, in one line, before grpc reports them as a bind failure."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cert is not None and key is not None:
        # A missing file says so, rather than as an SSL error.
        read_file(cert, "TLS certificate")
        read_file(key, "TLS key")
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise CrestError(
                f"TLS certificate {cert} and key {key} are not a usable pair: {exc.reason or exc}"
            ) from exc
    if ca is not None:
        read_file(ca, "TLS CA")
        try:
            context.load_verify_locations(cafile=str(ca))
        except ssl.SSLError as exc:
            raise CrestError(f"TLS CA {ca} holds no usable certificate: {exc.reason or exc}") from exc


def load_token(token_file: Path | None) -> str | None:
    """The shared token from `token_file`, else from $CREST_TOKEN, else None (no token)."""
    if token_file is not None:
        token = read_file(token_file, "token file").decode("utf-8", "replace").strip()
        if not token:
            raise CrestError(f"token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


@dataclass(frozen=True)
class ClientSecurity:
    """What a client presents: the CA that signed the server, its own certificate, the token."""

    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    server_name: str | None = None  # the name to expect in the server certificate, if not the address
    token: str | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise CrestError("a client certificate needs both --tls-cert and --tls-key")
        if self.tls_cert is not None and self.tls_ca is None:
            raise CrestError("a client certificate needs TLS: give --tls-ca too")

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None

    def credentials(self) -> grpc.ChannelCredentials:
        assert self.tls_ca is not None
        check_tls_files(self.tls_cert, self.tls_key, self.tls_ca)
        return grpc.ssl_channel_credentials(
            root_certificates=read_file(self.tls_ca, "TLS CA"),
            private_key=read_file(self.tls_key, "TLS key") if self.tls_key else None,
            certificate_chain=read_file(self.tls_cert, "TLS certificate") if self.tls_cert else None,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()
