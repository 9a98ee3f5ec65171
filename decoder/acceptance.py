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

from .ragged_attention import MAX_FED

try:  # the compiled form of `walk_greedy` (step_host_kernel.c), built by the install
    from decoder import _step_host
except ImportError:  # built without a C compiler: the Python rule answers
    _step_host = None


@dataclass(slots=True)  # not frozen: a frozen dataclass's constructor doubles its share of a step's host time
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
    return walk_greedy(fed_tokens, fed_parents, logits.argmax(dim=-1).tolist())


def walk_greedy(fed_tokens: list[int], fed_parents: list[int], predicted: list[int], compiled: bool = True) -> Accepted:
    """The greedy walk, given the target's argmax after each fed token. `compiled`: in one call into
    step_host_kernel.c where it is built and the tree fits it (the same walk; this rule stays its reference)."""
    if compiled and _step_host is not None and len(fed_tokens) <= MAX_FED:  # what the compiled walk holds
        return Accepted(*_step_host.walk_greedy(fed_tokens, fed_parents, predicted))
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
    top_k: int = 0  # 0 = no top-k filter

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The target's next-token distribution after temperature, top-k and nucleus filtering (float64),
        over the last dimension of `logits`."""
        probs = torch.softmax(logits.double() / self.temperature, dim=-1)
        if self.top_k > 0 and self.top_k < probs.shape[-1]:
            kth = probs.topk(self.top_k, dim=-1).values[..., -1:]
            probs = probs.where(probs >= kth, 0.0)
            probs /= probs.sum(-1, keepdim=True)
        if self.top_p < 1.0:
            ordered, order = probs.sort(dim=-1, descending=True)
            outside = ordered.cumsum(-1) - ordered >= self.top_p  # keep the smallest prefix reaching top_p
            ordered[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
            probs /= probs.sum(-1, keepdim=True)
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


@dataclass(frozen=True)
class SamplingTargets:
    """What the sampling walk needs of one pass, computed on the device for every fed token at once:
    `drafted_probability[b, i]`: the target's probability of fed token i after its parent;
    `bonus[b, i]`: a token drawn from the target's distribution after fed token i with i's drafted
    children removed (the residual when all of them are rejected)."""

    drafted_probability: list[list[float]]
    bonus: list[list[int]]


def sampling_targets(
    logits: torch.Tensor,
    fed_tokens: list[list[int]],
    fed_parents: list[list[int]],
    params: SamplingParams,
    generator: torch.Generator | None,
) -> SamplingTargets:
    """`logits` [rows, q, vocab]; fed tokens past a row's tree are fillers and are ignored."""
    rows, width, vocab = logits.shape
    device = logits.device
    probs = params.distribution(logits)  # float64 [rows, q, vocab]
    parent = torch.zeros(rows, width, dtype=torch.long)
    token = torch.zeros(rows, width, dtype=torch.long)
    real = torch.zeros(rows, width, dtype=torch.bool)
    for b, (tokens, parents) in enumerate(zip(fed_tokens, fed_parents)):
        parent[b, 1 : len(parents)] = torch.tensor(parents[1:], dtype=torch.long)
        token[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        real[b, 1 : len(tokens)] = True
    # Fed token i (i >= 1) drafts token[i] from its parent's distribution: row parent[i] of the pass.
    where = (parent * vocab + token).to(device)
    real = real.to(device)
    flat = probs.flatten(1)
    drafted = flat.gather(1, where).where(real, 0.0)
    residual = flat.clone()
    rows_of = torch.arange(rows, device=device)[:, None].expand(rows, width)
    residual[rows_of[real], where[real]] = 0.0
    residual = residual.view(rows * width, vocab)
    empty = residual.sum(-1) <= 0  # every token of the support was drafted: some child is surely accepted
    residual[empty] = 1.0
    bonus = torch.multinomial(residual.float(), 1, generator=generator).view(rows, width)
    return SamplingTargets(drafted.tolist(), bonus.tolist())


def walk_sampling(
    fed_tokens: list[int],
    fed_parents: list[int],
    drafted_probability: list[float],
    bonus: list[int],
    generator: torch.Generator | None,
) -> Accepted:
    """The sampling walk of `accept_sampling`, on precomputed targets: child c of a node is accepted
    with p(c) / (1 - sum of p over its rejected elder siblings), which is p(c) under the residual."""
    children = _children(fed_parents)
    node, path = 0, []
    while True:
        rejected = 0.0
        for child in children.get(node, ()):
            left = 1.0 - rejected
            chance = drafted_probability[child] / left if left > 0 else 0.0
            if float(torch.rand((), generator=generator, dtype=torch.float64)) < chance:
                path.append(child)
                node = child
                break
            rejected += drafted_probability[child]
        else:
            return Accepted(path, [fed_tokens[i] for i in path] + [bonus[node]])
