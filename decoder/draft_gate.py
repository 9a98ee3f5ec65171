"""Whether asking for drafts pays at all, lookup included.

The node budget decides how many drafted nodes to verify, but every step that asks for drafts pays
for the lookup itself (a gRPC round trip is ~1-2 ms beside a ~17 ms CPU pass) even when the budget
then verifies none. The gate compares what drafting steps actually deliver, tokens per second of
wall time, with what a plain step delivers (measured when the gate skips, else the cost curve's
single-token pass). When drafting delivers less, it skips the lookup for a while and asks again
later, waiting twice as long after each further disappointment (up to MAX_SKIP steps), so a source
that stops paying costs almost nothing and one that starts paying again is noticed.
"""

from __future__ import annotations

SMOOTHING = 0.2  # weight of the newest step in the running rates
WARM_UP_STEPS = 4  # drafting steps observed before the gate may close
MAX_SKIP = 64


class DraftGate:
    """`plain_step_seconds`: the expected wall time of a step without drafts (None: never close)."""

    def __init__(self, plain_step_seconds: float | None) -> None:
        self.plain_rate = 1.0 / plain_step_seconds if plain_step_seconds else 0.0
        self.draft_rate: float | None = None
        self.drafting_steps = 0
        self.skip = 0  # steps left without a lookup
        self.wait = 1  # length of the next skip

    def should_draft(self) -> bool:
        if self.skip > 0:
            self.skip -= 1
            if self.skip == 0:
                self.draft_rate = None  # the next drafting step is a fresh look, not averaged with the old
            return False
        return True

    def record(self, drafted: bool, tokens_per_sequence: float, seconds: float) -> None:
        """One step: whether it asked for drafts, what each sequence gained, and its wall time."""
        rate = tokens_per_sequence / seconds
        if not drafted:
            self.plain_rate += SMOOTHING * (rate - self.plain_rate)
            return
        self.drafting_steps += 1
        self.draft_rate = rate if self.draft_rate is None else self.draft_rate + SMOOTHING * (rate - self.draft_rate)
        if self.drafting_steps < WARM_UP_STEPS or self.plain_rate == 0.0:
            return
        if self.draft_rate < self.plain_rate:
            self.skip, self.wait = self.wait, min(2 * self.wait, MAX_SKIP)
        else:
            self.wait = 1
