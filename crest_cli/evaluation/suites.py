"""The two benchmarks of the evaluation: which prompts, how they are encoded, which corpus drafts them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from crest_cli.benchmark_prompts import humaneval_prompts, mtbench_questions


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    corpus: str  # default corpus preset of its stores
    chat: bool  # prompts go through the chat template
    prompts: Callable[[int | None], list[str]]


SUITES = {
    "humaneval": Suite("humaneval", "HumanEval", "stdlib", chat=False, prompts=humaneval_prompts),
    "mtbench": Suite("mtbench", "MT-Bench", "sharegpt", chat=True, prompts=mtbench_questions),
}
