"""Hostile Observe requests against a live learning `crest serve`: every one is taken whole or
refused whole (INVALID_ARGUMENT, NOT_FOUND for an unknown store), the server lives on, answers
lookups that stay valid trees, and keeps its memory near its overlay's cap."""

from __future__ import annotations

import grpc
import numpy as np
import psutil
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crest.v1 import datastore_pb2 as pb
from datastore_service.draft import DraftTree
from datastore_service.serve.service import MAX_OBSERVE_SEQUENCES, MAX_OBSERVE_TOKENS
from tests.datastore_service.server_process import start_server, stop_server
from tests.datastore_service.store_factory import publish_token_store

VOCAB = 1000
REQUESTS = 3_000
RSS_GROWTH_LIMIT = 64 * 2**20  # the overlay's cap is 8 MiB
INT32 = st.integers(-(2**31), 2**31 - 1)

tokens = st.one_of(st.integers(0, VOCAB - 1), st.integers(0, VOCAB - 1), st.sampled_from([-1, VOCAB]), INT32)
sequences = st.builds(lambda t: pb.ObservedSequence(tokens=t), st.lists(tokens, max_size=40))
stores = st.sampled_from(["", "", "", "default", "other", "x" * 300])
observe_requests = st.builds(
    lambda s, q: pb.ObserveRequest(store=s, sequences=q), stores, st.lists(sequences, max_size=6)
)
valid_requests = st.builds(
    lambda q: pb.ObserveRequest(sequences=[pb.ObservedSequence(tokens=t) for t in q]),
    st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40), min_size=1, max_size=6),
)
# Big ones: one sequence repeated up to and past the limits.
edge_requests = st.builds(
    lambda n: pb.ObserveRequest(sequences=[pb.ObservedSequence(tokens=[1, 2, 3])] * n),
    st.sampled_from([MAX_OBSERVE_SEQUENCES, MAX_OBSERVE_SEQUENCES + 1]),
)
huge = pb.ObserveRequest(sequences=[pb.ObservedSequence(tokens=[5] * (MAX_OBSERVE_TOKENS + 1))])


def expected(request: pb.ObserveRequest) -> grpc.StatusCode:
    """The service contract for Observe, decided from the request alone."""
    if request.store not in ("", "default"):
        return grpc.StatusCode.NOT_FOUND
    lengths = [len(s.tokens) for s in request.sequences]
    if not lengths or len(lengths) > MAX_OBSERVE_SEQUENCES or 0 in lengths or sum(lengths) > MAX_OBSERVE_TOKENS:
        return grpc.StatusCode.INVALID_ARGUMENT
    if any(not 0 <= t < VOCAB for s in request.sequences for t in s.tokens):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def learning_server(tmp_path_factory: pytest.TempPathFactory):
    documents = [[(7 * i + i // 5) % 50 for i in range(600)], [(3 * i) % 40 + 100 for i in range(600)]]
    store = publish_token_store(tmp_path_factory.mktemp("observe-fuzz") / "store.duckdb", documents, VOCAB)
    flags = ("--learn", "--overlay-mb", "8", "--refresh-interval", "0.05", "--snapshot-interval", "0.5")
    process, address, _ = start_server(store, *flags)
    yield process, address
    stop_server(process)


def test_hostile_observe_requests_are_taken_or_refused_whole(learning_server):
    process, address = learning_server
    server = psutil.Process(process.pid)
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 2**20)])
    observe = channel.unary_unary("/crest.v1.DraftStore/Observe")
    lookup = channel.unary_unary("/crest.v1.DraftStore/Lookup")
    outcomes = {"taken": 0, "refused": 0, "undecodable": 0}
    sent, rss = [0], []

    def check(raw: bytes) -> None:
        try:
            request = pb.ObserveRequest.FromString(raw)
        except DecodeError:
            request = None
        want = expected(request) if request is not None else grpc.StatusCode.INVALID_ARGUMENT
        try:
            answer = pb.ObserveResponse.FromString(observe(raw, timeout=30))
            assert want == grpc.StatusCode.OK, f"took a bad request {raw[:60]!r}"
            assert answer.tokens == sum(len(s.tokens) for s in request.sequences) and answer.store_version
            outcomes["taken"] += 1
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # grpc's own message size limit
                assert len(raw) > 4 * 2**20
            else:
                assert error.code() == want, (error.code(), want, error.details())
            outcomes["undecodable" if request is None else "refused"] += 1
        sent[0] += 1
        if sent[0] == 500:
            rss.append(server.memory_info().rss)

    @settings(max_examples=REQUESTS // 2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(valid_requests, observe_requests, observe_requests, edge_requests), st.binary(max_size=64))
    def every_kind(request: pb.ObserveRequest, garbage: bytes) -> None:
        check(request.SerializeToString())
        check(garbage)

    every_kind()
    check(huge.SerializeToString())
    assert sent[0] >= REQUESTS and outcomes["taken"] > REQUESTS // 20 and outcomes["refused"] > REQUESTS // 20
    assert process.poll() is None, "the server died"
    queries = pb.LookupRequest(sequences=[pb.SequenceQuery(tokens=[t]) for t in range(0, VOCAB, 7)])
    for draft in pb.LookupResponse.FromString(lookup(queries.SerializeToString(), timeout=10)).drafts:
        tree = DraftTree(
            np.array(draft.tokens, np.int32),
            np.array(draft.parents, np.int32),
            np.array(draft.probabilities, np.float32),
            draft.context_length,
            draft.score,
        )
        tree.check_integrity()
    assert server.memory_info().rss - rss[0] < RSS_GROWTH_LIMIT
    print(
        f"\n{sent[0]} Observe requests: {outcomes}; "
        f"server RSS {rss[0] / 2**20:.0f} -> {server.memory_info().rss / 2**20:.0f} MiB"
    )
    channel.close()
