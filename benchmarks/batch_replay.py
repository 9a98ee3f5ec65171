"""The batch of 8, replayed: the engine's own loop over the batch's prompts, every pass priced by the
engine's cost curve instead of run, so that a node-selection or draft change can be judged without
the machine's noise.

    python benchmarks/batch_replay.py [--rows 8] [--prompts 32] [--max-new-tokens 128] [--curve FILE] [--write]

In float32 drafting changes no token, so once the plain batch has decoded every prompt, the target's
verdict after any drafted token is known: a node is accepted exactly when its path continues the
recorded output. `ReplayEngine` is `TreeEngine` (seating, calibration, node budget, acceptance walk,
stop rules) with its model-facing parts replaced: no prefill or pass runs; a pass costs what the cost
curve says a pass of its fed tokens costs, and its verdicts come from the recording. Prefills cost
what they took in the plain batch, the same with drafts or without. The draft gate sees no real
time here and stays open.

Replayed: no drafts; store + prompt lookup as `decode_speed.py`'s batch drafts; and an oracle that
verifies exactly the nodes of those trees the target accepts, the ceiling of any node selection over
these drafts. Each replay's tokens must equal the recording (checked).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from _report import write_section
from decode_speed import store_index

from crest_cli.benchmark_prompts import humaneval_prompts
from datastore_service.draft import DraftTree
from decoder.acceptance import walk_greedy
from decoder.draft_sources import DraftSource, IndexSource, NoDrafts
from decoder.engine import TreeEngine
from decoder.node_budget import CostCurve, NodeBudget
from decoder.prompt_lookup import WithPromptLookup
from decoder.static_cache import StaticKVCache
from decoder.target_model import TargetModel, load_target
from decoder.tree_batch import FedBatch

COMMAND = "python benchmarks/batch_replay.py " + " ".join(sys.argv[1:])
MAX_NODES = 32  # as decode_speed.py's batch


class Recording:
    """The plain batch's outputs by prompt: what the target emits after any history it can reach."""

    def __init__(self, prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]) -> None:
        self.outputs = {tuple(prompt): list(output) for prompt, output in zip(prompts, outputs)}
        self.lengths = sorted({len(prompt) for prompt in prompts})

    def ahead(self, history: Sequence[int]) -> list[int]:
        """The recorded tokens after `history`, a prompt followed by part of its recorded output."""
        for length in self.lengths:
            output = self.outputs.get(tuple(history[:length]))
            done = len(history) - length
            if output is not None and list(history[length:]) == output[:done]:
                return output[done:]
        raise ValueError("the history is not a recorded prompt followed by its recorded output")

    def verdicts(self, fed_tokens: list[int], fed_parents: list[int], history: Sequence[int]) -> list[int]:
        """The target's greedy token after each fed token (the root first, `history` ending with it):
        the recorded next token where the fed token's path continues the recording; 0 elsewhere,
        where the greedy walk never goes."""
        ahead = self.ahead(history)
        depths, continuing = _continuing(fed_tokens[1:], [parent - 1 for parent in fed_parents[1:]], ahead)
        root = ahead[0] if ahead else 0
        return [root] + [ahead[d] if on and d < len(ahead) else 0 for d, on in zip(depths, continuing)]


def _continuing(tokens: list[int], parents: list[int], ahead: list[int]) -> tuple[list[int], list[bool]]:
    """For the nodes of a tree (parents before children, -1 under the root): each one's depth, and
    whether its path from the root spells the start of `ahead`."""
    depths, continuing = [0] * len(tokens), [False] * len(tokens)
    for index, (token, parent) in enumerate(zip(tokens, parents)):
        depths[index] = 1 if parent < 0 else depths[parent] + 1
        above = parent < 0 or continuing[parent]
        continuing[index] = above and ahead[depths[index] - 1 : depths[index]] == [token]
    return depths, continuing


class ReplayEngine(TreeEngine):
    """The engine's loop with recorded verdicts and passes priced by `curve`."""

    def __init__(
        self, target: TargetModel, source: DraftSource, budget: NodeBudget, recording: Recording, curve: CostCurve
    ) -> None:
        super().__init__(target, source, budget)
        self.recording, self.curve = recording, curve
        self.priced_seconds, self.passes, self.row_passes, self.fed_tokens = 0.0, 0, 0, 0

    def _prefill(self, cache: StaticKVCache, prompt: list[int], row: int) -> None:
        return None  # priced by the plain batch's measured prefill

    def _judges_drafting(self) -> bool:
        return False  # the gate judges the wall time of passes, and none runs here

    def _pass(self, cache: StaticKVCache, fed: FedBatch) -> None:
        tokens = sum(len(row) for row in fed.fed_tokens)
        self.priced_seconds += float(self.curve.cost(tokens))
        self.passes, self.row_passes = self.passes + 1, self.row_passes + len(fed.fed_tokens)
        self.fed_tokens += tokens
        return None

    def _scores(self, logits, fed_tokens, fed_parents, histories) -> np.ndarray:
        """The recorded verdicts, [rows, widest fed] (what `_verdicts` and `_first_token` read)."""
        rows = [self.recording.verdicts(t, p, h) for t, p, h in zip(fed_tokens, fed_parents, histories)]
        verdicts = np.zeros((len(rows), max(len(row) for row in rows)), np.int64)
        for index, row in enumerate(rows):
            verdicts[index, : len(row)] = row
        return verdicts

    def _verdicts(self, verdicts: np.ndarray, fed: FedBatch):
        return lambda row: walk_greedy(fed.fed_tokens[row], fed.fed_parents[row], verdicts[row].tolist())

    def _first_token(self, verdict) -> int:
        return int(verdict)


class AcceptedOnly:
    """`source`'s trees cut to the nodes the target accepts (a chain, each node stated certain)."""

    def __init__(self, source: DraftSource, recording: Recording) -> None:
        self.source, self.recording, self.max_context = source, recording, source.max_context

    def drafts(self, contexts: Sequence[Sequence[int]], max_nodes: int) -> list[DraftTree]:
        return [
            _accepted_chain(tree, self.recording.ahead(context))
            for tree, context in zip(self.source.drafts(contexts, max_nodes), contexts)
        ]


def _accepted_chain(tree: DraftTree, ahead: list[int]) -> DraftTree:
    """The tree's nodes on the recorded path, root to leaf (one per depth, in the tree's order)."""
    _, continuing = _continuing(tree.tokens.tolist(), tree.parents.tolist(), ahead)
    chain = np.flatnonzero(continuing)
    if len(chain) == 0:
        return DraftTree.empty()
    ones = np.ones(len(chain), np.float32)
    return DraftTree(tree.tokens[chain], np.arange(-1, len(chain) - 1, dtype=np.int32), ones, 1, float(len(chain)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=32, help="HumanEval prompts decoded through the rows")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--curve", type=Path, help="a cost curve (JSON) to price passes with (default: the engine's)")
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    args = parser.parse_args()

    target = load_target("smollm2", "float32", "cpu")
    prompts = [target.encode_prompt(p, False) for p in humaneval_prompts(args.prompts)]
    plain = TreeEngine(target, NoDrafts(), NodeBudget(0))
    generations = plain.generate_batch(prompts, args.max_new_tokens, rows=args.rows)
    recording = Recording(prompts, [g.tokens for g in generations])
    prefill = sum(g.prefill_seconds for g in generations)
    curve = CostCurve(**json.loads(args.curve.read_text())) if args.curve else plain.cost_curve(args.rows)

    drafts = WithPromptLookup(IndexSource(store_index("stdlib")))
    configurations = {
        "no drafts": (NoDrafts(), 0),
        "store + prompt lookup": (drafts, MAX_NODES),
        "oracle: exactly the accepted nodes": (AcceptedOnly(drafts, recording), MAX_NODES),
    }
    results = {}
    for name, (source, max_nodes) in configurations.items():
        engine = ReplayEngine(target, source, NodeBudget(max_nodes, curve), recording, curve)
        with torch.inference_mode():
            replayed = engine.generate_batch(prompts, args.max_new_tokens, rows=args.rows)
        if [g.tokens for g in replayed] != [g.tokens for g in generations]:
            raise SystemExit(f"{name}: the replay's tokens differ from the recording")
        results[name] = engine
    tokens = sum(len(g.tokens) for g in generations)
    base = results["no drafts"].priced_seconds
    curve_text = ", ".join(f"{n}: {s * 1e3:.1f} ms" for n, s in zip(curve.fed_tokens, curve.seconds))
    lines = [
        f"## Batch of {args.rows}, replayed (issue 11)",
        "",
        f"Command: `{COMMAND}`. {args.prompts} HumanEval prompts, {args.max_new_tokens} new tokens, SmolLM2 float32, "
        f"{args.rows} rows; passes priced by the cost curve (fed tokens over {args.rows} rows: seconds) {curve_text}; "
        f"prefills {prefill:.2f} s as measured in the plain batch. Ratios are against no drafts.",
        "",
        "| decoding | priced decoding s | decoding ratio | end to end ratio | passes | tokens per row and pass | "
        "accepted per verified node |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, engine in results.items():
        nodes = engine.fed_tokens - engine.row_passes  # every row of a pass feeds its root
        accepted = tokens - len(prompts) - engine.row_passes  # a row's pass emits its accepted nodes and one more
        lines.append(
            f"| {name} | {engine.priced_seconds:.2f} | {base / engine.priced_seconds:.2f}x | "
            f"{(base + prefill) / (engine.priced_seconds + prefill):.2f}x | {engine.passes} | "
            f"{tokens / (engine.row_passes + len(prompts)):.2f} | {accepted / nodes if nodes else 0.0:.2f} |"
        )
    markdown = "\n".join(lines)
    print(markdown)
    if args.write:
        write_section("batch-replay", markdown)


if __name__ == "__main__":
    main()
