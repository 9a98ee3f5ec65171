"""Where drafts come from, behind one small interface: the datastore service over gRPC, the
same engine in process, or (evaluation) the REST baseline. The decode loop can't tell them apart."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from datastore_service.draft import DEFAULT_SELECTION, DraftTree
from datastore_service.lookup.index_loader import LookupIndex


class DraftSource(Protocol):
    max_context: int

    def drafts(self, contexts: Sequence[Sequence[int]], max_nodes: int) -> list[DraftTree]:
        """One draft tree per context (each the newest tokens of a sequence, oldest first)."""
        ...


class NoDrafts:
    """Plain decoding through the same loop: every draft is empty."""

    max_context = 1

    def drafts(self, contexts: Sequence[Sequence[int]], max_nodes: int) -> list[DraftTree]:
        return [DraftTree.empty() for _ in contexts]


class IndexSource:
    """The serving engine in this process (no network)."""

    def __init__(self, index: LookupIndex, selection: str = DEFAULT_SELECTION) -> None:
        self.index, self.selection = index, selection
        self.max_context = index.width

    def drafts(self, contexts: Sequence[Sequence[int]], max_nodes: int) -> list[DraftTree]:
        tails = [c[-self.max_context :] if type(c) is list else list(c[-self.max_context :]) for c in contexts]
        return self.index.lookup_trees(tails, max_nodes, self.selection)


class ServiceSource:
    """A `crest serve` replica set, through the gRPC client."""

    def __init__(self, client, selection: str | None = None) -> None:
        """`selection` None: the server's default, so a newer client still works with an older server."""
        self.client, self.selection = client, selection
        self.max_context = client.info().max_context

    def drafts(self, contexts: Sequence[Sequence[int]], max_nodes: int) -> list[DraftTree]:
        tails = [list(c[-self.max_context :]) for c in contexts]
        return self.client.lookup(tails, max_nodes=max_nodes, selection=self.selection)


class TimedSource:
    """Any source, with the wall time of each lookup recorded (latency reports)."""

    def __init__(self, inner: DraftSource) -> None:
        self.inner, self.max_context = inner, inner.max_context
        self.seconds: list[float] = []

    def drafts(self, contexts: Sequence[Sequence[int]], max_nodes: int) -> list[DraftTree]:
        started = time.perf_counter()
        trees = self.inner.drafts(contexts, max_nodes)
        self.seconds.append(time.perf_counter() - started)
        return trees
