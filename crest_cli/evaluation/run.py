"""`crest eval`: references -> stores -> replayed acceptance -> real-decoding check -> report."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import datetime, timezone

import torch
from tqdm import tqdm

from crest_cli.evaluation.args import output_folder
from crest_cli.evaluation.doc_sections import write_section
from crest_cli.evaluation.measure import replay_suite
from crest_cli.evaluation.real_check import RealCheck, check_replays
from crest_cli.evaluation.report import ResultRow, markdown_report, write_csv, write_plot
from crest_cli.evaluation.store_points import VARIANTS, StorePoint, prepare_points
from crest_cli.evaluation.suites import SUITES, Suite
from datastore_service.build.corpus import corpus_spec
from datastore_service.errors import CrestError
from datastore_service.lookup.index_loader import load_index
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
    checks: list[RealCheck] = []
    reference_seconds, started = 0.0, time.perf_counter()
    for name in args.suites:
        suite = SUITES[name]
        prompts = [target.encode_prompt(text, chat=suite.chat) for text in suite.prompts(args.prompts)]
        reference_started = time.perf_counter()
        references = greedy_references(target, prompts, args.max_new_tokens, progress)
        reference_seconds += time.perf_counter() - reference_started
        corpus = corpus_spec(_corpus_label(args, suite))
        points = prepare_points(
            corpus, args.model, args.fractions, args.budgets, [VARIANTS[v] for v in args.variants], progress
        )
        checked = _checked_stores(points)
        for point in tqdm(points, desc=f"replay {suite.title}", unit="store", disable=not progress):
            index = load_index(point.path)
            _require_same_tokenizer(index.info.tokenizer_fingerprint, target, point)
            acceptance = replay_suite(index, prompts, references, args.max_nodes, args.max_new_tokens)
            rows.append(
                ResultRow(
                    name,
                    point.system,
                    point.line,
                    point.setting,
                    point.lookup_bytes,
                    point.file_bytes,
                    acceptance.accepted_length,
                    acceptance.lookup_us_median,
                    point.build_seconds,
                )
            )
            if point in checked and args.real_check > 0:
                count = args.real_check
                checks += check_replays(
                    target,
                    name,
                    f"{point.line} {point.setting}",
                    index,
                    prompts[:count],
                    references[:count],
                    acceptance.replays[:count],
                    args.max_nodes,
                    args.max_new_tokens,
                )
    sweep_seconds = time.perf_counter() - started - reference_seconds
    _write_outputs(args, rows, checks, target, sweep_seconds)
    disagreeing = [c for c in checks if not c.agrees]
    if disagreeing:
        raise CrestError(
            f"replay disagrees with real decoding on {len(disagreeing)} of {len(checks)} checks "
            f"(see {args.output_dir / RESULTS_NAME})"
        )
    return 0


def _checked_stores(points: list[StorePoint]) -> list[StorePoint]:
    """Real decoding checks the largest REST store and the largest store of the first CREST line."""
    rest = [p for p in points if p.system == "REST"]
    crest = [p for p in points if p.system == "CREST"]
    chosen = [max(rest, key=lambda p: p.file_bytes)] if rest else []
    if crest:
        first_line = [p for p in crest if p.line == crest[0].line]
        chosen.append(max(first_line, key=lambda p: p.file_bytes))
    return chosen


def _require_same_tokenizer(fingerprint: str, target: TargetModel, point: StorePoint) -> None:
    if fingerprint != target.tokenizer_fingerprint:
        raise CrestError(f"{point.path} was built with another tokenizer than {target.name}'s")


def _write_outputs(
    args: argparse.Namespace, rows: list[ResultRow], checks: list[RealCheck], target: TargetModel, sweep_seconds: float
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
        "accepted), computed by exact replay of the target's greedy output. Storage = bytes on disk that lookups "
        "need: REST's tokens + suffix array (its whole file); CREST's DuckDB file without its vocabulary table, "
        "which only serves SQL inspection (the file column includes it). "
        "Lookup p50 = median in-process lookup time per step over the whole replay."
    )
    markdown = markdown_report(rows, checks, titles, setup, PLOT_NAME, CSV_NAME)
    write_section(folder / RESULTS_NAME, "eval", markdown, title="Results: CREST vs REST")
    print(markdown)
    print(f"\nwrote {RESULTS_NAME} (its eval section), {CSV_NAME} and {PLOT_NAME} into {folder}", file=sys.stderr)


def _corpus_label(args: argparse.Namespace, suite: Suite) -> str:
    """The corpus (preset or path) this suite's stores are built from."""
    return args.code_corpus if suite.name == "humaneval" else args.chat_corpus
