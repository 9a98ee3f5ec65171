"""Accepted length of one store on one suite, by replay; and its lookup latency on the same queries."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from datastore_service.draft import DEFAULT_SELECTION
from datastore_service.lookup.index_loader import LookupIndex
from decoder.draft_sources import IndexSource, TimedSource
from decoder.node_budget import NodeBudget
from decoder.replay import Replay, replay


@dataclass(frozen=True)
class Acceptance:
    accepted_length: float  # tokens per target forward, bonus token included (1.0 = nothing accepted)
    tokens: int
    forwards: int
    lookup_us_median: float
    replays: list[Replay]

    def over(self, prompts: Sequence[int]) -> tuple[int, int]:
        """(tokens, target forwards) of the replays of these prompts (indices)."""
        return sum(self.replays[i].tokens for i in prompts), sum(self.replays[i].steps + 1 for i in prompts)


def replay_suite(
    index: LookupIndex,
    prompts: Sequence[Sequence[int]],
    references: Sequence[Sequence[int]],
    max_nodes: int,
    max_new_tokens: int,
    selection: str = DEFAULT_SELECTION,
) -> Acceptance:
    source = TimedSource(IndexSource(index, selection))
    budget = NodeBudget(max_nodes)
    replays = [
        replay(source, budget, prompt, reference, max_new_tokens) for prompt, reference in zip(prompts, references)
    ]
    tokens = sum(r.tokens for r in replays)
    forwards = sum(r.steps + 1 for r in replays)
    return Acceptance(
        tokens / max(forwards, 1),
        tokens,
        forwards,
        statistics.median(source.seconds) * 1e6 if source.seconds else 0.0,
        replays,
    )
