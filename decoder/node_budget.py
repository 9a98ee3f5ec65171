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
from dataclasses import asdict, dataclass

import numpy as np
import torch
from transformers import DynamicCache

from datastore_service.draft import DraftTree
from datastore_service.paths import cache_dir

from .target_model import TargetModel

MEASURED_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


@dataclass(frozen=True)
class CostCurve:
    fed_tokens: list[int]
    seconds: list[float]

    def cost(self, fed: np.ndarray | int) -> np.ndarray:
        return np.interp(fed, self.fed_tokens, self.seconds)

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
                cache = DynamicCache(config=model.config)
                model(input_ids=prefix, cache=cache, use_cache=True)
                fed = torch.randint(0, model.config.vocab_size, (1, size), device=device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                model(input_ids=fed, cache=cache, use_cache=True)
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

    def best_count(self, probabilities: np.ndarray) -> int:
        if self.curve is None or len(probabilities) == 0:
            return min(len(probabilities), self.max_nodes)
        k = np.arange(min(len(probabilities), self.max_nodes) + 1)
        expected = 1.0 + np.concatenate([[0.0], np.cumsum(probabilities[: k[-1]])])
        return int(np.argmax(expected / self.curve.cost(1 + k)))

    def cut(self, tree: DraftTree) -> DraftTree:
        keep = self.best_count(tree.probabilities)
        if keep == len(tree):
            return tree
        probabilities = tree.probabilities[:keep]
        return DraftTree(
            tree.tokens[:keep],
            tree.parents[:keep],
            probabilities,
            tree.context_length if keep else 0,
            float(probabilities.sum()),
        )
