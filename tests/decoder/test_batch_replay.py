"""benchmarks/batch_replay.py: the engine's loop replayed against a recording decodes the recording,
prices every pass by the cost curve, and its oracle verifies only nodes the target accepts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from decoder.draft_sources import NoDrafts
from decoder.engine import TreeEngine
from decoder.node_budget import CostCurve, NodeBudget
from tests.decoder.test_engine import BATCH
from tests.decoder.tiny_models import BatchOracle, tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from batch_replay import AcceptedOnly, Recording, ReplayEngine  # noqa: E402

CURVE = CostCurve([1, 2, 4, 8, 16, 32, 64], [0.010, 0.011, 0.012, 0.014, 0.018, 0.026, 0.042])


@pytest.fixture(scope="module")
def recorded():
    llama = tiny_llama()
    outputs = [g.tokens for g in TreeEngine(llama, NoDrafts(), NodeBudget(0)).generate_batch(BATCH, 20, rows=2)]
    return llama, Recording(BATCH, outputs), outputs


def test_the_recording_answers_what_follows_a_history_and_refuses_others(recorded):
    _, recording, outputs = recorded
    assert recording.ahead(BATCH[2] + outputs[2][:5]) == outputs[2][5:]
    with pytest.raises(ValueError, match="not a recorded prompt"):
        recording.ahead(BATCH[2] + [(outputs[2][0] + 1) % 64])
    # root, a right child, a wrong child, a right grandchild under the right child
    ahead = outputs[0]
    fed = [BATCH[0][-1], ahead[0], (ahead[0] + 1) % 64, ahead[1]]
    assert recording.verdicts(fed, [-1, 0, 0, 1], BATCH[0]) == [ahead[0], ahead[1], 0, ahead[2]]


@pytest.mark.parametrize("oracle", [False, True])
def test_a_replay_decodes_the_recording_and_prices_each_pass(recorded, oracle: bool):
    llama, recording, outputs = recorded
    source = BatchOracle({tuple(p): o for p, o in zip(BATCH, outputs)})  # true chains and a wrong sibling
    if oracle:
        source = AcceptedOnly(source, recording)
    engine = ReplayEngine(llama, source, NodeBudget(15, CURVE), recording, CURVE)
    generations = engine.generate_batch(BATCH, 20, rows=2)
    assert [g.tokens for g in generations] == outputs
    steps = [s for g in generations for s in g.steps]
    verified, accepted = sum(s.drafted for s in steps), sum(s.accepted for s in steps)
    assert verified > 0 and (accepted == verified) == oracle  # the wrong siblings are verified, then refused

    plain = ReplayEngine(llama, NoDrafts(), NodeBudget(0, CURVE), recording, CURVE)
    plain.generate_batch(BATCH, 20, rows=2)
    assert plain.fed_tokens == plain.row_passes == sum(len(o) for o in outputs) - len(BATCH)
    both_rows = plain.row_passes - plain.passes  # passes of 2 rows; the others fed 1
    expected = both_rows * float(CURVE.cost(2)) + (plain.passes - both_rows) * float(CURVE.cost(1))
    assert plain.priced_seconds == pytest.approx(expected)
