"""Verification inputs for one forward pass over a draft tree (tree attention).

The pass feeds the sequence's newest token (the root: sampled last step, not yet in the KV
cache) followed by the draft nodes. Each fed token attends to the whole cache and to its own
ancestors in the tree, and sits at position `past + depth`, so its logits are exactly those a
plain causal pass along its branch would give.

Example: root r, nodes a (after r), b (after a), c (after r). Fed: [r, a, b, c];
positions past+[0, 1, 2, 1]; c sees r and itself, not a or b.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from datastore_service.draft import DraftTree


@dataclass(frozen=True)
class TreeInputs:
    input_ids: torch.Tensor  # [1, 1 + n]
    position_ids: torch.Tensor  # [1, 1 + n]
    attention_mask: torch.Tensor  # [1, 1, 1 + n, past + 1 + n], additive: 0 = attend, min = blocked
    fed_parents: list[int]  # parent of each fed token in fed order (-1 for the root)


def tree_inputs(
    root_token: int, tree: DraftTree, past_length: int, dtype: torch.dtype, device: torch.device
) -> TreeInputs:
    n = len(tree)
    fed_parents = [-1] + [int(p) + 1 for p in tree.parents]
    ancestors = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    depth = [0] * (n + 1)
    ancestors[0, 0] = True
    for i in range(1, n + 1):  # parents precede children
        parent = fed_parents[i]
        ancestors[i] = ancestors[parent]
        ancestors[i, i] = True
        depth[i] = depth[parent] + 1
    mask = torch.zeros(n + 1, past_length + n + 1, dtype=dtype)
    mask[:, past_length:].masked_fill_(~ancestors, torch.finfo(dtype).min)
    tokens = [root_token] + [int(t) for t in tree.tokens]
    return TreeInputs(
        input_ids=torch.tensor([tokens], device=device),
        position_ids=torch.tensor([[past_length + d for d in depth]], device=device),
        attention_mask=mask[None, None].to(device),
        fed_parents=fed_parents,
    )
