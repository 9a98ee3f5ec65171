"""Which drafted tokens the target accepts, from the logits of one tree-attention pass.

Greedy: walk down from the root, following the child whose token is the target's argmax; the
first argmax with no such child is the bonus token. Output equals plain greedy decoding.

Sampling: each drafted token is a fixed proposal. At a node, try its children in rank order:
accept child x with probability p(x) under the target's (residual) distribution p; on rejection
set p(x) = 0 and renormalize. If every child is rejected, sample the bonus token from what is
left. Each step then draws exactly from p, so sampling keeps the target's distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Accepted:
    fed_path: list[int]  # fed indices (1-based: 0 is the root) of the accepted nodes, root to leaf
    tokens: list[int]  # their tokens, then the bonus token


def _children(fed_parents: list[int]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for index, parent in enumerate(fed_parents[1:], start=1):
        children.setdefault(parent, []).append(index)
    return children


def accept_greedy(fed_tokens: list[int], fed_parents: list[int], logits: torch.Tensor) -> Accepted:
    """`logits` [1 + n, vocab] of the fed tokens."""
    predicted = logits.argmax(dim=-1).tolist()
    children = _children(fed_parents)
    node, path = 0, []
    while True:
        match = next((c for c in children.get(node, ()) if fed_tokens[c] == predicted[node]), None)
        if match is None:
            return Accepted(path, [fed_tokens[i] for i in path] + [predicted[node]])
        path.append(match)
        node = match


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The target's next-token distribution after temperature and nucleus filtering (float64)."""
        probs = torch.softmax(logits.double() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            outside = ordered.cumsum(-1) - ordered >= self.top_p  # keep the smallest prefix reaching top_p
            ordered[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
            probs /= probs.sum()
        return probs


def accept_sampling(
    fed_tokens: list[int],
    fed_parents: list[int],
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> Accepted:
    children = _children(fed_parents)
    node, path = 0, []
    while True:
        residual = params.distribution(logits[node])
        for child in children.get(node, ()):
            token = fed_tokens[child]
            if torch.rand((), generator=generator, dtype=torch.float64) < residual[token]:
                path.append(child)
                node = child
                break
            residual[token] = 0.0
            residual /= residual.sum()
        else:
            bonus = int(torch.multinomial(residual.float(), 1, generator=generator))
            return Accepted(path, [fed_tokens[i] for i in path] + [bonus])
