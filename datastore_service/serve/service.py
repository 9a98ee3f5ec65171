"""The gRPC DraftStore service: protobuf in, engine lookup, protobuf out."""

from __future__ import annotations

import json
import time

import grpc
import numpy as np

from crest.v1 import datastore_pb2 as pb
from crest.v1 import datastore_pb2_grpc as pb_grpc
from datastore_service.draft import MAX_BATCH, DraftBatch, QueryError
from datastore_service.serve.index_holder import IndexHolder

SERVER_TIME_KEY = "crest-server-us"
SELECTION_NAMES = {pb.SELECTION_UNSPECIFIED: "scored", pb.SCORED: "scored", pb.LONGEST_MATCH: "longest"}


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
    def __init__(self, holder: IndexHolder) -> None:
        self.holder = holder

    def Lookup(self, request: pb.LookupRequest, context: grpc.ServicerContext) -> pb.LookupResponse:
        started = time.perf_counter()
        index = self.holder.index  # one version for the whole request, even across a hot reload
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the lookup started")
        selection = SELECTION_NAMES.get(request.selection)
        if selection is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown selection {request.selection}")
        sequences = request.sequences
        try:
            batch = index.prepare(
                [query.tokens for query in sequences],
                np.fromiter((q.max_nodes for q in sequences), np.int64, len(sequences)),
                np.fromiter((q.max_depth for q in sequences), np.int64, len(sequences)),
            )
        except QueryError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        response = drafts_to_proto(index.lookup_batch(batch, selection), index.info.store_version)
        # Server-side time, so clients and benchmarks can split it from the network round trip.
        context.set_trailing_metadata(((SERVER_TIME_KEY, str(round((time.perf_counter() - started) * 1e6))),))
        return response

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
        info = self.holder.index.info
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
        )
