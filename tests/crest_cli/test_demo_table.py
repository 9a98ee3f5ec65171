"""The demo's table: each configuration's ratio to plain decoding is taken within a round."""

from crest_cli.demo import CONFIGURATIONS, _row
from decoder.speculative import Generation


def _run(tokens: list[int], seconds: float) -> Generation:
    return Generation(tokens=list(tokens), prefill_seconds=seconds)  # no steps: all its time in the prefill


def test_a_fast_moment_of_plain_decoding_does_not_set_the_row():
    """Every configuration runs as fast as plain decoding within each round, but plain decoding alone
    caught a moment twice as fast in one round: the row shows 1.00x (each one's faster run, the old
    rule, showed 0.50x)."""
    tokens = list(range(64))
    rounds = [{name: _run(tokens, 1.0) for name in ("plain", *CONFIGURATIONS)} for _ in range(3)]
    rounds[0]["plain"] = _run(tokens, 0.5)
    row = _row("p", rounds)
    assert row[1] == "64.0"  # plain's median tokens/s
    assert row[2:5] == ["1.00x (64.0)"] * 3  # medians of 0.5x, 1.0x, 1.0x; 64 tokens in one forward each
    assert row[5] == "yes"


def test_the_row_says_when_an_output_differs_from_plain_decoding():
    tokens = list(range(8))
    rounds = [{name: _run(tokens, 1.0) for name in ("plain", *CONFIGURATIONS)} for _ in range(3)]
    rounds[1]["both"] = _run(tokens[:-1] + [99], 1.0)
    assert _row("p", rounds)[5] == "NO"
