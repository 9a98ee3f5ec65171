"""How many draft nodes to verify: the count that maximises expected tokens per second.

Verifying q fed tokens costs cost(q) seconds (measured once per model, device, dtype and thread
count, then cached). Keeping the k best nodes of a tree (any prefix of its ranked nodes is a
tree) is expected to emit 1 + sum(probabilities[:k]) tokens. The budget keeps the k that
maximises (1 + sum(probabilities[:k])) / cost(1 + k). On a CPU, verifying 64 tokens costs ~3.5x
one token, so k stays small unless the tree is very sure; on a GPU cost is nearly flat.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import torch

from datastore_service.draft import DraftTree
from datastore_service.paths import cache_dir

from .hf_compat import new_dynamic_cache, with_cache
from .target_model import TargetModel

try:  # the compiled form of `best_count`'s pricing (step_host_kernel.c), built by the install
    from decoder import _step_host
except ImportError:  # built without a C compiler: numpy answers
    _step_host = None

MEASURED_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
# Widths of the static engine's passes: few, so that compiled shapes repeat.
PASS_WIDTHS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class CostCurve:
    fed_tokens: list[int]
    seconds: list[float]
    # What one filler slot adds to a pass (a batch's rows share a width: the short ones are padded).
    # Fillers skip the products but not the attention, which the padded layout pays in full.
    filler_seconds: float = 0.0

    def cost(self, fed: np.ndarray | int) -> np.ndarray:
        """Seconds of a pass feeding `fed` tokens: interpolated, and past the last point extended along
        the last segment (a pass is compute bound there: its cost grows linearly)."""
        fed = np.asarray(fed, np.float64)
        inside = np.interp(fed, self.fed_tokens, self.seconds)
        if len(self.fed_tokens) < 2:
            return inside
        (x0, x1), (y0, y1) = self.fed_tokens[-2:], self.seconds[-2:]
        return np.where(fed > x1, y1 + (fed - x1) * (y1 - y0) / (x1 - x0), inside)

    @classmethod
    def measure_with(
        cls,
        key: str,
        time_pass: Callable[[int], float],
        fed_tokens: Sequence[int],
        time_fillers: Callable[[], float] | None = None,
        repeats: int = 5,
    ) -> CostCurve:
        """The fastest of `repeats` timings of `time_pass(tokens)` per count of fed tokens, and of
        `time_fillers()` (seconds per filler slot), cached under `key`. The fastest, not the median: on
        a busy machine the others measure the neighbours. The counts take turns, one timing each per
        round, so that a burst of other work slows one timing of many counts rather than every timing
        of one; and since a pass never costs less for feeding more, a count timed above a larger one is
        given the larger one's time (the curve kept is the lower envelope)."""
        path = cache_dir("costs") / (key.replace("/", "_").replace(":", "_") + ".json")
        if path.exists():
            return cls(**json.loads(path.read_text()))
        timings: list[Callable[[], float]] = [lambda tokens=tokens: time_pass(tokens) for tokens in fed_tokens]
        if time_fillers is not None:
            timings.append(time_fillers)
        for timing in timings:
            timing()  # warm-up: first-call allocations, kernel selection, compilation
        rounds = [[timing() for timing in timings] for _ in range(repeats)]
        fastest = np.min(rounds, axis=0)
        seconds = np.minimum.accumulate(fastest[: len(fed_tokens)][::-1])[::-1]
        filler_seconds = max(0.0, float(fastest[-1])) if time_fillers is not None else 0.0
        curve = cls(list(fed_tokens), seconds.tolist(), filler_seconds)
        path.write_text(json.dumps(asdict(curve)))
        return curve

    @classmethod
    @torch.inference_mode()
    def measure(cls, target: TargetModel, past: int = 118, repeats: int = 5) -> CostCurve:
        key = f"{target.name}-{target.device}-{target.model.dtype}-{torch.get_num_threads()}threads-past{past}"
        path = cache_dir("costs") / (key.replace("/", "_").replace(":", "_") + ".json")
        if path.exists():
            return cls(**json.loads(path.read_text()))
        model, device = target.model, target.device
        prefix = torch.randint(0, model.config.vocab_size, (1, past), device=device)
        seconds = []
        for size in MEASURED_SIZES:
            samples = []
            for _ in range(repeats + 1):
                cache = new_dynamic_cache(model)
                model(**with_cache(model, cache, input_ids=prefix))
                fed = torch.randint(0, model.config.vocab_size, (1, size), device=device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                model(**with_cache(model, cache, input_ids=fed))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                samples.append(time.perf_counter() - started)
            seconds.append(statistics.median(samples[1:]))
        curve = cls(list(MEASURED_SIZES), seconds)
        path.write_text(json.dumps(asdict(curve)))
        return curve


@dataclass(frozen=True)
class NodeBudget:
    """`max_nodes` caps what is asked of the draft source; with a cost curve, `cut` picks fewer."""

    max_nodes: int = 32
    curve: CostCurve | None = None

    def best_count(self, probabilities: np.ndarray, padded: bool = False, compiled: bool = True) -> int:
        """How many of a tree's ranked nodes to verify: every count priced at once. `padded`: the pass
        is one of the static engine's widths, the nodes it does not fill priced as fillers. `compiled`:
        priced in one call into step_host_kernel.c where it is built (the same count: numpy's is the
        reference)."""
        cap = self.widths()[-1] - 1 if padded else self.max_nodes
        if self.curve is None or len(probabilities) == 0:
            return min(len(probabilities), cap)
        counted = min(len(probabilities), cap)
        if compiled and _step_host is not None and padded and probabilities.dtype == np.float64:
            return _step_host.best_count(probabilities, self._padded_costs, cap)
        expected = np.empty(counted + 1)
        expected[0] = 1.0
        np.cumsum(probabilities[:counted], out=expected[1:])
        expected[1:] += 1.0
        cost = (self._padded_costs if padded else self._costs(counted))[: counted + 1]
        return int(np.argmax(expected / cost))

    @cached_property
    def _padded_costs(self) -> np.ndarray:
        """Seconds of a padded pass verifying 0, 1, ... widest - 1 nodes: the curve at the real tokens fed,
        plus the filler price of the slots up to the width that holds them (priced once, used every step)."""
        widths = np.asarray(self.widths())
        count = np.arange(widths[-1])
        fillers = widths[np.searchsorted(widths, count + 1)] - 1 - count
        return self.curve.cost(1 + count) + self.curve.filler_seconds * fillers

    def _costs(self, counted: int) -> np.ndarray:
        return self.curve.cost(1 + np.arange(counted + 1))

    def cut(self, tree: DraftTree) -> DraftTree:
        return first_nodes(tree, self.best_count(tree.probabilities))

    def widths(self) -> list[int]:
        """Pass widths (root + nodes per sequence) the static engine may use within max_nodes."""
        return self._widths

    @cached_property
    def _widths(self) -> list[int]:
        return [width for width in PASS_WIDTHS if width - 1 <= self.max_nodes]

    def plan_width(self, gains: Sequence[np.ndarray]) -> int:
        """The width of one batched pass that maximises expected tokens per second, each row keeping
        its best width - 1 nodes; `gains[b]` are row b's ranked nodes' acceptance probabilities. The
        curve prices a pass by the tokens it feeds: rows x width."""
        fitting = self._fitting_widths(gains)
        if self.curve is None:
            return fitting[-1]
        running = [np.concatenate([[0.0], np.cumsum(g)]) for g in gains]
        expected = [sum(1.0 + r[min(len(r) - 1, w - 1)] for r in running) for w in fitting]
        cost = self.curve.cost(len(gains) * np.asarray(fitting))
        return fitting[int(np.argmax(np.asarray(expected) / cost))]

    def plan_counts(self, gains: Sequence[np.ndarray], fillers_cost: bool) -> list[int]:
        """Nodes to verify per row in one batched pass, maximising expected tokens per second;
        `gains[b]` are row b's ranked nodes' acceptance probabilities. The rows share a width, the
        short ones padded with fillers. Where fillers cost like real tokens (a CUDA graph replays the
        whole width), every row takes the width's nodes; otherwise, per width, the pass takes the most
        likely nodes of all rows together, as many as pay for themselves: it costs the curve at the
        real tokens it feeds plus the curve's price of each filler."""
        if fillers_cost:
            width = self.plan_width(gains)
            return [min(len(g), width - 1) for g in gains]
        cap = self.widths()[-1] - 1
        if self.curve is None:
            return [min(len(g), cap) for g in gains]
        if len(gains) == 1:
            return [self.best_count(gains[0], padded=True)]
        rows, widths = len(gains), np.asarray(self._fitting_widths(gains))
        kept = [np.asarray(g[: widths[-1] - 1], np.float64) for g in gains]
        values = np.concatenate([np.zeros(0)] + kept)
        owners = np.concatenate([np.zeros(0, np.int64)] + [np.full(len(g), b) for b, g in enumerate(kept)])
        places = np.concatenate([np.zeros(0, np.int64)] + [np.arange(len(g)) for g in kept])
        # Ranked by each row's running minimum, so a node never goes before one ranked above it in
        # its own row: the nodes taken from a row are always its first ones, a tree. A narrower
        # width's ranking is this one without the nodes past it, so every width is priced at once:
        # row w of `inside` marks the nodes width w holds, in ranked order.
        ranks = np.concatenate([np.zeros(0)] + [np.minimum.accumulate(g) for g in kept if len(g)])
        order = np.argsort(-ranks, kind="stable")
        inside = places[order][None, :] < widths[:, None] - 1
        # Prefixes of the ranking per width (a node outside a width repeats the prefix before it).
        taken = np.concatenate([np.zeros((len(widths), 1), np.int64), np.cumsum(inside, axis=1)], axis=1)
        gained = np.concatenate(
            [np.zeros((len(widths), 1)), np.cumsum(np.where(inside, values[order], 0.0), axis=1)], axis=1
        )
        fillers = rows * (widths[:, None] - 1) - taken
        rates = (rows + gained) / (self.curve.cost(rows + taken) + self.curve.filler_seconds * fillers)
        firsts = np.argmax(rates, axis=1)  # per width, the shortest prefix at its best rate
        width = int(np.argmax(rates[np.arange(len(widths)), firsts]))  # the narrowest width at the best
        chosen = order[: firsts[width]][inside[width, : firsts[width]]]
        return np.bincount(owners[chosen], minlength=rows).tolist()

    def _fitting_widths(self, gains: Sequence[np.ndarray]) -> list[int]:
        """The widths up to the first that holds every row's nodes: a wider one only adds fillers."""
        longest = max((len(g) for g in gains), default=0)
        widths = self.widths()
        return [w for w in widths if w - 1 < longest] + [next((w for w in widths if w - 1 >= longest), widths[-1])]

    def width_for(self, fed: int) -> int:
        """The narrowest pass width that holds `fed` tokens per row."""
        return next(width for width in self.widths() if width >= fed)


def first_nodes(tree: DraftTree, count: int) -> DraftTree:
    """The tree's `count` best nodes (a prefix of a ranked tree is a tree)."""
    if count >= len(tree):
        return tree
    probabilities = tree.probabilities[:count]
    return DraftTree(
        tree.tokens[:count],
        tree.parents[:count],
        probabilities,
        tree.context_length if count else 0,
        float(probabilities.sum()),
    )
