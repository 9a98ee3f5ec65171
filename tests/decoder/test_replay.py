"""Replaying the greedy output gives exactly the steps real decoding takes."""

from __future__ import annotations

import numpy as np
import pytest

from datastore_service.draft import DraftTree
from decoder.draft_sources import NoDrafts
from decoder.node_budget import CostCurve, NodeBudget
from decoder.prompt_lookup import WithPromptLookup
from decoder.replay import matched_path_length, replay
from decoder.speculative import SpeculativeDecoder
from tests.decoder.tiny_models import OracleSource, plain_greedy, tiny_llama, tree

PROMPTS = [[5, 9, 2, 33, 17, 8, 40, 1], [3, 3, 3, 3], [10, 20, 30, 10, 20, 30, 10]]
CURVE = CostCurve([1, 8, 64], [1.0, 1.6, 3.5])


@pytest.mark.parametrize("budget", [NodeBudget(16), NodeBudget(32, CURVE), NodeBudget(2)])
@pytest.mark.parametrize("shape", ["chain", "branchy", "deep", "prompt lookup"])
def test_replay_equals_real_decoding(shape: str, budget: NodeBudget):
    target = tiny_llama(2)
    for prompt in PROMPTS:
        reference = plain_greedy(target, prompt, 40)
        source = (
            WithPromptLookup(NoDrafts()) if shape == "prompt lookup" else OracleSource(len(prompt), reference, shape)
        )
        real = SpeculativeDecoder(target, source, budget).generate(prompt, 40)
        if shape != "prompt lookup":
            source = OracleSource(len(prompt), reference, shape)  # same draws as the real run
        replayed = replay(source, budget, prompt, reference, 40)
        assert real.tokens == reference
        assert replayed.steps == len(real.steps)
        assert replayed.drafted == sum(step.drafted for step in real.steps)
        assert replayed.mean_accepted_length == pytest.approx(real.mean_accepted_length)


def test_matched_path_follows_one_branch():
    draft = tree([4, 5, 6, 7], [-1, -1, 1, 2])
    assert matched_path_length(draft, [5, 6, 7, 8]) == 3
    assert matched_path_length(draft, [4, 6]) == 1
    assert matched_path_length(DraftTree.empty(), [1]) == 0
    assert matched_path_length(draft, []) == 0
    assert np.all(draft.parents < np.arange(len(draft)))
