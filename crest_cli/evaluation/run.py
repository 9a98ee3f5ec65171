"""`crest eval`: references -> stores -> replayed acceptance -> real-decoding check -> report.

Held-in / held-out: each suite's prompts are split into two fixed halves (suites.halves). What the
evaluation tunes, the lookup each CREST line uses (scored, longest match, merged or chained), and the
tree shape of the shape-choice line at each budget, is chosen on one half and scored on the other,
both ways round, so every prompt's accepted tokens come from a choice made without it; the claims
are computed from these held-out figures over all prompts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from crest_cli.evaluation.args import output_folder
from crest_cli.evaluation.doc_sections import write_section
from crest_cli.evaluation.measure import Acceptance, replay_suite
from crest_cli.evaluation.real_check import RealCheck, check_replays
from crest_cli.evaluation.report import AblationStep, ResultRow, markdown_report, write_csv, write_plot
from crest_cli.evaluation.store_points import (
    DEFAULT_VARIANTS,
    SHAPE_CHOICE,
    VARIANTS,
    AuthorsVariant,
    CrestVariant,
    StorePoint,
    prepare_points,
)
from crest_cli.evaluation.suites import SUITES, Suite, halves
from datastore_service.build.corpus import corpus_spec
from datastore_service.errors import CrestError
from datastore_service.lookup.index_loader import load_index
from datastore_service.sizes import format_bytes
from decoder.references import greedy_references
from decoder.target_model import TargetModel, load_target

CSV_NAME, PLOT_NAME, RESULTS_NAME = "results.csv", "results.png", "RESULTS.md"


def run(args: argparse.Namespace) -> int:
    args.output_dir = output_folder(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.quiet
    target = load_target(args.model, args.dtype, args.device)
    if args.online:
        from crest_cli.evaluation.online import run_online

        run_online(args, target)
        return 0
    rows: list[ResultRow] = []
    ablations: list[AblationStep] = []
    checks: list[RealCheck] = []
    reference_seconds, started = 0.0, time.perf_counter()
    for name in args.suites:
        suite = SUITES[name]
        prompts = [target.encode_prompt(text, chat=suite.chat) for text in suite.prompts(args.prompts)]
        reference_started = time.perf_counter()
        references = greedy_references(target, prompts, args.max_new_tokens, progress)
        reference_seconds += time.perf_counter() - reference_started
        corpus = corpus_spec(_corpus_label(args, suite))
        variants = args.variants or DEFAULT_VARIANTS[name]
        points = prepare_points(
            corpus, args.model, args.fractions, args.budgets, [VARIANTS[v] for v in variants], progress
        )
        extra = []
        if args.ablation_budget and name in ABLATION_STEPS:
            extra = prepare_points(corpus, args.model, [], [args.ablation_budget], _ablation_variants(name), progress)
            extra = [point for point in extra if point not in points]
        replayed: dict[tuple[Path, str], Acceptance] = {}
        for point in tqdm(points + extra, desc=f"replay {suite.title}", unit="store", disable=not progress):
            index = load_index(point.path)
            _require_same_tokenizer(index.info.tokenizer_fingerprint, target, point)
            for lookup in point.lookups:
                if (point.path, lookup) not in replayed:
                    replayed[point.path, lookup] = replay_suite(
                        index, prompts, references, args.max_nodes, args.max_new_tokens, lookup
                    )
        split = halves(name, len(prompts))
        rows += _rows(name, points, replayed, split) + _shape_choice_rows(name, points, replayed, split)
        if extra:
            ablations += _ablation(name, points + extra, replayed, args.ablation_budget)
        for point, lookup in _checked_stores(points, rows, name):
            if args.real_check > 0:
                count = args.real_check
                checks += check_replays(
                    target,
                    name,
                    f"{point.line} {point.setting} ({lookup})",
                    load_index(point.path),
                    prompts[:count],
                    references[:count],
                    replayed[point.path, lookup].replays[:count],
                    args.max_nodes,
                    args.max_new_tokens,
                    lookup,
                )
    sweep_seconds = time.perf_counter() - started - reference_seconds
    _write_outputs(args, rows, ablations, checks, target, sweep_seconds)
    disagreeing = [c for c in checks if not c.agrees]
    if disagreeing:
        raise CrestError(
            f"replay disagrees with real decoding on {len(disagreeing)} of {len(checks)} checks "
            f"(see {args.output_dir / RESULTS_NAME})"
        )
    return 0


def _rows(
    suite: str,
    points: Sequence[StorePoint],
    replayed: dict[tuple[Path, str], Acceptance],
    split: tuple[list[int], list[int]],
) -> list[ResultRow]:
    """One row per store; a line's lookup is the one with the most accepted tokens per forward over
    the line's stores on one half, and that half's rows count the other half's choice."""
    chosen: dict[tuple[str, int], str] = {}  # (line, half scored) -> lookup chosen on the other half
    for line in dict.fromkeys(p.line for p in points):
        stores = [p for p in points if p.line == line]
        for scored_half, tuning_half in ((0, 1), (1, 0)):
            chosen[line, scored_half] = max(
                stores[0].lookups, key=lambda lookup: _accepted_length(stores, replayed, lookup, split[tuning_half])
            )
    rows = []
    for point in points:
        picks = [chosen[point.line, half] for half in (0, 1)]
        held_out = _pooled(replayed[point.path, pick].over(split[half]) for half, pick in enumerate(picks))
        everywhere = {lookup: replayed[point.path, lookup] for lookup in point.lookups}
        rows.append(
            ResultRow(
                suite,
                point.system,
                point.line,
                point.setting,
                point.lookup_bytes,
                point.file_bytes,
                held_out,
                "/".join(dict.fromkeys(picks)),
                everywhere["scored"].accepted_length if "scored" in everywhere else None,
                everywhere["longest"].accepted_length if "longest" in everywhere else None,
                everywhere["merged"].accepted_length if "merged" in everywhere else None,
                everywhere["chained"].accepted_length if "chained" in everywhere else None,
                everywhere[picks[0]].lookup_us_median,
                point.build_seconds,
            )
        )
    return rows


def _shape_choice_rows(
    suite: str,
    points: Sequence[StorePoint],
    replayed: dict[tuple[Path, str], Acceptance],
    split: tuple[list[int], list[int]],
) -> list[ResultRow]:
    """The shape-choice line: at each budget where every member shape was built, the (shape, lookup)
    with the most accepted tokens per forward on one half scores the other. Its storage is the larger
    of the two halves' picks, so the line never claims fewer bytes than a prompt was drafted from."""
    shape_of = {VARIANTS[name].line: name for name in SHAPE_CHOICE.members}
    at_budget: dict[str, list[StorePoint]] = {}
    for point in points:
        if point.line in shape_of:
            at_budget.setdefault(point.setting, []).append(point)
    rows = []
    for setting, stores in at_budget.items():
        if len(stores) < len(shape_of):
            continue
        options = [(store, lookup) for store in stores for lookup in store.lookups]
        picks = [
            max(options, key=lambda option: _accepted_length([option[0]], replayed, option[1], split[tuning_half]))
            for tuning_half in (1, 0)  # the pick for half 0 is tuned on half 1, and the other way round
        ]
        held_out = _pooled(replayed[store.path, lookup].over(split[half]) for half, (store, lookup) in enumerate(picks))
        rows.append(
            ResultRow(
                suite,
                "CREST",
                SHAPE_CHOICE.line,
                setting,
                max(store.lookup_bytes for store, _ in picks),
                max(store.file_bytes for store, _ in picks),
                held_out,
                "/".join(dict.fromkeys(f"{shape_of[store.line]} {lookup}" for store, lookup in picks)),
                None,
                None,
                None,
                None,
                replayed[picks[0][0].path, picks[0][1]].lookup_us_median,
                picks[0][0].build_seconds,
            )
        )
    return rows


# From the authors' CREST to ours, one difference at a time, at one budget: (what changes, variant,
# lookup, the step it changes from: an index into the list, None for the first).
ABLATION_STEPS = {
    suite: [
        (
            "the authors' CREST: REST's trees (first 5,000 occurrences, m=10, top 64, cut), longest match",
            authors,
            "longest",
            None,
        ),
        ("without REST's cut of the trees", authors + "-uncut", "longest", 0),
        ("our raw trees instead: every occurrence counted, depth 8, 32 nodes, N<=4", "raw-n4", "longest", 1),
        ("the scored lookup instead of longest match", "raw-n4", "scored", 2),
        ("back-off trees instead of raw counts", "ours-n4", "longest", 2),
        ("the scored lookup instead of longest match", "ours-n4", "scored", 4),
        ("contexts of up to 2 tokens instead of 4", "ours", "longest", 4),
        ("gain per byte instead of the paper's rule", "gain", "longest", 4),
        ("the merged lookup instead of longest match", "raw-n4", "merged", 2),
        ("the merged lookup instead of longest match", "ours-n4", "merged", 4),
    ]
    for suite, authors in (("humaneval", "authors"), ("mtbench", "authors-n5"))
}


def _ablation_variants(suite: str) -> list[CrestVariant | AuthorsVariant]:
    """Every variant of the ablation; stores the sweep already built at that budget come from its cache."""
    return [VARIANTS[v] for v in dict.fromkeys(step[1] for step in ABLATION_STEPS[suite])]


def _ablation(
    suite: str, points: Sequence[StorePoint], replayed: dict[tuple[Path, str], Acceptance], budget_mb: float
) -> list[AblationStep]:
    """Every prompt's accepted length at `budget_mb`, one step of the ablation at a time."""
    setting = format_bytes(budget_mb * 1e6)
    steps = []
    for change, variant, lookup, base in ABLATION_STEPS[suite]:
        line = VARIANTS[variant].line
        point = next(p for p in points if p.line == line and p.setting == setting)
        steps.append(
            AblationStep(
                suite,
                change,
                line,
                lookup,
                point.lookup_bytes,
                replayed[point.path, lookup].accepted_length,
                None if base is None else base + 1,
            )
        )
    return steps


def _accepted_length(
    stores: Sequence[StorePoint], replayed: dict[tuple[Path, str], Acceptance], lookup: str, prompts: list[int]
) -> float:
    """Tokens per target forward over these prompts, all the stores together, with this lookup."""
    return _pooled(replayed[p.path, lookup].over(prompts) for p in stores)


def _pooled(parts: Iterable[tuple[int, int]]) -> float:
    """Tokens per target forward over (tokens, forwards) parts: all tokens over all forwards."""
    tokens, forwards = zip(*parts)
    return sum(tokens) / max(sum(forwards), 1)


def _checked_stores(points: list[StorePoint], rows: list[ResultRow], suite: str) -> list[tuple[StorePoint, str]]:
    """Real decoding checks the largest REST store and the largest store of the first CREST line,
    with the lookup that line uses."""
    rest = [p for p in points if p.system == "REST"]
    crest = [p for p in points if p.system == "CREST"]
    chosen = [(max(rest, key=lambda p: p.file_bytes), "longest")] if rest else []
    if crest:
        largest = max((p for p in crest if p.line == crest[0].line), key=lambda p: p.file_bytes)
        lookup = next(r.lookup for r in rows if r.suite == suite and r.line == largest.line).split("/")[0]
        chosen.append((largest, lookup))
    return chosen


def _require_same_tokenizer(fingerprint: str, target: TargetModel, point: StorePoint) -> None:
    if fingerprint != target.tokenizer_fingerprint:
        raise CrestError(f"{point.path} was built with another tokenizer than {target.name}'s")


def _write_outputs(
    args: argparse.Namespace,
    rows: list[ResultRow],
    ablations: list[AblationStep],
    checks: list[RealCheck],
    target: TargetModel,
    sweep_seconds: float,
) -> None:
    folder = args.output_dir
    titles = {name: f"{SUITES[name].title} ({_corpus_label(args, SUITES[name])} stores)" for name in args.suites}
    write_csv(rows, folder / CSV_NAME)
    write_plot(rows, titles, folder / PLOT_NAME)
    command = "crest eval " + shlex.join(sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] == "eval" else "crest eval"
    prompts = "all" if args.prompts is None else f"the first {args.prompts}"
    setup = (
        f"Command: `{command}` ({datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} CPU cores, "
        f"sweep {sweep_seconds / 60:.1f} min after the greedy references were cached).\n\n"
        f"Target {target.name} ({args.dtype}, {args.device}); {prompts} prompts of each suite, "
        f"{args.max_new_tokens} new tokens; every store drafts at most {args.max_nodes} nodes per step. "
        "Accepted length = tokens emitted per target forward, the bonus token included (1.0 = no draft "
        "accepted), computed by exact replay of the target's greedy output. Held out: each suite's prompts are "
        "split into two fixed halves; a CREST line's lookup (scored, longest match, merged or chained) is chosen "
        "on one half and counted on the other, both ways round, so every prompt is scored by a choice made "
        "without it (the `lookup` column: the choice for each half). The shape-choice line picks, at each budget, "
        "the tree shape and lookup the same way among the lines it names in the `lookup` column, and counts the "
        "larger of the two picks' storage. The `scored`, `longest`, `merged` and `chained` columns replay "
        "every prompt with that lookup. Storage = bytes on disk that lookups need: REST's tokens + suffix array "
        "(its whole file); "
        "CREST's DuckDB file without its vocabulary table, which only serves SQL inspection (the file column "
        "includes it); for the authors' trees also as they keep them, LZMA-compressed pickles. "
        "Lookup p50 = median in-process lookup time per step over the whole replay."
    )
    markdown = markdown_report(rows, ablations, checks, titles, setup, PLOT_NAME, CSV_NAME)
    write_section(folder / RESULTS_NAME, "eval", markdown, title="Results: CREST vs REST")
    print(markdown)
    print(f"\nwrote {RESULTS_NAME} (its eval section), {CSV_NAME} and {PLOT_NAME} into {folder}", file=sys.stderr)


def _corpus_label(args: argparse.Namespace, suite: Suite) -> str:
    """The corpus (preset or path) this suite's stores are built from."""
    return {"humaneval": args.code_corpus, "mtbench": args.chat_corpus}.get(suite.name, args.large_code_corpus)
