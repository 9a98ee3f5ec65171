"""Client of the DraftStore service: batched lookups, deadlines, retries, several replicas.

With several addresses the channel balances calls over them (gRPC `round_robin`) and skips a
replica that went away; a call that still fails with UNAVAILABLE is retried with backoff.
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

from .draft import DraftTree
from .errors import CrestError

SELECTIONS = {"scored": pb.SCORED, "longest": pb.LONGEST_MATCH}
_RETRY_POLICY = {
    "methodConfig": [{
        "name": [{"service": "crest.v1.DraftStore"}],
        "retryPolicy": {
            "maxAttempts": 4, "initialBackoff": "0.01s", "maxBackoff": "0.2s", "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
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


class DraftClient:
    def __init__(self, addresses: Sequence[str] | str, timeout: float = 1.0, retries: int = 3) -> None:
        addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        if not addresses:
            raise CrestError("no server address given")
        self.timeout, self.retries = timeout, retries
        self.channel = grpc.insecure_channel(channel_target(addresses), options=[
            ("grpc.service_config", json.dumps(_RETRY_POLICY)),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ])
        self.stub = pb_grpc.DraftStoreStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "DraftClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method, request):
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout, wait_for_ready=attempt > 0)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
                time.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    def info(self) -> pb.InfoResponse:
        return self._call(self.stub.Info, pb.InfoRequest())

    def check_tokenizer(self, fingerprint: str) -> pb.InfoResponse:
        """Refuse a store built for another tokenizer (token ids would mean other text)."""
        info = self.info()
        if info.tokenizer_fingerprint != fingerprint:
            raise CrestError(f"the server's store was built for tokenizer {info.tokenizer_name!r}, "
                             "not the one this decoder uses")
        return info

    def lookup(self, sequences: Sequence[Sequence[int]], max_nodes: int = 0, max_depth: int = 0,
               selection: str = "scored") -> list[DraftTree]:
        request = pb.LookupRequest(selection=SELECTIONS[selection])
        for tokens in sequences:
            request.sequences.add(tokens=list(tokens), max_nodes=max_nodes, max_depth=max_depth)
        response = self._call(self.stub.Lookup, request)
        return [
            DraftTree(np.array(d.tokens, np.int32), np.array(d.parents, np.int32),
                      np.array(d.probabilities, np.float32), d.context_length, d.score)
            for d in response.drafts
        ]
