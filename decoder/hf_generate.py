"""CREST inside transformers' own `generate`: tree drafts from a store, a server or the prompt itself.

    from decoder.hf_generate import crest_generate
    output = model.generate(input_ids, max_new_tokens=128, custom_generate=crest_generate,
                            draft_store="~/.cache/crest/stores/stdlib.duckdb")

transformers prepares everything as for its own decoding (generation config, logits processors and
warpers, stopping criteria, streamer, padding) and hands it to `crest_generate`, which runs the
static-cache engine of `engine.py` with those: each fed token's logits go through the caller's
logits processors with that token's own branch as the sequence so far, so greedy output is the
argmax plain `generate` would take and sampling draws from the same processed distribution;
stopping criteria are checked after every emitted token, exactly where plain decoding checks them.

transformers (5.24) does not forward `streamer=` to a `custom_generate` callable (it keeps only
the callable's own extra keywords), so pass a streamer as `crest_streamer=`: it receives the prompt,
then every token as it is verified, then `end()`, as `generate` would feed it.

Draft sources, by keyword: `draft_source` (any `DraftSource`), `draft_store` (a store path, opened in
process), `draft_server` (a `crest serve` address, or several); with none of them, prompt lookup
alone. `prompt_lookup=False` drafts from the store or server only. `max_nodes` caps the nodes
verified per step; `engine` is "auto", "static" or "compiled" (CUDA graphs). Llama-family models
only (the static engine's); batches of any size, left-padded as transformers pads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from weakref import WeakKeyDictionary

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList

from datastore_service.errors import CrestError

from .acceptance import SamplingParams
from .calibration import AcceptanceCalibration
from .decoders import resolve_engine
from .draft_sources import DraftSource, IndexSource, NoDrafts, ServiceSource
from .engine import TreeEngine
from .node_budget import NodeBudget
from .prompt_lookup import WithPromptLookup
from .target_model import TargetModel

# One engine per model and engine kind: building one prepacks the weights and measures the cost curve.
_ENGINES: WeakKeyDictionary[PreTrainedModel, dict[tuple[str, int], GenerateEngine]] = WeakKeyDictionary()


class GenerateEngine(TreeEngine):
    """The engine, deciding acceptance on processed scores and stopping by transformers' criteria."""

    processors: LogitsProcessorList = LogitsProcessorList()
    criteria: StoppingCriteriaList = StoppingCriteriaList()
    prompts: list[list[int]] = []
    streamer = None

    def _scores(
        self,
        logits: torch.Tensor,
        fed_tokens: list[list[int]],
        fed_parents: list[list[int]],
        histories: list[list[int]],
    ) -> torch.Tensor:
        if not self.processors:
            return logits
        scores = logits.float().clone()
        for row, (tokens, parents) in enumerate(zip(fed_tokens, fed_parents)):
            by_depth: dict[int, list[tuple[int, list[int]]]] = {}
            for index, branch in enumerate(_branches(tokens, parents)):  # fed token i's tokens after the root
                by_depth.setdefault(len(branch), []).append((index, branch))
            for same_length in by_depth.values():  # processors work row-wise: one call per sequence length
                indices = [index for index, _ in same_length]
                sequences = torch.tensor([histories[row] + branch for _, branch in same_length], device=logits.device)
                scores[row, indices] = self.processors(sequences, scores[row, indices])
        return scores

    def _scores_are_logits(self) -> bool:
        return not self.processors

    def _until_stop(
        self, sequence: int, accepted: list[int], before: list[int], stop_strings: Sequence[str]
    ) -> tuple[list[int], str]:
        known = len(self.prompts[sequence]) + len(before)
        ids = torch.tensor([self.prompts[sequence] + before + accepted], device=self.device)
        no_scores = torch.empty(1, 0, device=self.device)
        for count in range(1, len(accepted) + 1):  # the criteria after each token, as plain decoding checks
            if bool(self.criteria(ids[:, : known + count], no_scores)[0]):
                self._stream(sequence, accepted[:count])
                return accepted[:count], "stopping_criteria"
        self._stream(sequence, accepted)
        return list(accepted), "max_tokens"

    def _stream(self, sequence: int, tokens: list[int]) -> None:
        if self.streamer is not None and sequence == 0 and tokens:
            self.streamer.put(torch.tensor(tokens))


def _branches(fed_tokens: list[int], fed_parents: list[int]) -> list[list[int]]:
    branches: list[list[int]] = [[]]
    for token, parent in zip(fed_tokens[1:], fed_parents[1:]):
        branches.append(branches[parent] + [token])
    return branches


def _source(
    draft_source: DraftSource | None, draft_store: str | Path | None, draft_server: str | Sequence[str] | None
) -> DraftSource:
    given = [value is not None for value in (draft_source, draft_store, draft_server)]
    if sum(given) > 1:
        raise CrestError("give at most one of draft_source, draft_store, draft_server")
    if draft_source is not None:
        return draft_source
    if draft_store is not None:
        from datastore_service.lookup.index_loader import load_index

        return IndexSource(load_index(Path(draft_store).expanduser()))
    if draft_server is not None:
        from datastore_service.serve.client import DraftClient

        return ServiceSource(DraftClient(draft_server))
    return NoDrafts()


def _engine(model: PreTrainedModel, kind: str, max_nodes: int, rows: int) -> GenerateEngine:
    engines = _ENGINES.setdefault(model, {})
    key = (kind, max_nodes)
    if key not in engines:
        target = TargetModel(getattr(model.config, "name_or_path", "") or type(model).__name__, model, None)
        engine = GenerateEngine(target, NoDrafts(), NodeBudget(max_nodes), compiled=kind == "compiled")
        engine.host_generator = engine.device_generator = None  # sample from torch's global RNG, as generate does
        engines[key] = engine
    engine = engines[key]
    engine.budget = NodeBudget(max_nodes, engine.cost_curve(rows)) if max_nodes > 0 else NodeBudget(0)
    return engine


def crest_generate(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    crest_streamer=None,
    draft_source: DraftSource | None = None,
    draft_store: str | Path | None = None,
    draft_server: str | Sequence[str] | None = None,
    prompt_lookup: bool = True,
    max_nodes: int = 32,
    engine: str = "auto",
    **model_kwargs,
) -> torch.LongTensor:
    """A `custom_generate` for `model.generate`: the same output, drafted and verified by CREST."""
    if generation_config.return_dict_in_generate or generation_config.num_beams > 1:
        raise CrestError("crest_generate returns token ids of greedy or sampled decoding (no beams, no dict outputs)")
    target = TargetModel("model", model, None)
    kind = resolve_engine(target, engine)
    if kind == "eager":
        raise CrestError(f"crest_generate runs Llama-family models only; this is a {model.config.model_type}")
    mask = model_kwargs.get("attention_mask")
    prompts = [
        row[mask_row.bool()].tolist() if mask is not None else row.tolist()
        for row, mask_row in zip(input_ids, mask if mask is not None else input_ids)
    ]
    max_new_tokens = generation_config.max_length - input_ids.shape[1]
    source = _source(draft_source, draft_store, draft_server)
    decoder = _engine(model, kind, max_nodes if not isinstance(source, NoDrafts) or prompt_lookup else 0, len(prompts))
    decoder.source = WithPromptLookup(source) if prompt_lookup else source
    decoder.calibration = AcceptanceCalibration()  # a new source: learn what its drafts are worth anew
    decoder.sampling = SamplingParams() if generation_config.do_sample else None
    decoder.processors, decoder.criteria, decoder.prompts, decoder.streamer = (
        logits_processor,
        stopping_criteria,
        prompts,
        crest_streamer,
    )
    if crest_streamer is not None:
        crest_streamer.put(input_ids.cpu())
    try:
        generations = decoder.generate_batch(prompts, max_new_tokens)
    finally:
        decoder.streamer = None
    if crest_streamer is not None:
        crest_streamer.end()
    pad = generation_config.pad_token_id
    if pad is None:
        eos = generation_config.eos_token_id
        pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    longest = max(len(generation.tokens) for generation in generations)
    new = torch.full((len(prompts), longest), int(pad), dtype=input_ids.dtype, device=input_ids.device)
    for row, generation in enumerate(generations):
        new[row, : len(generation.tokens)] = torch.tensor(generation.tokens, dtype=input_ids.dtype)
    return torch.cat([input_ids, new], dim=1)
