"""transformers' `generate` with `custom_generate=crest_generate` against CREST's own loop and plain
`generate`, prompt by prompt, side by side.

    python benchmarks/hf_generate_speed.py [--prompts 20] [--max-new-tokens 128] [--write]

HumanEval prompts, greedy, float32, drafts from the default stdlib store plus prompt lookup. For each
prompt: plain `model.generate`, then `model.generate(..., custom_generate=crest_generate,
draft_source=...)`, then the engine itself (`make_decoder(...).generate`) with the same source, back
to back. Reported: tokens/s of each, the median per-prompt ratio of `custom_generate` to the
engine and to plain `generate`, and how many outputs equal plain `generate`'s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _report import write_section
from decode_speed import store_index

from crest_cli.benchmark_prompts import humaneval_prompts
from decoder.decoders import make_decoder
from decoder.draft_sources import IndexSource
from decoder.hf_generate import crest_generate
from decoder.prompt_lookup import WithPromptLookup
from decoder.target_model import load_target

COMMAND = "python benchmarks/hf_generate_speed.py " + " ".join(sys.argv[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    args = parser.parse_args()

    target = load_target("smollm2")
    model = target.model
    source = IndexSource(store_index("stdlib"))
    engine = make_decoder(target, WithPromptLookup(source))
    settings = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=0)

    def decode(how: str, ids: torch.Tensor) -> list[int]:
        if how == "engine":
            return engine.generate(ids[0].tolist(), args.max_new_tokens).tokens
        extra = {"custom_generate": crest_generate, "draft_source": source} if how == "custom_generate" else {}
        return model.generate(ids, **settings, **extra)[0, ids.shape[1] :].tolist()

    rates: dict[str, list[float]] = {"generate": [], "custom_generate": [], "engine": []}
    identical = 0
    with torch.inference_mode():
        warm_up = torch.tensor([target.encode_prompt("def f(x):", chat=False)])
        for how in rates:  # each loop's one-time setup (prepacked weights, cost curve) before the clock runs
            decode(how, warm_up)
        for text in humaneval_prompts(args.prompts):
            ids = torch.tensor([target.encode_prompt(text, chat=False)])
            outputs = {}
            for how in rates:
                started = time.perf_counter()
                outputs[how] = decode(how, ids)
                rates[how].append(len(outputs[how]) / (time.perf_counter() - started))
            identical += outputs["custom_generate"] == outputs["generate"]
    to_engine = statistics.median(c / e for c, e in zip(rates["custom_generate"], rates["engine"]))
    to_generate = statistics.median(c / g for c, g in zip(rates["custom_generate"], rates["generate"]))
    markdown = "\n".join(
        [
            "## transformers' generate with custom_generate=crest_generate (issue 12)",
            "",
            f"Command: `{COMMAND}`. SmolLM2 float32 on {torch.get_num_threads()} CPU threads, {args.prompts} "
            f"HumanEval prompts, {args.max_new_tokens} new tokens, greedy, drafts from the stdlib store + prompt "
            "lookup; the three runs of each prompt back to back.",
            "",
            "| decoding | median tokens/s |",
            "| --- | ---: |",
            *(f"| {name} | {statistics.median(values):.1f} |" for name, values in rates.items()),
            "",
            f"custom_generate / CREST's own loop: **{to_engine:.3f}x** (median per prompt); custom_generate / plain "
            f"generate: {to_generate:.2f}x; outputs identical to plain generate: **{identical}/{args.prompts}**.",
        ]
    )
    print(markdown)
    if args.write:
        write_section("hf-generate", markdown)


if __name__ == "__main__":
    main()
