"""Run by test_transformers_floor.py under the lowest transformers pyproject allows: both decode
loops give `generate`'s greedy output on a tiny Llama, with drafts of every shape."""

from __future__ import annotations

import transformers

from decoder.engine import TreeEngine
from decoder.node_budget import NodeBudget
from decoder.speculative import SpeculativeDecoder
from tests.decoder.tiny_models import OracleSource, plain_greedy, tiny_llama

PROMPT = [5, 9, 2, 33, 17, 8, 40, 1]


def main() -> None:
    target = tiny_llama()
    reference = plain_greedy(target, PROMPT, 30)
    for shape in ("chain", "branchy", "wide"):
        for loop in (TreeEngine, SpeculativeDecoder):
            generation = loop(target, OracleSource(len(PROMPT), reference, shape), NodeBudget(16)).generate(PROMPT, 30)
            assert generation.tokens == reference, (loop.__name__, shape)
            assert generation.mean_accepted_length > 1.3, (loop.__name__, shape)  # drafts were used
    print(f"transformers {transformers.__version__}: identical")


if __name__ == "__main__":
    main()
