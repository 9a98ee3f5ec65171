"""Hostile Lookup requests against a live `crest serve` process: every one gets a valid answer or
INVALID_ARGUMENT, the server lives on, and its memory stays bounded over 10,000 of them.

Requests are well-formed messages with hostile values (huge and negative ids, empty and oversized
batches, odd limits and selection values) and raw bytes sent through an identity-serialized
channel: garbage, truncated and corrupted encodings, fields of the wrong wire type. What the
server must answer is decided here from the request itself, so a wrong refusal fails too.
"""

from __future__ import annotations

import grpc
import psutil
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crest.v1 import datastore_pb2 as pb
from datastore_service.draft import MAX_BATCH, MAX_DEPTH_LIMIT, MAX_NODES_LIMIT
from tests.datastore_service.server_process import start_server, stop_server
from tests.datastore_service.store_factory import publish_token_store

VOCAB, MAX_CONTEXT = 1000, 3
REQUESTS = 10_000  # every one really sent (asserted)
PER_EXAMPLE = 4  # one of each kind per hypothesis example
WARM_UP = 2_000  # RSS is compared between this request and the last
RSS_GROWTH_LIMIT = 16 * 2**20
INT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.integers(0, 2**32 - 1)

tokens = st.one_of(st.integers(0, VOCAB - 1), st.sampled_from([-1, VOCAB, -(2**31), 2**31 - 1]), INT32)
queries = st.builds(
    lambda t, n, d: pb.SequenceQuery(tokens=t, max_nodes=n, max_depth=d),
    st.lists(tokens, max_size=MAX_CONTEXT + 2),
    st.one_of(st.integers(0, 64), st.sampled_from([MAX_NODES_LIMIT, MAX_NODES_LIMIT + 1]), UINT32),
    st.one_of(st.integers(0, 8), st.sampled_from([MAX_DEPTH_LIMIT, MAX_DEPTH_LIMIT + 1]), UINT32),
)
selections = st.one_of(
    st.sampled_from([pb.SELECTION_UNSPECIFIED, pb.SCORED, pb.LONGEST_MATCH, pb.MERGED, pb.CHAINED]), INT32
)
small_batches = st.lists(queries, max_size=8)
# Batches at and past the limit: one query repeated, so they cost little to build.
edge_batches = st.builds(lambda q, n: [q] * n, queries, st.sampled_from([MAX_BATCH, MAX_BATCH + 1]))
small_requests = st.builds(lambda s, b: pb.LookupRequest(selection=s, sequences=b), selections, small_batches)
# Valid requests too, so answers are checked as well as refusals.
valid_requests = st.builds(
    lambda s, b: pb.LookupRequest(selection=s, sequences=b),
    st.sampled_from([pb.SELECTION_UNSPECIFIED, pb.SCORED, pb.LONGEST_MATCH, pb.MERGED, pb.CHAINED]),
    st.lists(
        st.builds(
            lambda t, n, d: pb.SequenceQuery(tokens=t, max_nodes=n, max_depth=d),
            st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=MAX_CONTEXT),
            st.integers(0, MAX_NODES_LIMIT),
            st.integers(0, MAX_DEPTH_LIMIT),
        ),
        min_size=1,
        max_size=8,
    ),
)
requests = st.one_of(
    valid_requests,
    small_requests,
    small_requests,
    small_requests,
    small_requests,
    st.builds(lambda s, b: pb.LookupRequest(selection=s, sequences=b), selections, edge_batches),
)


@st.composite
def damaged(draw) -> bytes:
    """A real request's encoding, cut short or with bytes overwritten."""
    raw = draw(small_requests).SerializeToString()
    if draw(st.booleans()) or not raw:
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    at = draw(st.integers(0, len(raw) - 1))
    return raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at + 1 :]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


@st.composite
def wrong_types(draw) -> bytes:
    """Fields with any number and wire type (a varint where a message belongs, bogus lengths...)."""
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        field, wire = draw(st.integers(1, 20)), draw(st.integers(0, 7))
        out += _varint(field << 3 | wire)
        if wire == 0:
            out += _varint(draw(st.integers(0, 2**64 - 1)))
        elif wire == 2:
            payload = draw(st.binary(max_size=32))
            out += _varint(draw(st.sampled_from([len(payload), len(payload) + 7, 2**31]))) + payload
        else:
            out += draw(st.binary(max_size=8))
    return out


def answerable(request: pb.LookupRequest) -> bool:
    """The service contract: what a valid request is (anything else is INVALID_ARGUMENT, but a
    request naming a store the server lacks: NOT_FOUND; this server has its default store only)."""
    return (
        request.store == ""
        and request.selection in (pb.SELECTION_UNSPECIFIED, pb.SCORED, pb.LONGEST_MATCH, pb.MERGED, pb.CHAINED)
        and 1 <= len(request.sequences) <= MAX_BATCH
        and all(
            1 <= len(q.tokens) <= MAX_CONTEXT
            and all(0 <= t < VOCAB for t in q.tokens)
            and q.max_nodes <= MAX_NODES_LIMIT
            and q.max_depth <= MAX_DEPTH_LIMIT
            for q in request.sequences
        )
    )


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory):
    documents = [[(7 * i + i // 5) % 50 for i in range(600)], [(3 * i) % 40 + 100 for i in range(600)]]
    store = publish_token_store(tmp_path_factory.mktemp("fuzz") / "store.duckdb", documents, VOCAB)
    process, address, _ = start_server(store)
    yield process, address
    stop_server(process)


class Sender:
    """Sends raw bytes to Lookup and checks each outcome; counts requests and samples server RSS."""

    def __init__(self, process, address: str) -> None:
        self.server = psutil.Process(process.pid)
        self.channel = grpc.insecure_channel(address)
        self.lookup = self.channel.unary_unary("/crest.v1.DraftStore/Lookup")  # bytes in, bytes out
        self.sent = self.answered = self.undecodable = 0
        self.rss_at_warm_up: int | None = None

    def check(self, raw: bytes) -> None:
        try:
            request = pb.LookupRequest.FromString(raw)
        except DecodeError:
            request = None
        try:
            answer = pb.LookupResponse.FromString(self.lookup(raw, timeout=30))
            assert request is not None and answerable(request), f"answered a bad request {raw[:60]!r}"
            assert len(answer.drafts) == len(request.sequences) and answer.store_version
            self.answered += 1
        except grpc.RpcError as error:
            expected = (
                grpc.StatusCode.NOT_FOUND if request is not None and request.store else grpc.StatusCode.INVALID_ARGUMENT
            )
            assert error.code() == expected, (error.code(), error.details(), raw[:60])
            assert request is None or not answerable(request), f"refused a good request: {error.details()}"
            self.undecodable += request is None
        self.sent += 1
        if self.sent == WARM_UP:
            self.rss_at_warm_up = self.server.memory_info().rss


def test_hostile_requests_get_clean_answers_and_memory_stays_bounded(live_server, record_property):
    process, address = live_server
    sender = Sender(process, address)

    @settings(
        max_examples=REQUESTS // PER_EXAMPLE, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(requests, st.binary(max_size=256), damaged(), wrong_types())
    def every_kind(request: pb.LookupRequest, garbage: bytes, cut: bytes, mistyped: bytes) -> None:
        for raw in (request.SerializeToString(), garbage, cut, mistyped):
            sender.check(raw)

    every_kind()
    rss_after = sender.server.memory_info().rss
    record_property("requests_sent", sender.sent)
    record_property("answered_and_undecodable", (sender.answered, sender.undecodable))
    record_property("server_rss_mib", (round(sender.rss_at_warm_up / 2**20, 1), round(rss_after / 2**20, 1)))
    print(
        f"\n{sender.sent} hostile requests ({sender.answered} answered, {sender.undecodable} undecodable, "
        f"the rest invalid); server RSS {sender.rss_at_warm_up / 2**20:.1f} MiB at request "
        f"{WARM_UP}, {rss_after / 2**20:.1f} MiB at the end"
    )
    assert sender.sent >= REQUESTS
    assert sender.answered > REQUESTS // 100 and sender.undecodable > REQUESTS // 100  # both sides were explored
    assert process.poll() is None, "the server died"
    good = pb.LookupRequest(sequences=[pb.SequenceQuery(tokens=[7, 14])])
    assert len(pb.LookupResponse.FromString(sender.lookup(good.SerializeToString(), timeout=5)).drafts) == 1
    assert rss_after - sender.rss_at_warm_up < RSS_GROWTH_LIMIT
    sender.channel.close()
