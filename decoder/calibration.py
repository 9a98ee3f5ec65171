"""How far to trust a draft source: its node probabilities, recalibrated online against what the
target actually accepts.

A source states for every node the probability that the target follows the path to it (corpus
counts for the store, match shares for prompt lookup). Those are estimates from other text; this
sequence's target may agree more or less often. Every verified node is one observation: its stated
probability and whether it ended up on the accepted path. Observations fall into bins of stated
probability. The source's overall trust is the ratio of accepted nodes to stated probability mass
(1 before any observation); a bin's calibrated value is its own acceptance rate, shrunk toward the
stated value times that ratio while the bin has few observations. The bins are then made
non-decreasing (pool adjacent violators), so a child never outranks its parent and every prefix of
a ranked tree stays a tree.

Example: a source states 0.5 for 200 nodes of which the target accepted 40. Calibrated, 0.5 is
worth about 0.2; the node budget then verifies fewer of such nodes, and none when even the best
node's calibrated value cannot pay for a wider pass.
"""

from __future__ import annotations

import numpy as np

BINS = 20
PRIOR_WEIGHT = 8.0  # a bin's prior counts as this many observations
TRUST_PRIOR = 4.0  # before any observation, the source is believed as if 4 tokens had confirmed it
# The table is refitted once this many nodes were observed since the last fit, not after every step:
# a few nodes barely move it, and the fit would be a tenth of a millisecond of every CPU step.
REFIT_AFTER = 16


class AcceptanceCalibration:
    def __init__(self, bins: int = BINS, prior_weight: float = PRIOR_WEIGHT) -> None:
        self.bins, self.prior_weight = bins, prior_weight
        self.verified = np.zeros(bins)
        self.accepted = np.zeros(bins)
        self.stated = np.zeros(bins)  # sum of stated probabilities per bin
        self._table = self._fit()
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # observed since the table was fitted
        self._unfitted = 0  # nodes in _pending

    def _bin(self, probabilities: np.ndarray) -> np.ndarray:
        return np.minimum((np.asarray(probabilities, np.float64) * self.bins).astype(np.int64), self.bins - 1)

    def observe(self, probabilities: np.ndarray, accepted: np.ndarray) -> None:
        """One verified tree: each node's stated probability and whether it was accepted."""
        if len(probabilities) == 0:
            return
        self._pending.append((probabilities, accepted))
        self._unfitted += len(probabilities)
        if self._unfitted >= REFIT_AFTER:
            self._count_pending()
            self._table = self._fit()

    def _count_pending(self) -> None:
        """Fold the pooled observations into the bins (once per refit: a step's own handful of nodes
        would cost three bincounts of a CPU step's host time each)."""
        probabilities = np.concatenate([p for p, _ in self._pending]).astype(np.float64)
        accepted = np.concatenate([a for _, a in self._pending]).astype(np.float64)
        bins = self._bin(probabilities)
        self.verified += np.bincount(bins, minlength=self.bins)
        self.accepted += np.bincount(bins, weights=accepted, minlength=self.bins)
        self.stated += np.bincount(bins, weights=probabilities, minlength=self.bins)
        self._pending, self._unfitted = [], 0

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated acceptance probability of each node (same order, non-increasing where the input is)."""
        if len(probabilities) == 0:
            return np.asarray(probabilities, np.float64)
        return self._table[self._bin(probabilities)]

    @property
    def trust(self) -> float:
        """Accepted nodes per unit of stated probability, over everything observed."""
        return (self.accepted.sum() + TRUST_PRIOR) / (self.stated.sum() + TRUST_PRIOR)

    def _fit(self) -> np.ndarray:
        centers = (np.arange(self.bins) + 0.5) / self.bins
        stated = np.where(self.verified > 0, self.stated / np.maximum(self.verified, 1), centers)
        prior = np.minimum(stated * self.trust, 1.0)
        rate = (self.accepted + self.prior_weight * prior) / (self.verified + self.prior_weight)
        return _non_decreasing(rate, self.verified + self.prior_weight)


def _non_decreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted pool-adjacent-violators: the closest non-decreasing sequence."""
    blocks: list[list[float]] = []  # [weighted mean, weight, count]
    for value, weight in zip(values.tolist(), weights.tolist()):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            value2, weight2, count2 = blocks.pop()
            value1, weight1, count1 = blocks.pop()
            total = weight1 + weight2
            blocks.append([(value1 * weight1 + value2 * weight2) / total, total, count1 + count2])
    return np.concatenate([np.full(count, value) for value, _, count in blocks])
