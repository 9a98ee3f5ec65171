"""Whether asking for drafts pays at all, lookup included.

The node budget decides how many drafted nodes to verify, but every step that asks for drafts pays
for the lookup itself (a gRPC round trip is ~1-2 ms beside a ~4-17 ms CPU pass) even when the budget
then verifies none. The gate compares what each drafting step actually delivers, tokens per second
of wall time, with what a plain step would have delivered at that moment: the step's own pass,
rescaled by the engine's cost curve to one token per row. (This machine's speed moves within
minutes: a plain rate taken from the curve alone, or measured some minutes before, misjudges by up
to a third, and kept drafting that did not pay.) A plain step's own host time is left out of what
it would have taken, so drafting must beat it by that (~2%). When drafting delivers less, the gate
skips the lookup for a while and asks again later, waiting twice as long after each further
disappointment (up to MAX_SKIP steps), so a source that stops paying costs almost nothing and one
that starts paying again is noticed.
"""

from __future__ import annotations

SMOOTHING = 0.2  # weight of the newest step in the running gain
WARM_UP_STEPS = 4  # drafting steps observed before the gate may close
MAX_SKIP = 64


class DraftGate:
    """`judging`: whether the gate may close (False: always ask, e.g. with no cost curve to judge by)."""

    def __init__(self, judging: bool) -> None:
        self.judging = judging
        self.gain: float | None = None  # drafting steps' tokens per second over a plain step's, smoothed
        self.drafting_steps = 0
        self.skip = 0  # steps left without a lookup
        self.wait = 1  # length of the next skip

    def should_draft(self) -> bool:
        if self.skip > 0:
            self.skip -= 1
            if self.skip == 0:
                self.gain = None  # the next drafting step is a fresh look, not averaged with the old
            return False
        return True

    def record(self, drafted: bool, tokens_per_sequence: float, seconds: float, plain_seconds: float) -> None:
        """One step: whether it asked for drafts, what each sequence gained, its wall time, and what a
        plain step (one token a sequence) would have taken at the same moment."""
        if not drafted or not self.judging:
            return
        self.drafting_steps += 1
        gain = tokens_per_sequence * plain_seconds / seconds
        self.gain = gain if self.gain is None else self.gain + SMOOTHING * (gain - self.gain)
        if self.drafting_steps < WARM_UP_STEPS:
            return
        if self.gain < 1.0:
            self.skip, self.wait = self.wait, min(2 * self.wait, MAX_SKIP)
        else:
            self.wait = 1
