"""The sweep's results as a table (Markdown + CSV), a plot (PNG), and the claims restated.

Claim 1 (storage): the smallest CREST store whose accepted length reaches REST's on the whole
corpus (on the largest fraction the run built, and said so), as a ratio of REST's bytes to it.
Claim 2 (equal storage): CREST's accepted length at each REST store's size (interpolated in log
size between CREST points; never extrapolated) over REST's. Also per CREST line: whether more bytes
ever drafted worse (the largest step down between consecutive budgets), and per store the scored
lookup against longest match.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crest_cli.evaluation.real_check import RealCheck
from crest_cli.evaluation.store_points import REST_LINE
from datastore_service.sizes import format_bytes


@dataclass(frozen=True)
class ResultRow:
    suite: str
    system: str
    line: str
    setting: str
    storage_bytes: int  # what lookups need on disk (see StorePoint.lookup_bytes)
    file_bytes: int
    accepted_length: float  # held out: each half scored with the lookup chosen on the other (run.py)
    lookup: str  # the lookup chosen for each half ("scored", "longest", "merged", "chained", or two: "merged/chained")
    accepted_scored: float | None  # every prompt with the scored lookup (CREST stores of ours)
    accepted_longest: float | None  # every prompt with longest match
    accepted_merged: float | None  # every prompt with the merged lookup (CREST stores of ours)
    accepted_chained: float | None  # every prompt with the chained lookup (CREST stores of ours)
    lookup_us_median: float
    build_seconds: float


@dataclass(frozen=True)
class AblationStep:
    suite: str
    change: str  # what this step changes from the one before
    line: str
    lookup: str
    storage_bytes: int
    accepted_length: float  # every prompt, with `lookup`
    versus: int | None  # the row (from 1) this step changes one thing from; None for the first


@dataclass(frozen=True)
class LineClaims:
    line: str
    matching_bytes: int | None  # smallest store reaching REST's full-corpus accepted length
    best_at_thirtieth: float | None  # best accepted length within 1/30 of REST's full-corpus bytes
    equal_storage_gains: list[tuple[int, float]]  # (REST bytes, CREST / REST accepted length - 1)
    largest_step_down: float  # the most accepted length lost from one budget to the next larger (0: never)


def claims_for(rows: Sequence[ResultRow]) -> tuple[ResultRow, list[LineClaims]]:
    rest = sorted((r for r in rows if r.system == "REST"), key=lambda r: r.storage_bytes)
    full = rest[-1]
    claims = []
    for line in dict.fromkeys(r.line for r in rows if r.system == "CREST"):
        points = sorted((r for r in rows if r.line == line), key=lambda r: r.storage_bytes)
        reaching = [p.storage_bytes for p in points if p.accepted_length >= full.accepted_length]
        within = [p.accepted_length for p in points if p.storage_bytes <= full.storage_bytes / 30]
        sizes = np.log([p.storage_bytes for p in points])
        gains = []
        for r in rest:
            if sizes[0] <= math.log(r.storage_bytes) <= sizes[-1]:
                crest = float(np.interp(math.log(r.storage_bytes), sizes, [p.accepted_length for p in points]))
                gains.append((r.storage_bytes, crest / r.accepted_length - 1))
        lengths = [p.accepted_length for p in points]
        step_down = max([0.0] + [before - after for before, after in zip(lengths, lengths[1:])])
        claims.append(
            LineClaims(line, min(reaching) if reaching else None, max(within) if within else None, gains, step_down)
        )
    return full, claims


def write_csv(rows: Sequence[ResultRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def write_plot(rows: Sequence[ResultRow], titles: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    suites = list(dict.fromkeys(r.suite for r in rows))
    figure, axes = pyplot.subplots(1, len(suites), figsize=(6.5 * len(suites), 4.6), squeeze=False)
    for axis, suite in zip(axes[0], suites):
        for line in dict.fromkeys(r.line for r in rows if r.suite == suite):
            points = sorted((r for r in rows if r.suite == suite and r.line == line), key=lambda r: r.storage_bytes)
            style = "s--" if line == REST_LINE else "o-"
            axis.plot([p.storage_bytes / 1e6 for p in points], [p.accepted_length for p in points], style, label=line)
        full, _ = claims_for([r for r in rows if r.suite == suite])
        axis.axhline(full.accepted_length, color="grey", linewidth=0.8, linestyle=":")
        axis.set_xscale("log")
        axis.set_xlabel("storage read by lookups (MB, log scale)")
        axis.set_ylabel("accepted length (tokens per target forward)")
        axis.set_title(titles.get(suite, suite))
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def markdown_report(
    rows: Sequence[ResultRow],
    ablations: Sequence[AblationStep],
    checks: Sequence[RealCheck],
    titles: dict[str, str],
    setup: str,
    plot_name: str,
    csv_name: str,
) -> str:
    out = [setup, "", f"![accepted length vs storage]({plot_name})", "", f"All rows: [{csv_name}]({csv_name}).", ""]
    for suite in dict.fromkeys(r.suite for r in rows):
        suite_rows = [r for r in rows if r.suite == suite]
        out += [
            f"### {titles.get(suite, suite)}",
            "",
            "| system | setting | storage | file | accepted length (held out) | lookup | scored | longest | merged "
            "| chained | lookup p50 (µs) | build (s) |",
            "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in sorted(suite_rows, key=lambda r: (r.line, r.storage_bytes)):
            out.append(
                f"| {r.line} | {r.setting} | {format_bytes(r.storage_bytes)} | {format_bytes(r.file_bytes)} "
                f"| {r.accepted_length:.3f} | {r.lookup} | {_maybe(r.accepted_scored)} | {_maybe(r.accepted_longest)} "
                f"| {_maybe(r.accepted_merged)} | {_maybe(r.accepted_chained)} | {r.lookup_us_median:.0f} "
                f"| {r.build_seconds:.1f} |"
            )
        full, claims = claims_for(suite_rows)
        out += [
            "",
            f"REST on {rest_reference(full)}: accepted length {full.accepted_length:.3f} "
            f"in {format_bytes(full.storage_bytes)}.",
            "",
        ]
        for claim in claims:
            out.append(f"- **{claim.line}**: " + _describe(claim, full))
        out.append("")
        for lookup in ("scored", "merged", "chained"):
            out += [_lookup_comparison(suite_rows, lookup), ""]
    if ablations:
        out += _ablation_table(ablations, titles)
    if checks:
        agreeing = sum(c.agrees for c in checks)
        out += [
            "### Replay vs real decoding",
            "",
            f"{agreeing} of {len(checks)} checked decodings took exactly the replayed number of target "
            "forwards and produced the plain greedy output.",
            "",
            "| suite | store | prompt | same output | forwards (real / replay) | accepted length (real / replay) |",
            "| --- | --- | ---: | --- | ---: | ---: |",
        ]
        for c in checks:
            out.append(
                f"| {c.suite} | {c.store} | {c.prompt} | {'yes' if c.same_tokens else 'NO'} "
                f"| {c.real_forwards} / {c.replay_forwards} "
                f"| {c.real_accepted_length:.3f} / {c.replay_accepted_length:.3f} |"
            )
    return "\n".join(out)


def _ablation_table(steps: Sequence[AblationStep], titles: dict[str, str]) -> list[str]:
    out = [
        "### From the authors' CREST to ours, one difference at a time",
        "",
        "Every prompt, every store built to the same byte budget in our format; each row changes one thing "
        "from the row it names.",
        "",
    ]
    for suite in dict.fromkeys(s.suite for s in steps):
        rows = [s for s in steps if s.suite == suite]
        out += [
            f"{titles.get(suite, suite)}:",
            "",
            "| row | change | lookup | storage | accepted length | vs that row |",
            "| ---: | --- | --- | ---: | ---: | ---: |",
        ]
        for number, step in enumerate(rows, 1):
            versus = (
                ""
                if step.versus is None
                else (f"{step.accepted_length / rows[step.versus - 1].accepted_length - 1:+.1%} vs row {step.versus}")
            )
            out.append(
                f"| {number} | {step.change} | {step.lookup} | {format_bytes(step.storage_bytes)} "
                f"| {step.accepted_length:.3f} | {versus} |"
            )
        out.append("")
    return out


def _maybe(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _lookup_comparison(rows: Sequence[ResultRow], lookup: str) -> str:
    """One lookup against longest match over every store replayed with both."""
    pairs = [(getattr(r, f"accepted_{lookup}"), r.accepted_longest) for r in rows]
    both = [(ours, longest) for ours, longest in pairs if ours is not None and longest is not None]
    if not both:
        return f"No store was replayed with both the {lookup} lookup and longest match."
    differences = [ours - longest for ours, longest in both]
    at_least = sum(d >= 0 for d in differences)
    return (
        f"{lookup.capitalize()} lookup vs longest match, every prompt: {lookup} is at least as good on {at_least} "
        f"of {len(both)} stores; mean difference {sum(differences) / len(differences):+.4f} "
        f"(range {min(differences):+.4f} to {max(differences):+.4f})."
    )


def rest_reference(full: ResultRow) -> str:
    """What the largest REST store of the run holds: the whole corpus only when the run built it."""
    return "the whole corpus" if full.setting == "100%" else f"{full.setting} of the corpus (this run's largest REST)"


def storage_ratio(rest_bytes: float, crest_bytes: float) -> str:
    ratio = rest_bytes / crest_bytes
    return f"{ratio:.1f}x less storage" if ratio >= 1 else f"{1 / ratio:.1f}x more storage"


def _describe(claim: LineClaims, full: ResultRow) -> str:
    parts, reference = [], rest_reference(full)
    if claim.matching_bytes is None:
        parts.append(f"never reaches the accepted length of REST on {reference} in this sweep")
    else:
        parts.append(
            f"reaches the accepted length of REST on {reference} at {format_bytes(claim.matching_bytes)}, "
            f"{storage_ratio(full.storage_bytes, claim.matching_bytes)}"
        )
    if claim.best_at_thirtieth is None:
        parts.append("no point within 1/30 of that REST store's storage")
    else:
        verdict = "at or above" if claim.best_at_thirtieth >= full.accepted_length else "below"
        parts.append(
            f"within 1/30 of that REST store's storage ({format_bytes(full.storage_bytes / 30)}) its best is "
            f"{claim.best_at_thirtieth:.3f}, {verdict} REST's {full.accepted_length:.3f}"
        )
    if claim.equal_storage_gains:
        gains = ", ".join(f"{g:+.1%} at {format_bytes(b)}" for b, g in claim.equal_storage_gains)
        mean = sum(g for _, g in claim.equal_storage_gains) / len(claim.equal_storage_gains)
        parts.append(f"at equal storage vs REST: {gains} (mean {mean:+.1%})")
    else:
        parts.append("no REST store falls inside its storage range")
    if claim.largest_step_down > 0:
        parts.append(f"more bytes drafted worse by up to {claim.largest_step_down:.3f}")
    else:
        parts.append("never drafted worse with more bytes")
    return "; ".join(parts) + "."
