"""Accepted length of one store on one suite, by replay; and its lookup latency on the same queries."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from datastore_service.draft import DraftTree
from datastore_service.index_loader import LookupIndex

from ..draft_sources import IndexSource
from ..node_budget import NodeBudget
from ..replay import Replay, replay


class TimedSource(IndexSource):
    """An in-process source that records how long each lookup takes."""

    def __init__(self, index: LookupIndex) -> None:
        super().__init__(index)
        self.seconds: list[float] = []

    def drafts(self, contexts: Sequence[Sequence[int]], max_nodes: int) -> list[DraftTree]:
        started = time.perf_counter()
        trees = super().drafts(contexts, max_nodes)
        self.seconds.append(time.perf_counter() - started)
        return trees


@dataclass(frozen=True)
class Acceptance:
    accepted_length: float     # tokens per target forward, bonus token included (1.0 = nothing accepted)
    tokens: int
    forwards: int
    lookup_us_median: float
    replays: list[Replay]


def replay_suite(index: LookupIndex, prompts: Sequence[Sequence[int]], references: Sequence[Sequence[int]],
                 max_nodes: int, max_new_tokens: int) -> Acceptance:
    source = TimedSource(index)
    budget = NodeBudget(max_nodes)
    replays = [replay(source, budget, prompt, reference, max_new_tokens)
               for prompt, reference in zip(prompts, references)]
    tokens = sum(r.tokens for r in replays)
    forwards = sum(r.steps + 1 for r in replays)
    return Acceptance(tokens / max(forwards, 1), tokens, forwards,
                      statistics.median(source.seconds) * 1e6 if source.seconds else 0.0, replays)
