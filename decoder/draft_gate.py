"""Whether asking for drafts pays at all, lookup included.

The node budget decides how many drafted nodes to verify, but every step that asks for drafts pays
for the lookup itself (a gRPC round trip is ~1-2 ms beside a ~4-17 ms CPU pass) even when the budget
then verifies none. The gate compares what each drafting step actually delivers, tokens per second
of wall time, with what a plain step would have delivered at that moment: the step's own pass,
rescaled by the engine's cost curve to one token per row. (This machine's speed moves within
minutes: a plain rate taken from the curve alone, or measured some minutes before, misjudges by up
to a third, and kept drafting that did not pay.) A plain step's own host time is left out of what
it would have taken, so drafting must beat it by that (~2%).

When drafting delivers less, the gate skips the lookup for a while and then looks again, waiting
twice as long after each further disappointment (up to MAX_SKIP steps), so a source that stops
paying costs almost nothing and one that starts paying again is noticed. Since it (re)opened, the
gate judges the plain mean of its looks, and only a trial of WARM_UP_STEPS looks that pays on the
whole shortens the wait again: one look that happened to be accepted (a 1-node draft on a prompt
that rarely repeats) neither keeps it open through the failures after it nor restarts the backoff.
"""

from __future__ import annotations

SMOOTHING = 0.2  # past a trial, the weight of the newest look in the running gain
WARM_UP_STEPS = 4  # looks of the first trial (the gate may not close before), and of a trial that pays
MAX_SKIP = 64


class DraftGate:
    """`judging`: whether the gate may close (False: always ask, e.g. with no cost curve to judge by)."""

    def __init__(self, judging: bool) -> None:
        self.judging = judging
        self.gain: float | None = None  # looks' tokens per second over a plain step's, since the gate opened
        self.looks = 0  # drafting steps since the gate (re)opened
        self.closed_before = False
        self.skip = 0  # steps left without a lookup
        self.wait = 1  # length of the next skip

    def should_draft(self) -> bool:
        if self.skip > 0:
            self.skip -= 1
            return False
        return True

    def record(self, drafted: bool, tokens_per_sequence: float, seconds: float, plain_seconds: float) -> None:
        """One step: whether it asked for drafts, what each sequence gained, its wall time, and what a
        plain step (one token a sequence) would have taken at the same moment."""
        if not drafted or not self.judging:
            return
        self.looks += 1
        gain = tokens_per_sequence * plain_seconds / seconds
        weight = max(1.0 / self.looks, SMOOTHING)  # the plain mean over a trial, then a running one
        self.gain = gain if self.gain is None else self.gain + weight * (gain - self.gain)
        if self.gain < 1.0 and (self.closed_before or self.looks >= WARM_UP_STEPS):
            self.skip, self.wait = self.wait, min(2 * self.wait, MAX_SKIP)
            self.gain, self.looks, self.closed_before = None, 0, True
        elif self.gain >= 1.0 and self.looks >= WARM_UP_STEPS:
            self.wait = 1
