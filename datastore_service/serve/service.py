"""The gRPC DraftStore service: protobuf in, engine lookup, protobuf out."""

from __future__ import annotations

import json
import time

import grpc
import numpy as np

from crest.v1 import datastore_pb2 as pb
from crest.v1 import datastore_pb2_grpc as pb_grpc
from datastore_service.draft import DEFAULT_SELECTION, MAX_BATCH, DraftBatch, QueryBatch, QueryError
from datastore_service.lookup.chaining import chain_trees
from datastore_service.lookup.index_loader import LookupIndex
from datastore_service.serve.metrics import ServiceMetrics
from datastore_service.serve.security import StoreAccess
from datastore_service.serve.stores import ServedStore, StoreSet

SERVER_TIME_KEY = "crest-server-us"
MAX_OBSERVE_TOKENS = 1 << 20
MAX_OBSERVE_SEQUENCES = 4096
SELECTION_NAMES = {
    pb.SELECTION_UNSPECIFIED: DEFAULT_SELECTION,
    pb.SCORED: "scored",
    pb.LONGEST_MATCH: "longest",
    pb.MERGED: "merged",
    pb.CHAINED: "chained",
}


def drafts_to_proto(batch: DraftBatch, store_version: str) -> pb.LookupResponse:
    # Plain lists and extend() on each repeated field: the fastest way into upb messages measured.
    response = pb.LookupResponse(store_version=store_version)
    tokens, parents = batch.tokens.tolist(), batch.parents.tolist()
    probabilities, offsets = batch.probabilities.tolist(), batch.offsets.tolist()
    lengths, scores = batch.context_lengths.tolist(), batch.scores.tolist()
    for i, (length, score) in enumerate(zip(lengths, scores)):
        start, end = offsets[i], offsets[i + 1]
        draft = response.drafts.add(context_length=length, score=score)
        if end > start:
            draft.tokens.extend(tokens[start:end])
            draft.parents.extend(parents[start:end])
            draft.probabilities.extend(probabilities[start:end])
    return response


class DraftStoreService(pb_grpc.DraftStoreServicer):
    def __init__(self, stores: StoreSet, access: StoreAccess, metrics: ServiceMetrics | None = None) -> None:
        self.stores, self.access, self.metrics = stores, access, metrics

    def _fail(self, context: grpc.ServicerContext, store: str, method: str, code: grpc.StatusCode, message: str):
        if self.metrics is not None:
            self.metrics.error(store, method, code.name)
        context.abort(code, message)

    def _store(self, name: str, context: grpc.ServicerContext, method: str) -> ServedStore:
        """The store a call names, if the caller may reach it (a tenant learns nothing of others' names)."""
        resolved = self.stores.resolve(name)
        if not self.access.allows(context.invocation_metadata(), resolved):
            self._fail(
                context, resolved, method, grpc.StatusCode.PERMISSION_DENIED, f"this token may not use store {name!r}"
            )
        try:
            return self.stores.get(name)
        except KeyError:
            what = f"no store named {name!r}" if name else "no default store: name one"
            self._fail(context, resolved, method, grpc.StatusCode.NOT_FOUND, f"{what} on this server")

    def Lookup(self, request: pb.LookupRequest, context: grpc.ServicerContext) -> pb.LookupResponse:
        started = time.perf_counter()
        store = self._store(request.store, context, "Lookup")
        index = store.holder.index  # one version for the whole request, even across a hot reload
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            self._fail(
                context,
                store.name,
                "Lookup",
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "deadline passed before the lookup started",
            )
        selection = SELECTION_NAMES.get(request.selection)
        if selection is None:
            self._fail(
                context,
                store.name,
                "Lookup",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown selection {request.selection}",
            )
        sequences = request.sequences
        try:
            batch = index.prepare(
                [query.tokens for query in sequences],
                np.fromiter((q.max_nodes for q in sequences), np.int64, len(sequences)),
                np.fromiter((q.max_depth for q in sequences), np.int64, len(sequences)),
            )
        except QueryError as exc:
            self._fail(context, store.name, "Lookup", grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        drafts = _answer(store, index, batch, selection)
        response = drafts_to_proto(drafts, index.info.store_version)
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.lookup(store.name, seconds, drafts.context_lengths, len(drafts.tokens))
        # Server-side time, so clients and benchmarks can split it from the network round trip.
        context.set_trailing_metadata(((SERVER_TIME_KEY, str(round(seconds * 1e6))),))
        return response

    def Observe(self, request: pb.ObserveRequest, context: grpc.ServicerContext) -> pb.ObserveResponse:
        store = self._store(request.store, context, "Observe")
        overlay = store.overlay
        if overlay is None:
            self._fail(
                context, store.name, "Observe", grpc.StatusCode.FAILED_PRECONDITION,
                f"store {store.name!r} does not learn (start crest serve with --learn)",
            )  # fmt: skip
        started = time.thread_time()
        try:
            sequences = observed_sequences(request, overlay.vocab_size)
        except QueryError as exc:
            self._fail(context, store.name, "Observe", grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        taken = overlay.observe(sequences, checking_cpu=time.thread_time() - started)
        if self.metrics is not None:
            self.metrics.observed.labels(store.name).inc(taken)
        return pb.ObserveResponse(tokens=taken, store_version=overlay.index.info.store_version)

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
        store = self._store(request.store, context, "Info")
        info = store.holder.index.info
        return pb.InfoResponse(
            store_version=info.store_version,
            tokenizer_name=info.tokenizer_name,
            tokenizer_fingerprint=info.tokenizer_fingerprint,
            vocab_size=info.vocab_size,
            max_context=info.max_context,
            max_depth=info.max_depth,
            max_nodes=info.max_nodes,
            contexts=info.contexts,
            nodes=info.nodes,
            corpus_name=info.corpus_name,
            corpus_tokens=info.corpus_tokens,
            policy=info.policy,
            build_params_json=json.dumps(info.build_params),
            schema_version=info.schema_version,
            crest_version=info.crest_version,
            max_batch=MAX_BATCH,
            store_name=store.name,
            learning=store.overlay is not None,
            observed_tokens=store.overlay.stats.observed_tokens if store.overlay is not None else 0,
        )


def observed_sequences(request: pb.ObserveRequest, vocab_size: int) -> list[np.ndarray]:
    """The request's sequences as arrays, or QueryError: nothing is taken from a bad request."""
    count = len(request.sequences)
    if count == 0:
        raise QueryError("no sequences: send at least one")
    if count > MAX_OBSERVE_SEQUENCES:
        raise QueryError(f"{count} sequences exceed the limit of {MAX_OBSERVE_SEQUENCES} per call")
    lengths = np.fromiter((len(s.tokens) for s in request.sequences), np.int64, count)
    if (lengths == 0).any():
        raise QueryError(f"sequence {int(np.argmax(lengths == 0))}: no tokens")
    total = int(lengths.sum())
    if total > MAX_OBSERVE_TOKENS:
        raise QueryError(f"{total} tokens exceed the limit of {MAX_OBSERVE_TOKENS} per call (split the call)")
    # numpy reads each repeated field in C (about 12x faster than iterating its ints in Python: this
    # runs with the GIL held, so every lookup thread waits while a large Observe call is converted)
    flat = np.concatenate([np.array(s.tokens, np.int64) for s in request.sequences])
    bad = (flat < 0) | (flat >= vocab_size)
    if bad.any():
        position = int(np.argmax(bad))
        row = int(np.searchsorted(np.cumsum(lengths), position, side="right"))
        raise QueryError(f"sequence {row}: token id {flat[position]} is outside the vocabulary [0, {vocab_size})")
    return np.split(flat.astype(np.int32), np.cumsum(lengths)[:-1])


def _answer(store: ServedStore, index: LookupIndex, batch: QueryBatch, selection: str) -> DraftBatch:
    """The index's answer, with the store's learned trees merged in where it learns. CHAINED grows
    the merged answer through the same two, so learned trees are grafted under leaves too."""
    overlay = store.overlay
    if overlay is None:
        return index.lookup_batch(batch, selection)

    def learned(queries: QueryBatch, chosen: str) -> DraftBatch:
        return overlay.lookup(index, queries, index.lookup_batch(queries, chosen), chosen)

    if selection == "chained":
        return chain_trees(lambda queries: learned(queries, "merged"), batch, index.width)
    return learned(batch, selection)
