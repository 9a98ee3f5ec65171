"""Accepted tokens per step of given stores, replayed on every prompt of a suite (no model forward).

    python benchmarks/replay_stores.py --suite humaneval STORE [STORE ...] [--max-nodes 64]

SmolLM2's cached greedy outputs (made once, float32) are replayed against each store exactly as
the decoder would draft from it (decoder/replay.py), with each lookup: the scored choice, the
longest match, the merged trees and the chained ones (merged, grown at their leaves). Used to compare stores built with different settings, e.g. `--backoff 0` and `2`.
"""

from __future__ import annotations

import argparse

from crest_cli.evaluation.measure import replay_suite
from crest_cli.evaluation.suites import SUITES
from datastore_service.lookup.draft_index import SELECTIONS
from datastore_service.lookup.index_loader import load_index
from decoder.references import greedy_references
from decoder.target_model import load_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stores", nargs="+", help="store files to replay")
    parser.add_argument("--suite", choices=sorted(SUITES), default="humaneval")
    parser.add_argument("--max-nodes", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    target = load_target("smollm2", "float32", "cpu")
    suite = SUITES[args.suite]
    prompts = [target.encode_prompt(text, chat=suite.chat) for text in suite.prompts(None)]
    references = greedy_references(target, prompts, args.max_new_tokens, progress=True)
    print(
        f"| store | {suite.title}: prompts | scored | longest match | merged | chained |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: |"
    )
    for store in args.stores:
        index = load_index(store)
        lengths = [
            replay_suite(index, prompts, references, args.max_nodes, args.max_new_tokens, lookup).accepted_length
            for lookup in SELECTIONS
        ]
        print(f"| {store} | {len(prompts)} | " + " | ".join(f"{x:.4f}" for x in lengths) + " |", flush=True)


if __name__ == "__main__":
    main()
