"""Replay is only a shortcut: on a subset, decode for real and check it takes exactly the same steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from datastore_service.draft import DEFAULT_SELECTION
from datastore_service.lookup.index_loader import LookupIndex
from decoder.draft_sources import IndexSource
from decoder.node_budget import NodeBudget
from decoder.replay import Replay
from decoder.speculative import SpeculativeDecoder
from decoder.target_model import TargetModel


@dataclass(frozen=True)
class RealCheck:
    suite: str
    store: str
    prompt: int
    same_tokens: bool  # speculative output == the cached plain greedy output
    real_forwards: int
    replay_forwards: int
    real_accepted_length: float
    replay_accepted_length: float

    @property
    def agrees(self) -> bool:
        return self.same_tokens and self.real_forwards == self.replay_forwards


def check_replays(
    target: TargetModel,
    suite: str,
    store: str,
    index: LookupIndex,
    prompts: Sequence[Sequence[int]],
    references: Sequence[Sequence[int]],
    replays: Sequence[Replay],
    max_nodes: int,
    max_new_tokens: int,
    selection: str = DEFAULT_SELECTION,
) -> list[RealCheck]:
    decoder = SpeculativeDecoder(target, IndexSource(index, selection), NodeBudget(max_nodes))
    checks = []
    for number, (prompt, reference, replayed) in enumerate(zip(prompts, references, replays)):
        real = decoder.generate(prompt, max_new_tokens)
        checks.append(
            RealCheck(
                suite,
                store,
                number,
                real.tokens == list(reference[:max_new_tokens]),
                len(real.steps) + 1,
                replayed.steps + 1,
                real.mean_accepted_length,
                replayed.mean_accepted_length,
            )
        )
    return checks
