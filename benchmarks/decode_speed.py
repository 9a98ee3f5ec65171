"""Decoder benchmark: speculative vs plain greedy decoding, same prompts, same run.

    python benchmarks/decode_speed.py [--prompts 20] [--max-new-tokens 128] [--device cpu] [--dtype float32] [--write]

HumanEval prompts (plain code completion) draft from the stdlib store; MT-Bench first turns (chat
template) from the ShareGPT store. Both stores are the defaults, built if missing. Plain greedy is
`model.generate(do_sample=False)`: its output is the reference every drafted run must equal.
Reported per configuration: total tokens/s, median per-prompt speedup, mean accepted tokens per
step (tokens per target forward, bonus token included), and the median share of a step spent
outside the model forward (lookup, tree building, mask, cache gather).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from _report import write_section

from crest_cli.benchmark_prompts import humaneval_prompts, mtbench_questions
from datastore_service.build.pipeline import default_store_path
from datastore_service.lookup.draft_index import DraftIndex
from decoder.draft_sources import IndexSource, NoDrafts
from decoder.node_budget import CostCurve, NodeBudget
from decoder.prompt_lookup import WithPromptLookup
from decoder.speculative import SpeculativeDecoder
from decoder.target_model import load_target

COMMAND = "python benchmarks/decode_speed.py " + " ".join(sys.argv[1:])


def store_index(corpus: str) -> DraftIndex:
    path = default_store_path(corpus)
    if not path.exists():
        subprocess.run([sys.executable, "-m", "crest_cli", "build", "--corpus", corpus, "--quiet"], check=True)
    return DraftIndex.load(path)


@torch.inference_mode()
def plain_greedy(target, ids: list[int], max_new_tokens: int) -> tuple[list[int], float]:
    device = target.device
    started = time.perf_counter()
    output = target.model.generate(
        torch.tensor([ids], device=device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return output[0, len(ids) :].tolist(), time.perf_counter() - started


def run_benchmark(target, prompts: list[list[int]], index: DraftIndex, budget: NodeBudget, max_new_tokens: int) -> dict:
    configurations = {
        "datastore": IndexSource(index),
        "prompt lookup": WithPromptLookup(NoDrafts()),
        "datastore + prompt lookup": WithPromptLookup(IndexSource(index)),
    }
    plain_tokens, plain_seconds, references = 0, 0.0, []
    for ids in prompts:
        tokens, seconds = plain_greedy(target, ids, max_new_tokens)
        references.append((tokens, seconds))
        plain_tokens += len(tokens)
        plain_seconds += seconds
    rows = {
        "plain greedy (generate)": {
            "tokens_per_second": plain_tokens / plain_seconds,
            "speedup": 1.0,
            "accepted": 1.0,
            "overhead": 0.0,
            "identical": len(prompts),
        }
    }
    for name, source in configurations.items():
        decoder = SpeculativeDecoder(target, source, budget)
        tokens, seconds, speedups, accepted, overheads, identical = 0, 0.0, [], [], [], 0
        for ids, (reference, reference_seconds) in zip(prompts, references):
            started = time.perf_counter()
            generation = decoder.generate(ids, max_new_tokens)
            elapsed = time.perf_counter() - started
            identical += generation.tokens == reference
            tokens += len(generation.tokens)
            seconds += elapsed
            speedups.append((len(generation.tokens) / elapsed) / (len(reference) / reference_seconds))
            accepted.append(generation.mean_accepted_length)
            overheads.extend(1 - step.forward_seconds / step.seconds for step in generation.steps)
        rows[name] = {
            "tokens_per_second": tokens / seconds,
            "speedup": statistics.median(speedups),
            "accepted": float(np.mean(accepted)),
            "overhead": statistics.median(overheads),
            "identical": identical,
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    args = parser.parse_args()

    target = load_target(args.model, args.dtype, args.device)
    budget = NodeBudget(32, CostCurve.measure(target))
    benchmarks = {
        "HumanEval (stdlib store)": (
            [target.encode_prompt(p, chat=False) for p in humaneval_prompts(args.prompts)],
            store_index("stdlib"),
        ),
        "MT-Bench (ShareGPT store)": (
            [target.encode_prompt(q, chat=True) for q in mtbench_questions(args.prompts)],
            store_index("sharegpt"),
        ),
    }
    curve = ", ".join(f"{n}: {s * 1e3:.0f} ms" for n, s in zip(budget.curve.fed_tokens, budget.curve.seconds))
    lines = [
        "## Decoder (issue 4)",
        "",
        f"Command: `{COMMAND}`. Model {args.model} ({args.dtype}, {args.device}, {torch.get_num_threads()} threads), "
        f"{args.prompts} prompts each, {args.max_new_tokens} new tokens, greedy. Node budget chosen per step from "
        f"the measured cost curve (fed tokens: forward time) {curve}.",
        "",
        "| benchmark | drafts from | tokens/s | median speedup | accepted tokens/step | step overhead outside forward | output identical to plain |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for benchmark, (prompts, index) in benchmarks.items():
        for name, row in run_benchmark(target, prompts, index, budget, args.max_new_tokens).items():
            lines.append(
                f"| {benchmark} | {name} | {row['tokens_per_second']:.1f} | {row['speedup']:.2f}x | "
                f"{row['accepted']:.2f} | {100 * row['overhead']:.1f}% | {row['identical']}/{len(prompts)} |"
            )
            print(lines[-1], flush=True)
    markdown = "\n".join(lines)
    print(markdown)
    if args.write:
        write_section(f"decoder-{args.device}-{args.dtype}", markdown)


if __name__ == "__main__":
    main()
