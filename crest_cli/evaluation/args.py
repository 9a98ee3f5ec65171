"""Flags of `crest eval`, kept free of torch so `crest --help` stays light."""

from __future__ import annotations

import argparse
from pathlib import Path

from crest_cli.evaluation.store_points import DEFAULT_BUDGETS_MB, DEFAULT_FRACTIONS, DEFAULT_VARIANTS, VARIANTS
from datastore_service.errors import CrestError
from datastore_service.paths import cache_dir
from datastore_service.sizes import parse_budget


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _megabytes(text: str) -> list[float]:
    try:
        budgets = [parse_budget(part) for part in text.split(",") if part]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if any(b.bytes is None for b in budgets):
        raise argparse.ArgumentTypeError("eval budgets are sizes (e.g. 2MB), not rows")
    return [b.bytes / 1e6 for b in budgets]


def _megabyte(text: str) -> float:
    budgets = _megabytes(text)
    if len(budgets) != 1:
        raise argparse.ArgumentTypeError(f"expected one size (e.g. 4MB), got {text!r}")
    return budgets[0]


def _names(choices: list[str]):
    def parse(text: str) -> list[str]:
        names = [part for part in text.split(",") if part]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated)")
        return names

    return parse


def output_folder(args: argparse.Namespace) -> Path:
    """--output-dir, the checkout's docs/ with --write-docs, else a cache folder: a run never
    overwrites the checkout's own docs/RESULTS.md unless asked to."""
    if args.output_dir is not None:
        return args.output_dir
    if args.write_docs:
        docs = Path(__file__).resolve().parents[2] / "docs"
        if not (docs / "RESULTS.md").exists():
            raise CrestError(f"--write-docs: no checkout docs folder with RESULTS.md at {docs}; give --output-dir")
        return docs
    return cache_dir("eval", "results")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suites",
        type=_names(["humaneval", "mtbench", "humaneval-python"]),
        default=["humaneval", "mtbench", "humaneval-python"],
        help="benchmarks, comma-separated; humaneval-python drafts HumanEval from --large-code-corpus",
    )
    parser.add_argument("--model", default="smollm2", help="target model (its tokenizer builds every store)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch decides)")
    parser.add_argument("--prompts", type=int, default=None, help="first N prompts of each suite (None: all)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--max-nodes", type=int, default=64, help="draft nodes verified per step, the same for every store (REST's c)"
    )
    parser.add_argument(
        "--fractions",
        type=_floats,
        default=list(DEFAULT_FRACTIONS),
        help="REST stores: fractions of the corpus's tokens",
    )
    parser.add_argument(
        "--budgets",
        type=_megabytes,
        default=list(DEFAULT_BUDGETS_MB),
        help="CREST stores: file sizes, e.g. 1MB,4MB,16MB",
    )
    parser.add_argument(
        "--variants",
        type=_names(list(VARIANTS)),
        default=None,
        help="CREST variants for every suite (default: "
        + "; ".join(f"{suite}: {','.join(names)}" for suite, names in DEFAULT_VARIANTS.items())
        + "): "
        + "; ".join(f"{k} = {v.line}" for k, v in VARIANTS.items()),
    )
    parser.add_argument("--code-corpus", default="stdlib", help="corpus of the HumanEval stores (preset or path)")
    parser.add_argument("--chat-corpus", default="sharegpt", help="corpus of the MT-Bench stores (preset or path)")
    parser.add_argument(
        "--large-code-corpus",
        default="python",
        help="corpus of the humaneval-python stores (preset or path; python = stdlib + installed site-packages)",
    )
    parser.add_argument(
        "--ablation-budget",
        type=_megabyte,
        default=4.0,
        help="budget of the ablation, the authors' CREST turned into ours one difference at a time (0: skip)",
    )
    parser.add_argument(
        "--real-check", type=int, default=2, help="prompts per suite decoded for real to check the replay (0: skip)"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where RESULTS.md (its eval section), results.csv and results.png go "
        "(default: $CREST_CACHE/eval/results, $CREST_CACHE defaulting to ~/.cache/crest)",
    )
    output.add_argument(
        "--write-docs",
        action="store_true",
        help="write into this checkout's docs/ (RESULTS.md's eval section, results.csv, results.png)",
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="instead of the storage sweep: replay each suite in order with a store that learns every output "
        "after its prompt, against the same store static (each with and without prompt lookup)",
    )
    parser.add_argument(
        "--turns", type=int, choices=(1, 2), default=2, help="--online: MT-Bench turns (2: the second after the first)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
