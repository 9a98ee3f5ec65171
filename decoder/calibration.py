"""How far to trust a draft source: its node probabilities, recalibrated online against what the
target actually accepts.

A source states for every node the probability that the target follows the path to it (corpus
counts for the store, match shares for prompt lookup). Those are estimates from other text; this
sequence's target may agree more or less often. Every verified node is one observation: its stated
probability and whether it ended up on the accepted path. Observations fall into cells of stated
probability and depth in the tree: a source may state the same probability for nodes at depth 1 and
at depth 6 (prompt lookup states the share of matches that continue: 1.0 all along a chain where
every match agrees), but the target follows the deeper one far less often.

The source's overall trust is the ratio of accepted nodes to stated probability mass (1 before any
observation); a cell's calibrated value is its own acceptance rate, shrunk toward the stated value
times that ratio while the cell has few observations. Per depth the values are then made
non-decreasing in the stated probability (pool adjacent violators), and capped by the shallower
depth's, so a child (deeper, stated no higher) never outranks its parent and every prefix of a
ranked tree stays a tree.

Example: a source states 0.5 for 200 nodes of which the target accepted 40. Calibrated, 0.5 is
worth about 0.2; the node budget then verifies fewer of such nodes, and none when even the best
node's calibrated value cannot pay for a wider pass.
"""

from __future__ import annotations

import numpy as np

from datastore_service.draft import DraftTree

try:  # the compiled form of the cells' lookup, counts and fit (step_host_kernel.c), built by the install
    from decoder import _step_host
except ImportError:  # built without a C compiler: numpy and Python answer
    _step_host = None

BINS = 20
# Depth classes: 1, 2, 3, 4-5, 6 and deeper.
DEPTH_STARTS = np.array([1, 2, 3, 4, 6])
PRIOR_WEIGHT = 8.0  # a bin's prior counts as this many observations
TRUST_PRIOR = 4.0  # before any observation, the source is believed as if 4 tokens had confirmed it
# The table is refitted once the nodes observed since the last fit reach REFIT_AFTER and a
# REFIT_SHARE of all observed before, not after every step: a few nodes barely move it, and a fit
# costs a few tenths of a millisecond of host time (against ~16 ms of a CPU pass).
REFIT_AFTER = 16
REFIT_SHARE = 1 / 16


class AcceptanceCalibration:
    def __init__(self, bins: int = BINS, prior_weight: float = PRIOR_WEIGHT) -> None:
        self.bins, self.prior_weight = bins, prior_weight
        shape = (len(DEPTH_STARTS), bins)
        self.verified = np.zeros(shape)
        self.accepted = np.zeros(shape)
        self.stated = np.zeros(shape)  # sum of stated probabilities per cell
        self._table = self._fit()
        # observed since the last fit: (stated probabilities, accepted nodes' indices, depths) per tree
        self._pending: list[tuple[np.ndarray, list[int], np.ndarray]] = []
        self._unfitted = 0  # nodes observed since the last fit
        self._observed = 0  # nodes counted into the cells

    def _cells(self, probabilities: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """Flat cell index (depth class x probability bin) of each node."""
        bins = np.minimum((np.asarray(probabilities, np.float64) * self.bins).astype(np.int64), self.bins - 1)
        classes = np.searchsorted(DEPTH_STARTS, depths, side="right") - 1
        return np.maximum(classes, 0) * self.bins + bins

    def observe(self, probabilities: np.ndarray, accepted: np.ndarray, depths: np.ndarray) -> None:
        """One verified tree: each node's stated probability, whether it was accepted, and its depth."""
        self.observe_accepted(probabilities, np.flatnonzero(accepted).tolist(), depths)

    def observe_accepted(
        self,
        probabilities: np.ndarray,
        accepted_nodes: list[int],
        depths: np.ndarray,
        count: int | None = None,
        compiled: bool = True,
    ) -> None:
        """`observe` given the indices of the accepted nodes (a step's walk: a decode step builds no mask),
        of the first `count` nodes only if given (those verified). `compiled`: counted into the cells at
        once in one call into step_host_kernel.c where it is built (float32 probabilities, int32 depths);
        otherwise pooled until the refit."""
        count = len(probabilities) if count is None else count
        if count == 0:
            return
        if compiled and _step_host is not None and probabilities.dtype == np.float32 and depths.dtype == np.int32:
            cells = (self.verified, self.accepted, self.stated)
            _step_host.observe(probabilities, accepted_nodes, depths, count, DEPTH_STARTS, self.bins, *cells)
        else:
            self._pending.append((probabilities[:count], accepted_nodes, depths[:count]))
        self._unfitted += count
        if self._unfitted >= max(REFIT_AFTER, REFIT_SHARE * self._observed):
            if self._pending:
                self._count_pending()
            self._observed, self._unfitted = self._observed + self._unfitted, 0
            self._table = self._fit(compiled)

    def _count_pending(self) -> None:
        """Fold the pooled observations into the cells (once per refit: a step's own handful of nodes
        would cost three bincounts of a CPU step's host time each)."""
        probabilities = np.concatenate([p for p, _, _ in self._pending]).astype(np.float64)
        firsts = np.cumsum([0] + [len(p) for p, _, _ in self._pending[:-1]])
        accepted = np.zeros(len(probabilities))
        accepted[[first + node for first, (_, nodes, _) in zip(firsts.tolist(), self._pending) for node in nodes]] = 1.0
        cells = self._cells(probabilities, np.concatenate([d for _, _, d in self._pending]))
        size = self.verified.size
        self.verified += np.bincount(cells, minlength=size).reshape(self.verified.shape)
        self.accepted += np.bincount(cells, weights=accepted, minlength=size).reshape(self.verified.shape)
        self.stated += np.bincount(cells, weights=probabilities, minlength=size).reshape(self.verified.shape)
        self._pending = []

    def calibrate(self, probabilities: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """Calibrated acceptance probability of each node (same order; a child never above its parent)."""
        if len(probabilities) == 0:
            return np.asarray(probabilities, np.float64)
        return self._table.ravel()[self._cells(probabilities, depths)]

    def calibrate_tree(self, tree: DraftTree, compiled: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """`calibrate(tree.probabilities, depths)` and the depths (`tree.depths()`); `compiled`: both in one
        call into step_host_kernel.c where it is built and the tree holds float32 probabilities and int32
        parents (the same values)."""
        probabilities, parents = tree.probabilities, tree.parents
        if compiled and _step_host is not None and probabilities.dtype == np.float32 and parents.dtype == np.int32:
            calibrated, depths = np.empty(len(tree)), np.empty(len(tree), np.int32)
            _step_host.calibrated(probabilities, parents, DEPTH_STARTS, self._table, self.bins, calibrated, depths)
            return calibrated, depths
        depths = tree.depths()
        return self.calibrate(probabilities, depths), depths

    @property
    def trust(self) -> float:
        """Accepted nodes per unit of stated probability, over everything observed."""
        return (self.accepted.sum() + TRUST_PRIOR) / (self.stated.sum() + TRUST_PRIOR)

    def _fit(self, compiled: bool = True) -> np.ndarray:
        """The table: per cell its acceptance rate shrunk toward its prior, made non-decreasing per depth
        and capped by the shallower depth's. `compiled`: in one call into step_host_kernel.c where it
        is built (the same rule; its sums run in order, so the trust may differ in its last bits)."""
        if compiled and _step_host is not None:
            table = np.empty_like(self.verified)
            cells = (self.verified, self.accepted, self.stated)
            _step_host.fit(*cells, self.bins, self.prior_weight, TRUST_PRIOR, table)
            return table
        centers = (np.arange(self.bins) + 0.5) / self.bins
        stated = np.where(self.verified > 0, self.stated / np.maximum(self.verified, 1), centers)
        prior = np.minimum(stated * self.trust, 1.0)
        rate = (self.accepted + self.prior_weight * prior) / (self.verified + self.prior_weight)
        table = np.stack([_non_decreasing(r, w) for r, w in zip(rate, self.verified + self.prior_weight)])
        return np.minimum.accumulate(table, axis=0)  # deeper never above shallower, bin by bin


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
