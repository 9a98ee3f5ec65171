"""Build benchmark: whole-build time and peak RSS on the stdlib corpus, scaling with corpus size,
and the memory cap (issue 13): ShareGPT's default store, a low cap that spills, a 100M-token corpus.

Each build runs `crest build` in its own process (peak RSS from wait4). Cold runs start from an
empty token cache, so tokenization is included; warm runs reuse the cached tokens (the converted
tokenizer stays cached either way). Phases, peak memory and spill come from the build summary.

    python benchmarks/build_scaling.py [--runs 3] [--warm-runs 3] [--sharegpt] [--low-cap 1.5GB]
                                       [--large-tokens 100000000] [--write]
"""

from __future__ import annotations

import argparse
import json
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

from datastore_service.build.corpus import (
    CorpusReport,
    corpus_spec,
    python_sources_corpus,
    read_documents,
    stdlib_corpus,
)
from datastore_service.build.tokenizer import TargetTokenizer

COMMAND = "python benchmarks/build_scaling.py " + " ".join(sys.argv[1:])


def run_build(corpus: str, extra: list[str], cache: Path, output: Path, cold: bool = True) -> dict:
    env = {**os.environ, "CREST_CACHE": str(cache)}
    if cold:
        shutil.rmtree(cache / "tokens", ignore_errors=True)
    command = [sys.executable, "-m", "crest_cli", "build", "--corpus", corpus, "--output", str(output), "--quiet"]
    started = time.perf_counter()
    process = subprocess.Popen([*command, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build failed: {stderr.strip().splitlines()[-1] if stderr.strip() else status}")
    timing = stdout.split("\ntime ", 1)[1].split("\nmemory", 1)[0]
    phases = dict((k, float(v)) for k, v in re.findall(r"(\w+) ([0-9.]+)s", timing))
    tokens = int(re.search(r"([0-9,]+) tokens", stdout).group(1).replace(",", ""))
    size = re.search(r"size +([0-9.]+ [KMG]?B) \(([0-9.]+) bytes per context", stdout)
    memory = re.search(
        r"memory +peak ([0-9.]+ [KMG]?B) under a cap of ([0-9.]+ [KMG]?B), ([0-9.]+ [KMG]?B) spilled", stdout
    )
    return {
        "wall": wall,
        "rss_gb": usage.ru_maxrss / 2**20,
        "tokens": tokens,
        "phases": phases,
        "size": size.group(1),
        "bytes_per_context": float(size.group(2)),
        "cap": memory.group(2),
        "spilled": memory.group(3),
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


def large_corpus(target_tokens: int, path: Path, tokenizer: TargetTokenizer) -> Path:
    """One JSON line per document: the python sources (stdlib + site-packages), then ShareGPT's
    assistant turns, then the same again, until about `target_tokens` tokens (estimated from the
    characters per token of a sample)."""
    sources = [python_sources_corpus(), corpus_spec("sharegpt")]
    sample = [text for _, text in zip(range(2000), read_documents(sources[0], CorpusReport()))]
    characters_per_token = sum(map(len, sample)) / sum(len(ids) for ids in tokenizer.encode_batch(sample))
    wanted, written = target_tokens * characters_per_token, 0
    with path.open("w") as handle:
        while written < wanted:
            for spec in sources:
                for text in read_documents(spec, CorpusReport()):
                    handle.write(json.dumps({"text": text}) + "\n")
                    written += len(text)
                    if written >= wanted:
                        return path
    return path


def row(label: str, run: dict) -> str:
    p = run["phases"]
    return (
        f"| {label} | {run['tokens']:,} | {run['wall']:.1f} | {p.get('tokenize', 0):.1f} | {p.get('count', 0):.1f} | "
        f"{p.get('trees', 0):.1f} | {p.get('write', 0):.1f} | {run['rss_gb']:.2f} | {run['cap']} | {run['spilled']} "
        f"| {run['size']} | {run['bytes_per_context']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="whole stdlib builds from an empty token cache")
    parser.add_argument("--warm-runs", type=int, default=3, help="whole stdlib builds from cached tokens")
    parser.add_argument("--sharegpt", action="store_true", help="also build ShareGPT's default store (22M tokens)")
    parser.add_argument("--low-cap", default=None, help="also build the stdlib under this --memory-limit, e.g. 1.5GB")
    parser.add_argument("--large-tokens", type=int, default=0, help="also build a corpus of about this many tokens")
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
        cold = [run_build("stdlib", [], cache, scratch / "stdlib.duckdb") for _ in range(args.runs)]
        if args.warm_runs and not cold:  # warm runs need the stdlib's tokens cached: one untimed build
            run_build("stdlib", [], cache, scratch / "stdlib.duckdb")
        warm = [run_build("stdlib", [], cache, scratch / "stdlib.duckdb", cold=False) for _ in range(args.warm_runs)]
        for label, size in (("1M", 1_000_000), ("3M", 3_000_000)):
            folder = stdlib_subset(size, scratch / f"stdlib-{label}", tokenizer)
            rows.append(
                (
                    f"stdlib first {label}",
                    run_build(str(folder), ["--glob", "*.py"], cache, scratch / f"{label}.duckdb"),
                )
            )
        if cold:
            rows.append(("stdlib (all), median cold run", sorted(cold, key=lambda run: run["wall"])[len(cold) // 2]))
        if warm:
            rows.append(("stdlib (all), median warm run", sorted(warm, key=lambda run: run["wall"])[len(warm) // 2]))
        if args.low_cap:
            run = run_build("stdlib", ["--memory-limit", args.low_cap], cache, scratch / "capped.duckdb", cold=False)
            rows.append((f"stdlib under --memory-limit {args.low_cap}", run))
        if args.sharegpt:
            rows.append(("ShareGPT assistant turns", run_build("sharegpt", [], cache, scratch / "sharegpt.duckdb")))
        if args.large_tokens:
            corpus = large_corpus(args.large_tokens, scratch / "large.jsonl", tokenizer)
            rows.append(
                (
                    "python sources + ShareGPT, repeated (JSON lines)",
                    run_build(str(corpus), [], cache, scratch / "large.duckdb"),
                )
            )

    lines = ["## Build (issues 2 and 13)", "", f"Command: `{COMMAND}` (2-core machine, default flags)."]
    for name, runs in (("cold (tokenization included)", cold), ("warm (tokens cached)", warm)):
        if runs:
            walls = [run["wall"] for run in runs]
            lines += [
                "",
                f"Whole stdlib build, {name}, {len(runs)} runs: median **{statistics.median(walls):.1f} s** wall "
                f"(runs: {', '.join(f'{w:.1f}' for w in walls)}), peak RSS **{max(r['rss_gb'] for r in runs):.2f} GB**.",
            ]
    lines += [
        "",
        "| corpus | tokens | wall s | tokenize s | count s | trees s | write s | peak RSS GB | cap | spilled "
        "| file | bytes/context |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |",
        *(row(label, run) for label, run in rows),
    ]
    markdown = "\n".join(lines)
    print(markdown)
    if args.write:
        write_section("build", markdown)


if __name__ == "__main__":
    main()
