"""The benchmarks of the evaluation: which prompts, how they are encoded, which corpus drafts them,
and the two fixed halves every suite's prompts are split into (held-in and held-out)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
    # the same prompts, drafted from a corpus several times the stdlib's (stdlib + site-packages)
    "humaneval-python": Suite("humaneval-python", "HumanEval", "python", chat=False, prompts=humaneval_prompts),
}


def halves(suite: str, count: int) -> tuple[list[int], list[int]]:
    """Two fixed halves of a suite's first `count` prompts (indices), drawn by a generator seeded
    with the suite's prompts' name: whatever is tuned on one half is scored on the other."""
    family = suite.split("-")[0]  # a suite and its large-corpus twin share halves
    order = np.random.default_rng(zlib.crc32(family.encode())).permutation(count)
    return sorted(order[: count // 2].tolist()), sorted(order[count // 2 :].tolist())
