"""The decode loop: draft, verify the whole tree in one forward pass, keep the accepted branch.

One sequence at a time (`generate`). Per step:
1. ask the draft source for a tree for the sequence's newest tokens;
2. cut it to the node budget that maximises expected tokens per second (cost curve) and to the
   tokens still allowed (a draft longer than max_new_tokens is never verified past the end);
3. one forward pass over [newest token] + tree with a tree-attention mask;
4. accept (greedy or sampling), gather the accepted branch in the KV cache, emit the accepted
   tokens plus the bonus token, stopping at EOS or a stop string.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from datastore_service.draft import DraftTree

from .acceptance import SamplingParams, accept_greedy, accept_sampling
from .draft_sources import DraftSource
from .hf_compat import new_dynamic_cache, with_cache
from .kv_cache import keep_accepted
from .node_budget import NodeBudget
from .target_model import TargetModel
from .tree_attention import tree_inputs

Returned = TypeVar("Returned")


@dataclass
class StepRecord:
    drafted: int  # nodes verified
    accepted: int  # draft tokens accepted (the bonus token not counted)
    emitted: list[int]  # tokens this step added to the output
    seconds: float  # wall time of the step
    forward_seconds: float  # of which the model's forward pass
    lookup_seconds: float = 0.0  # asking the draft source
    prepare_seconds: float = 0.0  # cutting the trees, laying out the pass (inputs, positions, mask)
    accept_seconds: float = 0.0  # finding the accepted branch
    compact_seconds: float = 0.0  # moving the accepted branch into place in the KV cache


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    prefill_seconds: float = 0.0
    stopped_by: str = "max_tokens"

    @property
    def decode_seconds(self) -> float:
        return sum(step.seconds for step in self.steps)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per target forward (1.0 = no draft token accepted), as REST reports it."""
        forwards = len(self.steps) + 1  # the prefill emits the first token
        return len(self.tokens) / forwards

    @property
    def tokens_per_second(self) -> float:
        total = self.prefill_seconds + self.decode_seconds
        return len(self.tokens) / total if total > 0 else 0.0


def run_to_end(steps: Generator[object, None, Returned]) -> Returned:
    """Drive a decoding generator to its end; what it returns (the decode loops return their
    Generation(s) once every step is yielded)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def limit_depth(tree: DraftTree, max_depth: int) -> DraftTree:
    """Nodes no deeper than `max_depth` (a prefix-closed subset keeps parents before children)."""
    if len(tree) == 0 or max_depth <= 0:
        return DraftTree.empty()
    if len(tree) <= max_depth:  # no node can be deeper than the tree has nodes
        return tree
    depths = tree.depths()
    keep = depths <= max_depth
    if keep.all():
        return tree
    new_index = np.cumsum(keep) - 1
    parents = np.where(tree.parents >= 0, new_index[np.maximum(tree.parents, 0)], -1)[keep]
    probabilities = tree.probabilities[keep]
    return DraftTree(
        tree.tokens[keep], parents.astype(np.int32), probabilities, tree.context_length, float(probabilities.sum())
    )


class SpeculativeDecoder:
    def __init__(
        self,
        target: TargetModel,
        source: DraftSource,
        budget: NodeBudget,
        sampling: SamplingParams | None = None,
        seed: int = 0,
    ) -> None:
        self.target, self.source, self.budget, self.sampling = target, source, budget, sampling
        self.generator = torch.Generator().manual_seed(seed)

    @torch.inference_mode()
    def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        stop_strings: Sequence[str] = (),
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> Iterator[list[int]]:
        """Yield the tokens of each step as they are accepted; the Generation is the return value."""
        model, device = self.target.model, self.target.device
        eos, generation = self.target.eos_token_ids, Generation()
        cache = new_dynamic_cache(model)
        started = time.perf_counter()
        logits = model(**with_cache(model, cache, input_ids=torch.tensor([list(prompt_ids)], device=device))).logits
        first = self._choose_first(logits[0, -1])
        generation.prefill_seconds = time.perf_counter() - started
        generation.tokens.append(first)
        yield [first]
        history = list(prompt_ids) + [first]
        if first in eos:
            generation.stopped_by = "eos"
            return generation
        while len(generation.tokens) < max_new_tokens:
            step_started = time.perf_counter()
            remaining = max_new_tokens - len(generation.tokens)
            tree = self.source.drafts([history[-self.source.max_context :]], self.budget.max_nodes)[0]
            tree = self.budget.cut(limit_depth(tree, remaining - 1))
            past = cache.get_seq_length()
            inputs = tree_inputs(history[-1], tree, past, model.dtype, device)
            forward_started = time.perf_counter()
            logits = model(
                **with_cache(
                    model,
                    cache,
                    input_ids=inputs.input_ids,
                    position_ids=inputs.position_ids,
                    attention_mask=inputs.attention_mask,
                )
            ).logits[0]
            forward_seconds = time.perf_counter() - forward_started
            fed_tokens = inputs.input_ids[0].tolist()
            if self.sampling is None:
                accepted = accept_greedy(fed_tokens, inputs.fed_parents, logits)
            else:
                accepted = accept_sampling(fed_tokens, inputs.fed_parents, logits, self.sampling, self.generator)
            keep_accepted(cache, past, [0] + accepted.fed_path)
            emitted, generation.stopped_by = emitted_until_stop(
                self.target, accepted.tokens, generation.tokens, stop_strings, eos
            )
            generation.tokens.extend(emitted)
            history.extend(emitted)
            record = StepRecord(
                len(tree), len(accepted.fed_path), emitted, time.perf_counter() - step_started, forward_seconds
            )
            generation.steps.append(record)
            if on_step is not None:
                on_step(record)
            yield emitted
            if generation.stopped_by != "max_tokens":
                break
        return generation

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, stop_strings: Sequence[str] = ()) -> Generation:
        return run_to_end(self.stream(prompt_ids, max_new_tokens, stop_strings))

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop_strings: Sequence[str] = (),
        rows: int | None = None,
    ) -> list[Generation]:
        """The reference loop decodes one sequence at a time (any `rows`); a batch is decoded in turn."""
        return [self.generate(prompt, max_new_tokens, stop_strings) for prompt in prompts]

    def _choose_first(self, logits: torch.Tensor) -> int:
        if self.sampling is None:
            return int(logits.argmax())
        return int(torch.multinomial(self.sampling.distribution(logits).float(), 1, generator=self.generator))


def emitted_until_stop(
    target: TargetModel,
    accepted: list[int],
    before: list[int],
    stop_strings: Sequence[str],
    eos: set[int] | None = None,
) -> tuple[list[int], str]:
    """The accepted tokens up to and including the first that stops plain decoding (EOS or a stop
    string completed after the `before` tokens), and what stopped it ("max_tokens" if nothing did).
    `eos`: the target's EOS ids, when the caller has them at hand (reading them costs a few µs)."""
    eos = target.eos_token_ids if eos is None else eos
    emitted = []
    for token in accepted:
        emitted.append(token)
        if token in eos:
            return emitted, "eos"
        if stop_strings and any(stop in target.tokenizer.decode((before + emitted)[-64:]) for stop in stop_strings):
            return emitted, "stop_string"
    return emitted, "max_tokens"
