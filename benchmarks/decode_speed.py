"""Decoder benchmark: every draft configuration against `generate` and against the same engine
without drafts, side by side, prompt by prompt.

    python benchmarks/decode_speed.py [--prompts 20] [--max-new-tokens 128] [--device cpu] [--dtype float32]
                                      [--engine auto] [--batch-size 8] [--runs 3] [--write]

HumanEval prompts (plain code completion) draft from the stdlib store; MT-Bench first turns (chat
template) from the ShareGPT store. Both stores are the defaults, built if missing. For each prompt
every configuration runs back to back (plain `generate`, then the engine without drafts, with the
store, with prompt lookup, with both, in an order rotated by one each round): a round. A prompt's
ratio of two configurations is the median over --runs rounds of their ratio within a round, so it
compares runs made seconds apart, and one round slowed (or sped up) by the machine does not set
it. (Each configuration's fastest run, the earlier rule, let one fast moment of the memory in a
baseline's run set a prompt at 0.86x: this machine's memory speed moves within minutes, not only
other work.) Times and tokens/s are medians over rounds.

Reported per configuration: total tokens/s; median per-prompt speedup over `generate` and over the
same engine without drafts (and the slowest prompt's); accepted tokens per step (tokens per target
forward, bonus token included); the mean ms of a step split into lookup, draft preparation,
forward, acceptance and cache compaction; and exactness: how many outputs equal the float32
reference (`generate` in float32) and, for those that differ, the mean first differing position.
With --batch-size, also a batch: that many rows decoding HumanEval prompts (4 per row by default), each
finished sequence's row taken by the next prompt, with and without drafts, the two alternating; their
ratio is the median of the ratios within a round, and the rounds' lowest and highest are given too.
Every decoder and `generate` first decode the suite's longest prompt once, untimed (warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from _report import cpu_text, write_section

from crest_cli.benchmark_prompts import humaneval_prompts, mtbench_questions
from datastore_service.build.pipeline import default_store_path
from datastore_service.draft import DEFAULT_SELECTION
from datastore_service.lookup.draft_index import DraftIndex
from decoder.decoders import Decoder, make_decoder, resolve_engine
from decoder.draft_sources import DraftSource, IndexSource, NoDrafts
from decoder.prompt_lookup import WithPromptLookup
from decoder.speculative import Generation
from decoder.target_model import TargetModel, load_target

COMMAND = "python benchmarks/decode_speed.py " + " ".join(sys.argv[1:])
PHASES = ("lookup", "prepare", "forward", "accept", "compact")
WARM_UP_TOKENS = 8


def store_index(corpus: str) -> DraftIndex:
    path = default_store_path(corpus)
    if not path.exists():
        subprocess.run([sys.executable, "-m", "crest_cli", "build", "--corpus", corpus, "--quiet"], check=True)
    return DraftIndex.load(path)


def synchronize(target: TargetModel) -> None:
    if target.device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def plain_generate(target: TargetModel, ids: list[int], max_new_tokens: int) -> tuple[list[int], float]:
    device = target.device
    synchronize(target)
    started = time.perf_counter()
    output = target.model.generate(
        torch.tensor([ids], device=device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
    )
    synchronize(target)
    return output[0, len(ids) :].tolist(), time.perf_counter() - started


def timed(decode: Callable[[], Generation], target: TargetModel) -> tuple[Generation, float]:
    synchronize(target)
    started = time.perf_counter()
    generation = decode()
    synchronize(target)
    return generation, time.perf_counter() - started


@dataclass
class Tally:
    """One configuration over a suite's prompts."""

    tokens: int = 0
    seconds: float = 0.0
    vs_generate: list[float] = field(default_factory=list)
    vs_no_drafts: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)
    phase_seconds: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    identical: int = 0
    first_difference: list[int] = field(default_factory=list)

    def add(self, tokens: list[int], seconds: float, reference: list[int], generation: Generation | None) -> None:
        self.tokens += len(tokens)
        self.seconds += seconds
        self.identical += tokens == reference
        if tokens != reference:
            self.first_difference.append(
                next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
            )
        if generation is not None:
            self.accepted.append(generation.mean_accepted_length)
            for step in generation.steps:
                for phase in PHASES:
                    self.phase_seconds[phase].append(getattr(step, f"{phase}_seconds"))


def run_suite(
    target: TargetModel,
    reference_target: TargetModel,
    prompts: list[list[int]],
    index: DraftIndex,
    settings: dict,
    max_new_tokens: int,
    runs: int = 1,
) -> dict[str, Tally]:
    """Every configuration on every prompt in `runs` rounds (each configuration once a round); a
    prompt's ratio of two configurations is the median of their ratios within a round, its time the
    median round's."""
    sources: dict[str, DraftSource] = {
        "store": IndexSource(index),
        "prompt lookup": WithPromptLookup(NoDrafts()),
        "store + prompt lookup": WithPromptLookup(IndexSource(index)),
    }
    decoders: dict[str, Decoder] = {"no drafts": make_decoder(target, NoDrafts(), max_nodes=0, **settings)}
    decoders.update({name: make_decoder(target, source, **settings) for name, source in sources.items()})
    tallies = {"generate": Tally(), **{name: Tally() for name in decoders}}
    # Untimed warm-up on the longest prompt: first-call allocations, kernel choices, CUDA graph
    # captures, and caches sized for the suite, so the first timed prompt measures decoding alone.
    longest = max(prompts, key=len)
    for model in {id(target): target, id(reference_target): reference_target}.values():
        plain_generate(model, longest, WARM_UP_TOKENS)
    for decoder in decoders.values():
        decoder.generate(longest, WARM_UP_TOKENS)
    for ids in prompts:
        try:
            reference = (
                plain_generate(reference_target, ids, max_new_tokens)[0] if reference_target is not target else None
            )
            tokens, rounds = timed_rounds(target, decoders, ids, max_new_tokens, runs)
        except KeyboardInterrupt:  # a time limit: keep the prompts done, tell the table
            print(
                f"interrupted: {len(tallies['generate'].vs_generate)} of {len(prompts)} prompts done", file=sys.stderr
            )
            break
        reference = tokens if reference is None else reference
        rates: dict[str, float] = {}
        for name in tallies:
            runs_of = sorted((run[name] for run in rounds), key=lambda run: run[1])
            median_run = runs_of[len(runs_of) // 2]
            generation, seconds = median_run
            tallies[name].add(generation.tokens if generation is not None else tokens, seconds, reference, generation)
            rates[name] = tokens_per_second(median_run, tokens)
            for against, ratios in (("generate", tallies[name].vs_generate), ("no drafts", tallies[name].vs_no_drafts)):
                ratios.append(
                    statistics.median(
                        tokens_per_second(run[name], tokens) / tokens_per_second(run[against], tokens) for run in rounds
                    )
                )
        rates_text = ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items())
        print(
            f"prompt {len(tallies['generate'].vs_generate)}/{len(prompts)}: tokens/s {rates_text}",
            file=sys.stderr,
            flush=True,
        )
    return tallies


def tokens_per_second(run: tuple[Generation | None, float], generate_tokens: list[int]) -> float:
    """A run's tokens over its seconds (`generate`'s run has no Generation: its tokens are given)."""
    generation, seconds = run
    return len(generation.tokens if generation is not None else generate_tokens) / seconds


def timed_rounds(
    target: TargetModel, decoders: dict[str, Decoder], ids: list[int], max_new_tokens: int, runs: int
) -> tuple[list[int], list[dict[str, tuple[Generation | None, float]]]]:
    """`generate`'s tokens on one prompt, and `runs` rounds, each running every configuration once
    (`generate` first: its Generation None) and holding each one's run and its seconds. The engine's
    configurations take turns in an order rotated by one each round, so none always runs right after
    `generate` (seconds of other work) or right before another."""
    rounds = []
    names = list(decoders)
    for round_index in range(runs):
        tokens, seconds = plain_generate(target, ids, max_new_tokens)
        run: dict[str, tuple[Generation | None, float]] = {"generate": (None, seconds)}
        turn = round_index % len(names)
        for name in names[turn:] + names[:turn]:
            run[name] = timed(lambda d=decoders[name]: d.generate(ids, max_new_tokens), target)
        rounds.append(run)
    return tokens, rounds


BATCH_REPEATS = 3  # each batch configuration runs this often, alternating: a round is one run of each


@dataclass
class BatchRates:
    """Total tokens/s of one batch configuration: end to end, and in the decoding phase alone (the
    prompts' prefill, the same with or without drafts, left out)."""

    end_to_end: list[float] = field(default_factory=list)
    decoding: list[float] = field(default_factory=list)
    phase_seconds: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    tokens: int = 0
    row_passes: int = 0  # target passes summed over rows, prefills included

    def add_steps(self, generations: list[Generation]) -> None:
        """Each step's phases (every row of a step carries the step's times) and the tokens and passes
        of every row: tokens per row and pass are their ratio, not a mean of per-sequence ratios (which
        would weigh a short sequence's steps as much as a long one's)."""
        for generation in generations:
            self.tokens += len(generation.tokens)
            self.row_passes += len(generation.steps) + 1
            for step in generation.steps:
                for phase in PHASES:
                    self.phase_seconds[phase].append(getattr(step, f"{phase}_seconds"))

    def step_text(self) -> str:
        return " / ".join(f"{1e3 * float(np.mean(self.phase_seconds[p])):.2f}" for p in PHASES)


def batch_rates(
    target: TargetModel, prompts: list[list[int]], index: DraftIndex, settings: dict, rows: int, max_new_tokens: int
) -> dict[str, BatchRates]:
    """The prompts decoded `rows` at a time (a finished sequence's row taken by the next prompt),
    without and with drafts (same engine), runs alternating."""
    decoders = {
        "no drafts": make_decoder(target, NoDrafts(), max_nodes=0, rows=rows, **settings),
        "store + prompt lookup": make_decoder(
            target, WithPromptLookup(IndexSource(index)), max_nodes=32, rows=rows, **settings
        ),
    }
    rates = {name: BatchRates() for name in decoders}
    for decoder in decoders.values():
        decoder.generate_batch(prompts[:rows], 8)  # warm-up
    for _ in range(BATCH_REPEATS):
        for name, decoder in decoders.items():
            generations, seconds = timed(lambda d=decoder: d.generate_batch(prompts, max_new_tokens, rows=rows), target)
            tokens = sum(len(g.tokens) for g in generations)
            prefill = sum(g.prefill_seconds for g in generations)
            rates[name].end_to_end.append(tokens / seconds)
            rates[name].decoding.append(tokens / (seconds - prefill))
            rates[name].add_steps(generations)
    return rates


def round_ratios(plain: list[float], drafted: list[float]) -> str:
    """The median of the rounds' ratios (drafted over plain, each round's two runs back to back) and their
    range: the memory's speed moves within minutes, and the ratio with it."""
    ratios = [d / p for p, d in zip(plain, drafted)]
    return f"**{statistics.median(ratios):.2f}x** (rounds {min(ratios):.2f}-{max(ratios):.2f}x)"


def batch_summary(rates: dict[str, BatchRates], rows: int, prompts: int, max_new_tokens: int) -> str:
    plain, drafted = rates["no drafts"], rates["store + prompt lookup"]
    end_to_end = [statistics.median(r.end_to_end) for r in (plain, drafted)]
    decoding = [statistics.median(r.decoding) for r in (plain, drafted)]
    return (
        f"Batch of {rows} rows: {prompts} HumanEval prompts decoded {rows} at a time, each finished sequence's row "
        f"taken by the next prompt ({max_new_tokens} new tokens each; {BATCH_REPEATS} rounds, the two "
        f"configurations alternating; tokens/s medians): {end_to_end[0]:.1f} tokens/s without drafts, "
        f"{end_to_end[1]:.1f} with store + prompt lookup: {round_ratios(plain.end_to_end, drafted.end_to_end)} "
        f"end to end; in the decoding phase alone (prefill left out) {decoding[0]:.1f} and {decoding[1]:.1f} "
        f"tokens/s, {round_ratios(plain.decoding, drafted.decoding)}. Step ms (lookup / preparation / forward / "
        f"acceptance / compaction): "
        f"{plain.step_text()} without drafts, {drafted.step_text()} with; tokens per row and pass "
        f"{drafted.tokens / drafted.row_passes:.2f} (all tokens over all rows' passes, prefills included; "
        f"{plain.tokens / plain.row_passes:.2f} without drafts)."
    )


def table(suite: str, tallies: dict[str, Tally], prompts: int) -> list[str]:
    lines = []
    for name, tally in tallies.items():
        phases = [1e3 * float(np.mean(tally.phase_seconds[p])) if tally.phase_seconds[p] else 0.0 for p in PHASES]
        step = sum(phases)
        outside = 100 * (step - phases[2]) / step if step else 0.0
        differ = f"{np.mean(tally.first_difference):.0f}" if tally.first_difference else "-"
        lines.append(
            f"| {suite} | {name} | {tally.tokens / tally.seconds:.1f} | {statistics.median(tally.vs_generate):.2f}x | "
            f"{statistics.median(tally.vs_no_drafts):.2f}x | {min(tally.vs_no_drafts):.2f}x | "
            f"{np.mean(tally.accepted) if tally.accepted else 1.0:.2f} | "
            + (" / ".join(f"{p:.1f}" for p in phases) + f" ({outside:.1f}%)" if tally.accepted else "-")
            + f" | {tally.identical}/{prompts} | {differ} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20, help="prompts per suite")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--engine", default="auto", choices=("auto", "eager", "static", "compiled"))
    parser.add_argument(
        "--float32-residual", action="store_true", help="engines keep the residual stream in float32 (half dtypes)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="rows of the batch measurement (0: skip it)")
    parser.add_argument(
        "--batch-prompts", type=int, default=0, help="prompts decoded through the batch's rows (default: 4 x rows)"
    )
    parser.add_argument(
        "--suites", default="humaneval,mtbench", help="comma-separated: humaneval, mtbench (empty: the batch alone)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="rounds per prompt, every configuration once a round; a ratio is the median of its rounds' ratios",
    )
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    args = parser.parse_args()

    target = load_target(args.model, args.dtype, args.device)
    reference_target = target if args.dtype == "float32" else load_target(args.model, "float32", args.device)
    engine = resolve_engine(target, args.engine)
    settings = {"engine": engine, "float32_residual": args.float32_residual}
    probe = make_decoder(target, NoDrafts(), **settings)
    curve = getattr(getattr(probe, "budget", None), "curve", None)
    curve_text = (
        ", ".join(f"{n}: {s * 1e3:.1f} ms" for n, s in zip(curve.fed_tokens, curve.seconds)) if curve else "n/a"
    )
    suites = {
        "humaneval": ("HumanEval (stdlib store)", lambda n: [target.encode_prompt(p, False) for p in humaneval_prompts(n)], "stdlib"),
        "mtbench": ("MT-Bench (ShareGPT store)", lambda n: [target.encode_prompt(q, True) for q in mtbench_questions(n)], "sharegpt"),
    }  # fmt: skip
    lines = [
        f"## Decoder: {args.device}, {args.dtype}{', float32 residual' if args.float32_residual else ''} (issue 11)",
        "",
        f"Command: `{COMMAND}`. Model {args.model} ({args.dtype}, {args.device}, {torch.get_num_threads()} threads"
        f"{'; ' + cpu_text() if args.device == 'cpu' else ''}), "
        f"engine `{engine}`{' (residual stream in float32)' if args.float32_residual else ''}, {args.prompts} prompts per suite, {args.max_new_tokens} new tokens, greedy, store "
        f"lookups `{DEFAULT_SELECTION}` (the default). Pass width "
        f"per step chosen from the engine's measured cost of one pass (fed tokens: time) {curve_text}; "
        f"1-minute load average before the run: {_load()}.",
        "",
        f"Speedups are medians of per-prompt ratios, each the median of its ratios within {args.runs} rounds (every "
        "configuration once a round, back to back, the engine's in an order rotated each round); `no drafts` is "
        "the same engine verifying nothing. Step ms: lookup / preparation / forward / acceptance / compaction (share outside the "
        "forward). Exactness: outputs identical to the float32 `generate` reference, and the mean first differing "
        "position of the others.",
        "",
        "| suite | decoding | tokens/s | vs generate | vs no drafts | slowest prompt vs no drafts | "
        "accepted tokens/step | step ms | identical to fp32 | first difference |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    indexes = {}
    cut_short = False
    for key in [name for name in args.suites.split(",") if name]:
        title, encode, corpus = suites[key]
        indexes[key] = store_index(corpus)
        prompts = encode(args.prompts)
        tallies = run_suite(target, reference_target, prompts, indexes[key], settings, args.max_new_tokens, args.runs)
        done = len(tallies["generate"].vs_generate)
        table_lines = table(title, tallies, done) if done else []
        if done < len(prompts):  # interrupted (the GPU check's time limit): report what was done, then stop
            cut_short = True
            table_lines.append(f"| {title} | cut short by a time limit after {done} of {len(prompts)} prompts |")
        for line in table_lines:
            lines.append(line)
            print(line, flush=True)
        if cut_short:
            break
    if args.batch_size > 1 and not cut_short:
        count = args.batch_prompts or 4 * args.batch_size
        prompts = [target.encode_prompt(p, False) for p in humaneval_prompts(count)]
        index = indexes.get("humaneval") or store_index("stdlib")
        rates = batch_rates(target, prompts, index, settings, args.batch_size, args.max_new_tokens)
        lines += ["", batch_summary(rates, args.batch_size, len(prompts), args.max_new_tokens)]
    markdown = "\n".join(lines)
    print(markdown)
    if args.write:
        residual = "-float32-residual" if args.float32_residual else ""
        write_section(f"decoder-{args.device}-{args.dtype}{residual}", markdown)


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
