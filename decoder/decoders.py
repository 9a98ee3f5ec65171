"""Choosing a decode loop: the static-cache engine where the model allows it, else the eager reference.

- `eager`: `SpeculativeDecoder`, transformers' own forward with a dynamic cache; any causal LM.
- `static`: `TreeEngine`, a preallocated KV cache and a lean forward pass (Llama-family models);
  on a CPU every product runs through our panel kernel in float32 (panel_linear.py) and otherwise
  through oneDNN with weights prepacked once, the kernels torch.compile's CPU backend would pick,
  without its compile time (torch.compile of this pass measured 18 s to compile and hit its
  recompile limit, leaving a slower eager pass).
- `compiled`: the same engine with each pass replayed as a CUDA graph (GPU only).
- `auto` (default): `compiled` on a GPU, `static` on a CPU, `eager` for other models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from datastore_service.errors import CrestError

from .acceptance import SamplingParams
from .draft_sources import DraftSource
from .engine import TreeEngine
from .llama_forward import unsupported_reason
from .node_budget import CostCurve, NodeBudget
from .speculative import Generation, SpeculativeDecoder, StepRecord
from .target_model import TargetModel

ENGINES = ("auto", "eager", "static", "compiled")


class Decoder(Protocol):
    def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        stop_strings: Sequence[str] = (),
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> Iterator[list[int]]: ...

    def generate(
        self, prompt_ids: Sequence[int], max_new_tokens: int, stop_strings: Sequence[str] = ()
    ) -> Generation: ...

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop_strings: Sequence[str] = (),
        rows: int | None = None,
    ) -> list[Generation]:
        """Every prompt's generation, at most `rows` decoded at once (all by default)."""
        ...


def resolve_engine(target: TargetModel, engine: str) -> str:
    """The concrete engine `engine` means for this model and device (a CrestError if it can't run)."""
    if engine not in ENGINES:
        raise CrestError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    reason = unsupported_reason(target.model)
    if engine == "auto":
        if reason is not None:
            return "eager"
        return "compiled" if target.device.type == "cuda" else "static"
    if engine != "eager" and reason is not None:
        raise CrestError(f"--engine {engine} does not support {target.name}: {reason}; use --engine eager")
    if engine == "compiled" and target.device.type != "cuda":
        raise CrestError("--engine compiled replays CUDA graphs and needs --device cuda; on a CPU use --engine static")
    return engine


def make_decoder(
    target: TargetModel,
    source: DraftSource,
    max_nodes: int = 32,
    measure_costs: bool = True,
    sampling: SamplingParams | None = None,
    seed: int = 0,
    engine: str = "auto",
    rows: int = 1,
    float32_residual: bool = False,
) -> Decoder:
    """A decoder for `source`'s drafts whose node budget follows the chosen engine's own measured
    cost curve (`measure_costs`), or always verifies up to `max_nodes` nodes. `float32_residual`:
    the static engines keep a half-precision model's residual stream in float32 (closer to float32
    output, a few more operations per layer); the eager loop does not have it."""
    chosen = resolve_engine(target, engine)
    if chosen == "eager":
        if float32_residual:
            raise CrestError("a float32 residual stream needs the static or compiled engine, not --engine eager")
        curve = CostCurve.measure(target) if measure_costs and max_nodes > 0 else None
        return SpeculativeDecoder(target, source, NodeBudget(max_nodes, curve), sampling, seed)
    decoder = TreeEngine(
        target,
        source,
        NodeBudget(max_nodes),
        sampling,
        seed,
        compiled=chosen == "compiled",
        float32_residual=float32_residual,
    )
    if measure_costs and max_nodes > 0:
        decoder.budget = NodeBudget(max_nodes, decoder.cost_curve(rows))
    return decoder
