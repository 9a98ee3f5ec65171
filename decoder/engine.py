"""The fast decode loop: B sequences, one draft lookup and one verification pass per step.

Per step, for the sequences still running:
1. one call to the draft source for every sequence's newest tokens;
2. calibrate each tree's node probabilities (what this source's drafts are really worth) and pick
   the nodes each row verifies and the pass width (from a few fixed widths) that maximise expected
   tokens per second under the engine's measured cost curve; no node verifies no draft; and while
   drafting steps, lookup included, deliver fewer tokens per second than plain ones, skip the
   lookup itself for a while (`DraftGate`);
3. one forward pass over [newest token] + tree per row through a preallocated KV cache
   (`StaticKVCache`, `LlamaTreeForward`: on a CPU our panel kernel's products in float32, oneDNN's
   with prepacked weights otherwise);
   `compiled` replays it as one CUDA graph per (rows, width) on a GPU (`GraphedPasses`);
4. the target's verdicts (argmax per fed token, or the sampling targets) cross to the host in one
   transfer, the only wait on the device per step; the host walks each tree, moves the accepted
   branches into place in the cache and emits tokens, stopping exactly where plain decoding would.

Greedy output equals plain greedy decoding up to floating-point ties (token-identical in float32,
tested); sampling draws each token exactly from the target's distribution (chi-square tested).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from datastore_service.draft import DraftTree

from . import ragged_attention
from .acceptance import Accepted, SamplingParams, sampling_targets, walk_greedy, walk_sampling
from .calibration import AcceptanceCalibration
from .cuda_graphs import GraphedPasses
from .draft_gate import DraftGate
from .draft_sources import DraftSource
from .fused_layers import argmax_tokens
from .llama_forward import LlamaTreeForward, forward_fingerprint
from .node_budget import PASS_WIDTHS, CostCurve, NodeBudget
from .ragged_attention import PrefillPlan
from .speculative import Generation, StepRecord, emitted_until_stop, limit_depth, run_to_end
from .static_cache import StaticKVCache
from .target_model import TargetModel
from .tree_batch import FedBatch, PlanColumns, pack, prefill_inputs

FILLER_TOKEN = 0
NO_DRAFT = DraftTree.empty()  # what a step that skips the lookup verifies (shared: trees are never changed)
# Caches are sized in steps of this, so one serves many generations; on a GPU in larger steps, since a
# new cache means capturing every CUDA graph again (and memory there is plentiful).
CAPACITY_GRANULE = {"cpu": 256, "cuda": 1024}
MEASURED_ROWS = 8  # the cost curve's widest batch
FILLER_WIDTH = 16  # the width at which a filler slot is priced


class TreeEngine:
    """Speculative decoding with a static KV cache; `compiled`: each pass replayed as a CUDA graph (GPU);
    `float32_residual`: a half-precision model's residual stream kept in float32 (LlamaTreeForward)."""

    def __init__(
        self,
        target: TargetModel,
        source: DraftSource,
        budget: NodeBudget,
        sampling: SamplingParams | None = None,
        seed: int = 0,
        compiled: bool = False,
        float32_residual: bool = False,
    ) -> None:
        self.target, self.source, self.budget, self.sampling = target, source, budget, sampling
        if compiled and target.device.type != "cuda":
            raise ValueError("the compiled engine replays CUDA graphs: it needs a GPU")
        self.compiled = compiled
        self.forward = LlamaTreeForward(target.model, float32_residual, gguf=target.gguf)
        self.run_pass = GraphedPasses(self.forward) if compiled else None
        # Passes over real fed tokens only (ragged_attention.py) where the kernel runs: float32 on a CPU.
        self.ragged = not compiled and ragged_attention.available(
            target.model.dtype, target.device, self.forward.head_dim
        )
        # Acceptance on the real tokens' logits as they come; sampling and subclasses' `_scores` read
        # them laid out by row and width.
        self.padded_logits = sampling is not None or type(self)._scores is not TreeEngine._scores
        # Read once: transformers computes these from the parameters and config on every access.
        self.dtype, self.device = target.model.dtype, target.device
        self.eos = target.eos_token_ids
        self.calibration = AcceptanceCalibration()
        self.host_generator = torch.Generator().manual_seed(seed)
        self.device_generator = torch.Generator(device=target.device).manual_seed(seed)
        self._cache: StaticKVCache | None = None
        self.plan_columns = PlanColumns()  # each step's ragged plan is laid out in these

    @property
    def greedy_passes(self) -> bool:
        """Whether greedy acceptance asks the fused layers' passes for tokens rather than logits (their
        head can then be read as bfloat16: screened_head.py)."""
        return self.ragged and self.sampling is None and self.forward.fused is not None and self._scores_are_logits()

    def _scores_are_logits(self) -> bool:
        """Whether `_scores` leaves the logits as they are (a subclass that processes them says when)."""
        return type(self)._scores is TreeEngine._scores

    @property
    def name(self) -> str:
        name = "compiled" if self.compiled else "static"
        return name + ("-float32-residual" if self.forward.residual_dtype != self.dtype else "")

    # -- public API, as SpeculativeDecoder's ---------------------------------------------------

    def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        stop_strings: Sequence[str] = (),
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> Iterator[list[int]]:
        """Yield the tokens of each step as they are accepted; the Generation is the return value."""
        steps = self._decode([prompt_ids], max_new_tokens, stop_strings)
        while True:
            try:
                outcome = next(steps)[0]
            except StopIteration as done:
                return done.value[0]
            if outcome is None:
                continue
            emitted, record = outcome
            if on_step is not None and record is not None:
                on_step(record)
            yield emitted

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, stop_strings: Sequence[str] = ()) -> Generation:
        return self.generate_batch([prompt_ids], max_new_tokens, stop_strings)[0]

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop_strings: Sequence[str] = (),
        rows: int | None = None,
    ) -> list[Generation]:
        """Every prompt's generation. `rows`: decode at most this many at once; the others wait, and
        each takes the cache row of the first sequence to finish (continuous batching)."""
        return run_to_end(self._decode(prompts, max_new_tokens, stop_strings, rows))

    def cost_curve(self, rows: int = 1, history: int = 118) -> CostCurve:
        """Seconds of one pass by tokens fed, each row after `history` cached tokens, and the price of a
        filler slot; cached on disk per model, engine, device, dtype and threads. With `rows` (at most
        MEASURED_ROWS: beyond, the curve extends linearly) the passes are those of a batch: t < rows
        tokens as t rows of one token, and rows x w tokens as `rows` rows of w, since each row's
        attention reads its own history (8 rows of 1 token cost ~3 ms more than 1 row of 8 on a
        2-core CPU, which a curve of single rows would leave out of every step's price)."""
        rows = min(rows, MEASURED_ROWS)
        target = self.target
        key = (
            f"{target.name}-{self.name}-{forward_fingerprint()}-{target.device}-{self.dtype}-{torch.get_num_threads()}threads"
            f"-rows{rows}-past{history}-batch-passes-in-turns"
        )
        widest = PASS_WIDTHS[-1]
        points = [tokens for tokens in PASS_WIDTHS if tokens < rows] + [rows * width for width in PASS_WIDTHS]
        cache = self._cache_for(rows, history + widest)
        vocab = self.target.model.config.vocab_size

        @torch.inference_mode()
        def time_pass(used: int, width: int, nodes: int) -> float:
            cache.reset()
            for row in range(used):
                cache.advance(row, history)
            fed = self._pack(cache, [0] * used, [_chain_tree(nodes, vocab)] * used, width)
            started = time.perf_counter()
            self._verify(cache, fed, [[0]] * used)
            return time.perf_counter() - started

        def time_tokens(tokens: int) -> float:
            used = min(tokens, rows)
            return time_pass(used, tokens // used, tokens // used - 1)

        def time_filler() -> float:  # rows of a root and FILLER_WIDTH - 1 fillers, against roots alone
            return (time_pass(rows, FILLER_WIDTH, 0) - time_pass(rows, 1, 0)) / (rows * (FILLER_WIDTH - 1))

        return CostCurve.measure_with(key, time_tokens, points, time_filler)

    # -- the loop ------------------------------------------------------------------------------

    @torch.inference_mode()
    def _decode(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop_strings: Sequence[str],
        rows: int | None = None,
    ) -> Iterator[list[tuple[list[int], StepRecord | None] | None]]:
        """Yields, per step, for each sequence: (tokens emitted, step record), or None if it was idle;
        and after sequences are seated, their first tokens (record None).

        Sequences running sit in cache rows 0..n-1 (`seated[row]` is the sequence in that row), at
        most `rows` at once (all by default); one that finishes hands its row to the last running
        one, so a pass is never wider than the sequences it serves, and a waiting sequence is then
        prefilled into the first free row."""
        empty = next((i for i, prompt in enumerate(prompts) if len(prompt) == 0), None)
        if empty is not None:
            raise ValueError(f"prompt {empty} is empty: decoding continues a prompt of at least one token")
        rows = len(prompts) if rows is None else max(1, min(rows, len(prompts)))
        widest = max(self.budget.widths())
        cache = self._cache_for(rows, max(len(p) for p in prompts) + max_new_tokens + widest)
        generations = [Generation() for _ in prompts]
        histories = [list(p) for p in prompts]
        waiting = deque(range(len(prompts)))
        seated: list[int] = []
        gate = DraftGate(judging=self._judges_drafting())
        while True:
            self._unseat_finished(cache, seated, generations, max_new_tokens)
            if waiting and len(seated) < rows:  # then look again: a sequence may stop at its first token
                yield self._seat(cache, seated, waiting, rows, generations, histories, max_new_tokens, stop_strings)
                continue
            if not seated:
                return generations
            yield self._step(cache, seated, generations, histories, max_new_tokens, stop_strings, gate)

    def _judges_drafting(self) -> bool:
        """Whether the draft gate may stop lookups that do not pay: it judges by the cost curve."""
        return self.budget.curve is not None and self.budget.max_nodes > 0

    def _seat(
        self,
        cache: StaticKVCache,
        seated: list[int],
        waiting: deque[int],
        rows: int,
        generations: list[Generation],
        histories: list[list[int]],
        max_new_tokens: int,
        stop_strings: Sequence[str],
    ) -> list[tuple[list[int], StepRecord | None] | None]:
        """Prefill waiting sequences into the free rows; each one's first token."""
        outcomes: list[tuple[list[int], StepRecord | None] | None] = [None] * len(generations)
        while waiting and len(seated) < rows:
            sequence, row = waiting.popleft(), len(seated)
            seated.append(sequence)
            prompt, generation = histories[sequence], generations[sequence]
            started = time.perf_counter()
            cache.clear_row(row)
            first = self._prefill_first_token(cache, prompt, row)
            cache.advance(row, len(prompt))
            generation.prefill_seconds = time.perf_counter() - started
            if max_new_tokens <= 0:
                continue
            emitted, generation.stopped_by = self._until_stop(sequence, [first], [], stop_strings)
            generation.tokens.extend(emitted)
            prompt.extend(emitted)
            outcomes[sequence] = (emitted, None)
        return outcomes

    def _step(
        self,
        cache: StaticKVCache,
        seated: list[int],
        generations: list[Generation],
        histories: list[list[int]],
        max_new_tokens: int,
        stop_strings: Sequence[str],
        gate: DraftGate,
    ) -> list[tuple[list[int], StepRecord] | None]:
        started = time.perf_counter()
        drafting = self.budget.max_nodes > 0 and gate.should_draft()
        if drafting:
            context = self.source.max_context
            looked_up = self.source.drafts([histories[s][-context:] for s in seated], self.budget.max_nodes)
            if len(looked_up) != len(seated):
                raise ValueError(f"the draft source answered {len(looked_up)} trees for {len(seated)} sequences")
        else:
            looked_up = [NO_DRAFT] * len(seated)
        lookup_done = time.perf_counter()
        trees = [
            limit_depth(tree, max_new_tokens - len(generations[s].tokens) - 1) for s, tree in zip(seated, looked_up)
        ]
        if any(len(tree) for tree in trees):
            gains, depths = zip(*[self.calibration.calibrate_tree(tree) for tree in trees])
            counts = self.budget.plan_counts(gains, fillers_cost=self.compiled)
            width = self.budget.width_for(1 + max(counts))
        else:  # nothing drafted: nothing to weigh (a plain step's host time is all overhead)
            depths, counts, width = (), [0] * len(trees), 1
        fed = self._pack(cache, [histories[s][-1] for s in seated], trees, width, counts)
        prepared = time.perf_counter()
        verdicts = self._verify(cache, fed, [histories[s] for s in seated])
        verified = time.perf_counter()
        outcomes = []
        for row, sequence in enumerate(seated):
            accepted, count = verdicts(row), counts[row]
            if count:
                self.calibration.observe_accepted(
                    trees[row].probabilities, [i - 1 for i in accepted.fed_path], depths[row], count
                )
            emitted, generations[sequence].stopped_by = self._until_stop(
                sequence, accepted.tokens, generations[sequence].tokens, stop_strings
            )
            outcomes.append((accepted, emitted))
        accepted_done = time.perf_counter()
        cache.keep([[0] + accepted.fed_path for accepted, _ in outcomes])
        finished = time.perf_counter()
        if drafting and gate.judging:  # what a plain step would have taken: this pass, priced at one token a row
            plain = verified - prepared
            plain *= float(self.budget.curve.cost(len(seated)) / self._priced_pass(len(seated), counts, width, fed))
            gate.record(True, sum(len(emitted) for _, emitted in outcomes) / len(outcomes), finished - started, plain)
        results: list[tuple[list[int], StepRecord] | None] = [None] * len(generations)
        for row, (sequence, (accepted, emitted)) in enumerate(zip(seated, outcomes)):
            generations[sequence].tokens.extend(emitted)
            histories[sequence].extend(emitted)
            record = StepRecord(
                drafted=counts[row],
                accepted=len(accepted.fed_path),
                emitted=emitted,
                seconds=finished - started,
                forward_seconds=verified - prepared,
                lookup_seconds=lookup_done - started,
                prepare_seconds=prepared - lookup_done,
                accept_seconds=accepted_done - verified,
                compact_seconds=finished - accepted_done,
            )
            generations[sequence].steps.append(record)
            results[sequence] = (emitted, record)
        return results

    @staticmethod
    def _unseat_finished(
        cache: StaticKVCache, seated: list[int], generations: list[Generation], max_new_tokens: int
    ) -> None:
        """Free the rows of sequences that stopped: the last running sequence moves into each."""
        row = 0
        while row < len(seated):
            generation = generations[seated[row]]
            if generation.stopped_by == "max_tokens" and len(generation.tokens) < max_new_tokens:
                row += 1
                continue
            last = len(seated) - 1
            if row != last:
                cache.move_row(last, row)
            seated[row] = seated[last]
            seated.pop()

    # -- pieces ---------------------------------------------------------------------------------

    def _cache_for(self, rows: int, tokens: int) -> StaticKVCache:
        """The engine's cache, reallocated only when a batch needs more rows or room than it has."""
        dtype, device = self.dtype, self.device
        if self._cache is None or not self._cache.fits(rows, tokens, dtype, device):
            granule = CAPACITY_GRANULE.get(device.type, CAPACITY_GRANULE["cpu"])
            self._cache = self.forward.new_cache(rows, -(-tokens // granule) * granule)
            if self.compiled:
                self.run_pass.prepare(self._cache, rows, self.budget.widths())
        self._cache.reset()
        return self._cache

    def _pack(
        self,
        cache: StaticKVCache,
        roots: list[int],
        trees: list[DraftTree],
        width: int,
        counts: list[int] | None = None,
    ) -> FedBatch:
        """The pass of `roots` and `trees` (of each only its first `counts[row]` nodes, if given)."""
        lengths = cache.lengths[: len(roots)]
        return pack(
            roots,
            trees,
            lengths,
            width,
            FILLER_TOKEN,
            self.dtype,
            self.device,
            mask_on_device=self.compiled,
            ragged=self.ragged and width <= ragged_attention.MAX_FED,
            counts=counts,
            columns=self.plan_columns,
        )

    def _priced_pass(self, rows: int, counts: list[int], width: int, fed: FedBatch) -> float:
        """The cost curve's seconds for a pass of `rows` roots and `counts` nodes at `width`: a graph
        computes every slot of the width; a padded pass pays its fillers at the curve's filler price."""
        curve, real = self.budget.curve, rows + sum(counts)
        if self.compiled:
            return float(curve.cost(rows * width))
        fillers = 0 if fed.ragged is not None else rows * width - real
        return float(curve.cost(real)) + curve.filler_seconds * fillers

    def _prefill(self, cache: StaticKVCache, prompt: list[int], row: int) -> torch.Tensor:
        """Fill cache row `row` with the prompt; its last token's logits [1, 1, vocab]. Ragged passes
        attend through the kernel, in chains of up to MAX_FED tokens (`PrefillPlan`): 10-13% less time
        than the padded layout's batched products over a causal mask (118 and 170 tokens, SmolLM2)."""
        if not self.ragged:
            fed = prefill_inputs(prompt, self.dtype, self.device)
            own_row = slice(row, row + 1)
            return self.forward(cache, fed.input_ids, fed.positions, fed.slots, fed.mask, rows=own_row, last_only=True)
        return self.forward.ragged(cache, PrefillPlan.of(prompt, row), logits_of=slice(-1, None))[None]

    def _prefill_first_token(self, cache: StaticKVCache, prompt: list[int], row: int) -> int:
        """Prefill cache row `row` with the prompt; the first token after it."""
        if self.greedy_passes:
            return self.forward.greedy_ragged(cache, PrefillPlan.of(prompt, row), logits_of=slice(-1, None))[0]
        scores = self._scores(self._prefill(cache, prompt, row), [[prompt[-1]]], [[-1]], [list(prompt)])
        return self._first_token(scores[0, -1])

    def _verify(self, cache: StaticKVCache, fed: FedBatch, histories: list[list[int]]) -> Callable[[int], Accepted]:
        """The target's pass over a step's fed tokens and its verdicts: a walk per row."""
        if self.greedy_passes and fed.ragged is not None:
            predicted = fed.ragged.per_row(self.forward.greedy_ragged(cache, fed.ragged))
            return lambda row: walk_greedy(fed.fed_tokens[row], fed.fed_parents[row], predicted[row])
        return self._verdicts(self._scores(self._pass(cache, fed), fed.fed_tokens, fed.fed_parents, histories), fed)

    def _pass(self, cache: StaticKVCache, fed: FedBatch) -> torch.Tensor:
        if self.compiled:  # a graph replays fixed shapes: fillers are computed like the rest
            return self.run_pass(cache, fed)
        if fed.ragged is not None:  # [n, vocab]: the real fed tokens' logits, row after row
            logits = self.forward.ragged(cache, fed.ragged)
            return fed.ragged.laid_out(logits) if self.padded_logits else logits
        rows = slice(0, fed.input_ids.shape[0])
        return self.forward(cache, fed.input_ids, fed.positions, fed.slots, fed.mask, rows=rows, real=fed.real)

    def _scores(
        self,
        logits: torch.Tensor,
        fed_tokens: list[list[int]],
        fed_parents: list[list[int]],
        histories: list[list[int]],
    ) -> torch.Tensor:
        """What acceptance is decided on, per fed token: the logits themselves here; a subclass may
        process them knowing each fed token's sequence (`histories[row]` ends with the row's root)."""
        return logits

    def _until_stop(
        self, sequence: int, accepted: list[int], before: list[int], stop_strings: Sequence[str]
    ) -> tuple[list[int], str]:
        """The accepted tokens up to the first that stops the sequence, and why it stopped."""
        return emitted_until_stop(self.target, accepted, before, stop_strings, self.eos)

    def _verdicts(self, logits: torch.Tensor, fed: FedBatch) -> Callable[[int], Accepted]:
        """Bring the target's verdicts to the host (the step's one device sync); a walk per row."""
        if self.sampling is None:
            predicted = argmax_tokens(logits)
            if fed.ragged is not None and logits.dim() == 2:  # the real tokens' verdicts, row after row
                predicted = fed.ragged.per_row(predicted)
            return lambda row: walk_greedy(fed.fed_tokens[row], fed.fed_parents[row], predicted[row])
        targets = sampling_targets(logits, fed.fed_tokens, fed.fed_parents, self.sampling, self.device_generator)
        return lambda row: walk_sampling(
            fed.fed_tokens[row],
            fed.fed_parents[row],
            targets.drafted_probability[row],
            targets.bonus[row],
            self.host_generator,
        )

    def _first_token(self, logits: torch.Tensor) -> int:
        if self.sampling is None:
            return int(logits.argmax())
        distribution = self.sampling.distribution(logits).float()
        return int(torch.multinomial(distribution, 1, generator=self.device_generator))


def _chain_tree(nodes: int, vocab: int) -> DraftTree:
    """A chain of `nodes` tokens, to time passes of a given width."""
    probabilities = np.linspace(0.9, 0.5, nodes).astype(np.float32) if nodes else np.empty(0, np.float32)
    return DraftTree(
        (np.arange(1, nodes + 1) % vocab).astype(np.int32),
        np.arange(-1, nodes - 1, dtype=np.int32),
        probabilities,
        1 if nodes else 0,
        float(probabilities.sum()),
    )
