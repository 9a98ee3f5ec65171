"""Several sequences decoded together: one batched draft lookup and one forward pass per step.

Layout: sequences are left-padded at prefill. Each step feeds, per sequence, its newest token and
its draft tree, padded to the batch's largest tree with filler nodes that attend only to
themselves. After acceptance every sequence appends the same number of cache slots (1 + the
batch's longest accepted path): its kept entries first, the rest marked invalid. A boolean
`valid[B, T]` records which cache slots each sequence may attend to, and `lengths[B]` its real
token count, which sets its position ids. Finished sequences ride along with empty drafts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers import DynamicCache

from .acceptance import accept_greedy
from .draft_sources import DraftSource
from .node_budget import NodeBudget
from .speculative import Generation, StepRecord, limit_depth
from .target_model import TargetModel
from .tree_attention import tree_inputs


class BatchDecoder:
    """Greedy speculative decoding of a batch; each output equals that sequence's plain greedy output."""

    def __init__(self, target: TargetModel, source: DraftSource, budget: NodeBudget, pad_token: int = 0) -> None:
        self.target, self.source, self.budget, self.pad_token = target, source, budget, pad_token

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[Generation]:
        model, device, eos = self.target.model, self.target.device, self.target.eos_token_ids
        batch, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((batch, width), self.pad_token, dtype=torch.long)
        valid = torch.zeros(batch, width, dtype=torch.bool)
        for b, prompt in enumerate(prompts):
            ids[b, width - len(prompt) :] = torch.tensor(list(prompt))
            valid[b, width - len(prompt) :] = True
        lengths = valid.sum(dim=1)
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        started = time.perf_counter()
        logits = model(
            input_ids=ids.to(device),
            attention_mask=self._mask(valid, torch.ones(batch, 0, 0, dtype=torch.bool)),
            position_ids=positions.to(device),
            cache=cache,
            use_cache=True,
        ).logits
        firsts = logits[:, -1].argmax(dim=-1).tolist()
        generations = [Generation(tokens=[t], prefill_seconds=time.perf_counter() - started) for t in firsts]
        histories = [list(p) + [t] for p, t in zip(prompts, firsts)]
        done = [t in eos or max_new_tokens <= 1 for t in firsts]
        for b, first in enumerate(firsts):
            if first in eos:
                generations[b].stopped_by = "eos"
        while not all(done):
            step_started = time.perf_counter()
            active = [b for b in range(batch) if not done[b]]
            drafted = self.source.drafts(
                [histories[b][-self.source.max_context :] for b in active], self.budget.max_nodes
            )
            trees = {
                b: self.budget.cut(limit_depth(tree, max_new_tokens - len(generations[b].tokens) - 1))
                for b, tree in zip(active, drafted)
            }
            feeds = [
                tree_inputs(histories[b][-1], trees[b], 0, model.dtype, torch.device("cpu")) if b in trees else None
                for b in range(batch)
            ]
            fed = 1 + max(len(trees[b]) for b in active)
            input_ids = torch.full((batch, fed), self.pad_token, dtype=torch.long)
            position_ids = torch.zeros(batch, fed, dtype=torch.long)
            tree_mask = torch.eye(fed, dtype=torch.bool).repeat(batch, 1, 1)  # fillers see only themselves
            for b, feed in enumerate(feeds):
                if feed is None:
                    continue
                n = feed.input_ids.shape[1]
                input_ids[b, :n] = feed.input_ids[0]
                position_ids[b, :n] = feed.position_ids[0] + lengths[b]
                tree_mask[b, :n, :n] = feed.attention_mask[0, 0] == 0
            past = valid.shape[1]
            forward_started = time.perf_counter()
            logits = model(
                input_ids=input_ids.to(device),
                position_ids=position_ids.to(device),
                attention_mask=self._mask(valid, tree_mask),
                cache=cache,
                use_cache=True,
            ).logits
            forward_seconds = time.perf_counter() - forward_started
            kept = {}
            for b in active:
                accepted = accept_greedy(feeds[b].input_ids[0].tolist(), feeds[b].fed_parents, logits[b])
                emitted = accepted.tokens
                stop = next((i for i, token in enumerate(emitted) if token in eos), None)
                if stop is not None:
                    emitted, generations[b].stopped_by, done[b] = emitted[: stop + 1], "eos", True
                kept[b] = [0] + accepted.fed_path
                generations[b].tokens.extend(emitted)
                histories[b].extend(emitted)
                done[b] |= len(generations[b].tokens) >= max_new_tokens
                generations[b].steps.append(StepRecord(len(trees[b]), len(accepted.fed_path), emitted, 0.0, 0.0))
            valid, lengths = self._keep(cache, valid, lengths, past, kept)
            seconds = time.perf_counter() - step_started
            for b in active:
                step = generations[b].steps[-1]
                generations[b].steps[-1] = StepRecord(
                    step.drafted, step.accepted, step.emitted, seconds, forward_seconds
                )
        return generations

    def _mask(self, valid: torch.Tensor, tree_mask: torch.Tensor) -> torch.Tensor:
        """Additive [B, 1, q, past + q] mask: cache slots by `valid`, new tokens by `tree_mask`."""
        dtype, device = self.target.model.dtype, self.target.device
        batch, past = valid.shape
        if tree_mask.shape[1] == 0:  # prefill: causal over the padded prompt, pads hidden
            causal = torch.tril(torch.ones(past, past, dtype=torch.bool))
            allowed = causal[None] & valid[:, None, :]
            allowed |= torch.eye(past, dtype=torch.bool)[None]  # a pad row must see something
        else:
            q = tree_mask.shape[1]
            allowed = torch.cat([valid[:, None, :].expand(batch, q, past), tree_mask], dim=2)
        mask = torch.zeros(allowed.shape, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None].to(device)

    def _keep(
        self, cache: DynamicCache, valid: torch.Tensor, lengths: torch.Tensor, past: int, kept: dict[int, list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the same number of slots for every sequence: its accepted entries, then invalid ones."""
        batch = valid.shape[0]
        slots = max(len(k) for k in kept.values())
        index = torch.zeros(batch, slots, dtype=torch.long)
        new_valid = torch.zeros(batch, slots, dtype=torch.bool)
        for b, fed in kept.items():
            index[b, : len(fed)] = torch.tensor(fed)
            new_valid[b, : len(fed)] = True
        for layer in cache.layers:
            if layer.keys is None or layer.keys.numel() == 0:
                continue
            gather = (past + index).to(layer.keys.device)[:, None, :, None]
            gather = gather.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys = torch.cat([layer.keys[..., :past, :], layer.keys.gather(2, gather)], dim=2)
            layer.values = torch.cat([layer.values[..., :past, :], layer.values.gather(2, gather)], dim=2)
        return torch.cat([valid, new_valid], dim=1), lengths + new_valid.sum(dim=1)
