"""Which build defaults draft best: one knob at a time around the defaults, at a fixed byte budget.

    python benchmarks/defaults_sweep.py [--prompts 20] [--max-new-tokens 128] [--budget 16MB] [--write]

For each setting a stdlib store is built, then SmolLM2's cached greedy outputs on HumanEval are
replayed against it (decoder/replay.py: exact, no model forward) with a fixed 16-node budget, so
the stores are compared at equal verification cost. Reports accepted tokens per step (bonus
included), build seconds and file size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _report import write_section

from crest_cli.benchmark_prompts import humaneval_prompts
from datastore_service.build.corpus import stdlib_corpus
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import build_store
from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.sizes import format_bytes, parse_budget
from decoder.draft_sources import IndexSource
from decoder.node_budget import NodeBudget
from decoder.references import greedy_references
from decoder.replay import replay
from decoder.target_model import load_target

COMMAND = "python benchmarks/defaults_sweep.py " + " ".join(sys.argv[1:])
KNOBS = {
    "max_context": [1, 2, 3, 4],
    "max_depth": [4, 8, 12],
    "top_c": [8, 16, 32, 64],
    "policy": ["benefit", "frequency"],
    "min_probability": [0.0, 0.01, 0.05],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--budget", default="16MB")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    target = load_target("smollm2")
    prompts = [target.encode_prompt(p, chat=False) for p in humaneval_prompts(args.prompts)]
    references = greedy_references(target, prompts, args.max_new_tokens)
    default = replace(BuildParams(), budget=parse_budget(args.budget))
    settings = [("defaults", default)] + [
        (f"{knob} = {value}", replace(default, **{knob: value}))
        for knob, values in KNOBS.items()
        for value in values
        if getattr(default, knob) != value
    ]
    lines = [
        "## Build defaults, by replayed acceptance",
        "",
        f"Command: `{COMMAND}`. HumanEval, {args.prompts} prompts, SmolLM2 greedy outputs of {args.max_new_tokens} "
        f"tokens, stdlib store of {args.budget}, 16 draft nodes per step, store drafts only (no prompt lookup).",
        f"Defaults: max_context {default.max_context}, max_depth {default.max_depth}, top_c {default.top_c}, "
        f"policy {default.policy}, min_probability {default.min_probability}.",
        "",
        "| setting | accepted tokens/step | contexts | file | build s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for label, params in settings:
            started = time.perf_counter()
            summary = build_store(stdlib_corpus(), "smollm2", Path(folder) / "sweep.duckdb", params, progress=False)
            seconds = time.perf_counter() - started
            source = IndexSource(DraftIndex.load(summary.store))
            replays = [replay(source, NodeBudget(16), p, r, args.max_new_tokens) for p, r in zip(prompts, references)]
            accepted = sum(r.tokens for r in replays) / sum(r.steps + 1 for r in replays)
            lines.append(
                f"| {label} | {accepted:.3f} | {summary.contexts_kept:,} | {format_bytes(summary.file_bytes)} "
                f"| {seconds:.0f} |"
            )
            print(lines[-1], flush=True)
    markdown = "\n".join(lines)
    print(markdown)
    if args.write:
        write_section("defaults", markdown)


if __name__ == "__main__":
    main()
