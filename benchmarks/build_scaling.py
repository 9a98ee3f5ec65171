"""Build benchmark: whole-build time and peak RSS on the stdlib corpus, and scaling with corpus size.

Each build runs `crest build` in its own process (peak RSS from wait4), with a fresh token cache so
tokenization is included; the converted tokenizer stays cached. Phases come from the build summary.

    python benchmarks/build_scaling.py [--runs 3] [--sharegpt] [--write]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import write_section

from datastore_service.build.corpus import stdlib_corpus
from datastore_service.build.tokenizer import TargetTokenizer

COMMAND = "python benchmarks/build_scaling.py " + " ".join(sys.argv[1:])


def run_build(corpus: str, extra: list[str], cache: Path, output: Path) -> dict:
    env = {**os.environ, "CREST_CACHE": str(cache)}
    shutil.rmtree(cache / "tokens", ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "crest_cli",
        "build",
        "--corpus",
        corpus,
        "--output",
        str(output),
        "--quiet",
        *extra,
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build failed: {stderr}")
    phases = dict((k, float(v)) for k, v in re.findall(r"(\w+) ([0-9.]+)s", stdout.split("\ntime ", 1)[1]))
    tokens = int(re.search(r"([0-9,]+) tokens", stdout).group(1).replace(",", ""))
    size = re.search(r"size +([0-9.]+ [KMG]?B) \(([0-9.]+) bytes per context", stdout)
    return {
        "wall": wall,
        "rss_gb": usage.ru_maxrss / 2**20,
        "tokens": tokens,
        "phases": phases,
        "size": size.group(1),
        "bytes_per_context": float(size.group(2)),
    }


def stdlib_subset(target_tokens: int, folder: Path, tokenizer: TargetTokenizer) -> Path:
    """Copy stdlib files, in corpus order, until about `target_tokens` tokens."""
    spec = stdlib_corpus()
    total = 0
    for path in sorted(spec.path.rglob("*.py"), key=lambda p: p.relative_to(spec.path).as_posix()):
        if "site-packages" in path.parts or total >= target_tokens:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        destination = folder / path.relative_to(spec.path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text, encoding="utf-8")
        total += len(tokenizer.encode_batch([text])[0])
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="whole stdlib builds for the median")
    parser.add_argument("--sharegpt", action="store_true", help="also build the ShareGPT corpus (30M+ tokens)")
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    args = parser.parse_args()

    TargetTokenizer.load("smollm2")  # convert once into the real cache; copied into each run's cache below
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        cache = scratch / "cache"
        shutil.copytree(
            Path(os.environ.get("CREST_CACHE", Path.home() / ".cache/crest")) / "tokenizers", cache / "tokenizers"
        )
        tokenizer = TargetTokenizer.load("smollm2")
        rows = []
        whole = [run_build("stdlib", [], cache, scratch / "stdlib.duckdb") for _ in range(args.runs)]
        for label, size in (("1M", 1_000_000), ("3M", 3_000_000)):
            folder = stdlib_subset(size, scratch / f"stdlib-{label}", tokenizer)
            rows.append(
                (
                    f"stdlib first {label}",
                    run_build(str(folder), ["--glob", "*.py"], cache, scratch / f"{label}.duckdb"),
                )
            )
        rows.append(("stdlib (all), median run", sorted(whole, key=lambda run: run["wall"])[len(whole) // 2]))
        if args.sharegpt:
            rows.append(("ShareGPT assistant turns", run_build("sharegpt", [], cache, scratch / "sharegpt.duckdb")))

    walls = [run["wall"] for run in whole]
    counting = [run["phases"]["count"] + run["phases"]["trees"] + run["phases"]["write"] for run in whole]
    lines = [
        "## Build (issue 2)",
        "",
        f"Command: `{COMMAND}` (2-core machine, default flags: budget 16MB, max-context 3, max-depth 8, top-c 32).",
        "",
        f"Whole stdlib build, tokenization included, {args.runs} runs: median **{statistics.median(walls):.1f} s** wall "
        f"(runs: {', '.join(f'{w:.1f}' for w in walls)}), peak RSS **{max(r['rss_gb'] for r in whole):.2f} GB**; "
        f"counting + trees + selection/write median **{statistics.median(counting):.1f} s**.",
        "",
        "| corpus | tokens | wall s | tokenize s | count s | trees s | write s | peak RSS GB | file | bytes/context |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for label, run in rows:
        p = run["phases"]
        lines.append(
            f"| {label} | {run['tokens']:,} | {run['wall']:.1f} | {p['tokenize']:.1f} | {p['count']:.1f} | "
            f"{p['trees']:.1f} | {p['write']:.1f} | {run['rss_gb']:.2f} | {run['size']} | {run['bytes_per_context']:.0f} |"
        )
    markdown = "\n".join(lines)
    print(markdown)
    if args.write:
        write_section("build", markdown)


if __name__ == "__main__":
    main()
