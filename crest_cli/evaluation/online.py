"""`crest eval --online`: does a store that learns from served outputs draft better?

Each suite's prompts are replayed in a fixed order (the suite's own). Four sources draft every
prompt: the static store, the same store with a learning overlay, and each of them merged with
prompt lookup. The overlay (datastore_service/overlay/, in process, the code `crest serve --learn`
runs) learns each prompt's output only after that prompt is replayed, so no prompt drafts from
its own output. MT-Bench's second turn is asked after the first, in the chat the first turn's
output made, and is learned from in turn. Replay is exact (decoder/replay.py): the target's
greedy output does not depend on drafts.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from crest_cli.benchmark_prompts import humaneval_prompts, mtbench_turns
from crest_cli.evaluation.doc_sections import write_section
from datastore_service.build.corpus import corpus_spec
from datastore_service.build.pipeline import build_store, default_store_path
from datastore_service.draft import DEFAULT_SELECTION, DraftTree
from datastore_service.errors import CrestError
from datastore_service.lookup.index_loader import LookupIndex, load_index
from datastore_service.overlay.overlay import Overlay
from decoder.draft_sources import DraftSource, IndexSource
from decoder.node_budget import NodeBudget
from decoder.prompt_lookup import WithPromptLookup
from decoder.references import greedy_references
from decoder.replay import replay
from decoder.target_model import TargetModel

ONLINE_SUITES = ("humaneval", "mtbench")  # what the default code and chat stores learn on
SOURCES = ("static store", "learning store", "static store + prompt lookup", "learning store + prompt lookup")


class LearningSource:
    """The store's index with an overlay merged in, as a `crest serve --learn` Lookup answers."""

    def __init__(self, index: LookupIndex, overlay: Overlay) -> None:
        self.index, self.overlay, self.max_context = index, overlay, index.width

    def drafts(self, contexts: Sequence[Sequence[int]], max_nodes: int) -> list[DraftTree]:
        batch = self.index.prepare([list(c[-self.max_context :]) for c in contexts], max_nodes)
        static = self.index.lookup_batch(batch, DEFAULT_SELECTION)
        return self.overlay.lookup(self.index, batch, static, DEFAULT_SELECTION).trees()


@dataclass
class Tally:
    tokens: int = 0
    forwards: int = 0

    @property
    def accepted_length(self) -> float:
        return self.tokens / max(self.forwards, 1)


def _conversations(target: TargetModel, suite: str, count: int | None, turns: int, max_new_tokens: int, progress):
    """Yield (prompt ids, reference ids) in replay order; a second turn's prompt holds the first's output."""
    if suite == "humaneval":
        prompts = [target.encode_prompt(text, chat=False) for text in humaneval_prompts(count)]
        yield from zip(prompts, greedy_references(target, prompts, max_new_tokens, progress))
        return
    questions = mtbench_turns(count)
    firsts = [target.encode_prompt(q[0], chat=True) for q in questions]
    first_outputs = greedy_references(target, firsts, max_new_tokens, progress)
    seconds = []
    if turns > 1:
        for question, output in zip(questions, first_outputs):
            chat = [
                {"role": "user", "content": question[0]},
                {"role": "assistant", "content": target.tokenizer.decode(output, skip_special_tokens=True)},
                {"role": "user", "content": question[1]},
            ]
            seconds.append(
                list(
                    target.tokenizer.apply_chat_template(
                        chat, add_generation_prompt=True, tokenize=True, return_dict=False
                    )
                )
            )
        second_outputs = greedy_references(target, seconds, max_new_tokens, progress)
    for i, (prompt, output) in enumerate(zip(firsts, first_outputs)):
        yield prompt, output
        if turns > 1:
            yield seconds[i], second_outputs[i]


def run_online(args: argparse.Namespace, target: TargetModel) -> str:
    suites = [suite for suite in args.suites if suite in ONLINE_SUITES]
    if not suites:
        raise CrestError(f"--online replays {' and '.join(ONLINE_SUITES)} (with the default stores), not {args.suites}")
    rows = []
    for suite in suites:
        corpus = args.code_corpus if suite == "humaneval" else args.chat_corpus
        store = default_store_path(corpus_spec(corpus).display_name)
        if not store.exists():
            build_store(corpus_spec(corpus), args.model, store, _default_params(), progress=not args.quiet)
        index = load_index(store)
        overlay = Overlay(None, index)
        learning = LearningSource(index, overlay)
        sources: list[DraftSource] = [IndexSource(index), learning]
        sources += [WithPromptLookup(source) for source in sources]
        tallies = [Tally() for _ in sources]
        budget = NodeBudget(args.max_nodes)
        pairs = list(_conversations(target, suite, args.prompts, args.turns, args.max_new_tokens, not args.quiet))
        for prompt, reference in tqdm(pairs, desc=f"online {suite}", unit="prompt", disable=args.quiet):
            for source, tally in zip(sources, tallies):
                result = replay(source, budget, prompt, reference, args.max_new_tokens)
                tally.tokens += result.tokens
                tally.forwards += result.steps + 1
            overlay.observe([np.array(reference[: args.max_new_tokens], np.int32)])  # learned only after its own replay
            overlay.refresh()
        rows.append((suite, store.name, len(pairs), tallies, overlay))
    return _report(args, rows)


def _default_params():
    from datastore_service.build.params import BuildParams

    return BuildParams()


def _report(args: argparse.Namespace, rows) -> str:
    lines = [
        f"Command: `crest eval --online{'' if args.prompts is None else f' --prompts {args.prompts}'} "
        f"--turns {args.turns} --max-nodes {args.max_nodes}`. Target {args.model} ({args.dtype}), "
        f"{args.max_new_tokens} new tokens, greedy, replayed exactly; at most {args.max_nodes} draft nodes per step. "
        "Prompts in the suite's order; the learning store learns each output after that prompt is replayed "
        "(MT-Bench: first turn, then the second turn in the chat the first made).",
        "",
        "| suite | store | prompts | " + " | ".join(SOURCES) + " | learning - static | overlay contexts |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in SOURCES) + " | ---: | ---: |",
    ]
    for suite, store, count, tallies, overlay in rows:
        values = [t.accepted_length for t in tallies]
        gain = f"{values[1] - values[0]:+.3f} / {values[3] - values[2]:+.3f} with prompt lookup"
        lines.append(
            f"| {suite} | {store} | {count} | "
            + " | ".join(f"{v:.3f}" for v in values)
            + f" | {gain} | {len(overlay.trees.view.keys):,} |"
        )
    markdown = "\n".join(lines)
    write_section(args.output_dir / "RESULTS.md", "online", "## Online: a store that learns\n\n" + markdown, "Results")
    print(markdown)
    return markdown
