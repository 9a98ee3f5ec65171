"""Client of the DraftStore service: batched lookups, deadlines, retries, several replicas.

With several addresses the channel balances calls over them (gRPC `round_robin`) and skips a
replica that went away; a call that still fails with UNAVAILABLE is retried with backoff, all
within one deadline (`timeout`). A call that fails for good raises `ServiceError`: one line that
says what went wrong and what to check, with the gRPC status code kept in `.code`.

This module is the thin client: it imports grpc, protobuf, numpy and CREST's shared types only,
so a decoding worker installs it with `pip install 'crest[client]'` (no duckdb, torch or
transformers; tests/datastore_service/serve/test_thin_client.py proves it in a fresh venv).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence

import grpc
import numpy as np

from crest.v1 import datastore_pb2 as pb
from crest.v1 import datastore_pb2_grpc as pb_grpc
from datastore_service.draft import DraftTree
from datastore_service.errors import CrestError
from datastore_service.serve.credentials import ClientSecurity

SELECTIONS = {"scored": pb.SCORED, "longest": pb.LONGEST_MATCH, "merged": pb.MERGED, "chained": pb.CHAINED}
_RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{"service": "crest.v1.DraftStore"}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.01s",
                "maxBackoff": "0.2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
    "loadBalancingConfig": [{"round_robin": {}}],
}


def channel_target(addresses: Sequence[str]) -> str:
    """One address as is; several as an `ipv4:`/`ipv6:` list that round_robin balances over."""
    if len(addresses) == 1:
        return addresses[0]
    resolved = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        ip = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)[0][4][0]
        resolved.append(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    scheme = "ipv6" if all(r.startswith("[") for r in resolved) else "ipv4"
    return f"{scheme}:" + ",".join(resolved)


class ServiceError(CrestError):
    """A call the draft server did not answer; `code` is the gRPC status."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


def service_error(error: grpc.RpcError, servers: str, timeout: float, unavailable: str | None) -> ServiceError:
    """One line for a failed call; `unavailable` is the details of an earlier UNAVAILABLE attempt."""
    code, details = error.code(), error.details()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and unavailable is not None:
        code, details = grpc.StatusCode.UNAVAILABLE, unavailable  # it waited for a server that never came back
    if code == grpc.StatusCode.UNAVAILABLE:
        message = (
            f"draft server {servers} unavailable: {details} (is it running? does it want TLS, "
            "--tls-ca, or a client certificate, --tls-cert/--tls-key?)"
        )
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"draft server {servers} did not answer within {timeout:g} s (deadline exceeded); raise the timeout"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        message = f"draft server {servers} refused the call: {details}"
    else:
        message = f"draft server {servers} failed the call ({code.name}): {details}"
    return ServiceError(message, code)


class DraftClient:
    def __init__(
        self,
        addresses: Sequence[str] | str,
        timeout: float = 1.0,
        retries: int = 3,
        security: ClientSecurity = ClientSecurity(),
        store: str = "",
    ) -> None:
        """`store`: which of the servers' stores to use (empty = their default store)."""
        addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        if not addresses:
            raise CrestError("no server address given")
        self.timeout, self.retries, self.store = timeout, retries, store
        self.servers = ", ".join(addresses)
        self.metadata = security.call_metadata()
        target, options = (
            channel_target(addresses),
            [
                ("grpc.service_config", json.dumps(_RETRY_POLICY)),
                ("grpc.enable_retries", 1),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                *security.channel_options(),
            ],
        )
        if security.tls:
            self.channel = grpc.secure_channel(target, security.credentials(), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.DraftStoreStub(self.channel)
        self.last_store_version = ""  # of the replica that answered the last lookup (watching a rollout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> DraftClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method, request):
        deadline = time.monotonic() + self.timeout
        unavailable = None
        for attempt in range(self.retries + 1):
            try:
                # Later attempts wait for a replica to be ready, but never past the call's deadline.
                return method(
                    request,
                    timeout=max(deadline - time.monotonic(), 0.0),
                    wait_for_ready=attempt > 0,
                    metadata=self.metadata,
                )
            except grpc.RpcError as error:
                retry = error.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries
                if not retry or time.monotonic() >= deadline:
                    raise service_error(error, self.servers, self.timeout, unavailable) from error
                unavailable = unavailable or error.details()
                time.sleep(min(0.02 * 2**attempt, max(deadline - time.monotonic(), 0.0)))
        raise AssertionError("unreachable")

    def info(self) -> pb.InfoResponse:
        return self._call(self.stub.Info, pb.InfoRequest(store=self.store))

    def check_tokenizer(self, fingerprint: str) -> pb.InfoResponse:
        """Refuse a store built for another tokenizer (token ids would mean other text)."""
        info = self.info()
        if info.tokenizer_fingerprint != fingerprint:
            raise CrestError(
                f"the server's store was built for tokenizer {info.tokenizer_name!r}, not the one this decoder uses"
            )
        return info

    def lookup(
        self,
        sequences: Sequence[Sequence[int]],
        max_nodes: int = 0,
        max_depth: int = 0,
        selection: str | None = None,
    ) -> list[DraftTree]:
        """`selection` None: the server's default (MERGED where the server has it, else its own)."""
        chosen = pb.SELECTION_UNSPECIFIED if selection is None else SELECTIONS[selection]
        request = pb.LookupRequest(selection=chosen, store=self.store)
        for tokens in sequences:
            request.sequences.add(tokens=list(tokens), max_nodes=max_nodes, max_depth=max_depth)
        response = self._call(self.stub.Lookup, request)
        self.last_store_version = response.store_version
        return [
            DraftTree(
                np.array(d.tokens, np.int32),
                np.array(d.parents, np.int32),
                np.array(d.probabilities, np.float32),
                d.context_length,
                d.score,
            )
            for d in response.drafts
        ]

    def observe(self, sequences: Sequence[Sequence[int]]) -> int:
        """Send emitted token sequences for the store to learn from; returns the tokens the server took.

        Each replica learns what it is sent and reads the others' snapshots, so one replica suffices."""
        request = pb.ObserveRequest(store=self.store)
        for tokens in sequences:
            request.sequences.add(tokens=list(tokens))
        return self._call(self.stub.Observe, request).tokens
