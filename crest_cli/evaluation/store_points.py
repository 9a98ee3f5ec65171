"""The stores of a sweep: REST over corpus fractions, CREST variants over byte budgets; built once, cached.

Stores live under `<cache>/eval/<corpus tokens key>-<build code key>/`: a folder named by the cached
tokenization (corpus content + tokenizer) and by the datastore code and SQL that build stores, so
another corpus, tokenizer or build code never reuses them. `points.json`
there records each store's size and build time, so a rerun reports them without rebuilding.
CREST variants that differ only in policy share one count (build_stores).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

import datastore_service
from datastore_service.build.corpus import CorpusSpec
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import StoreTarget, build_stores
from datastore_service.build.store_writer import create_template
from datastore_service.build.token_table import tokenize_corpus
from datastore_service.build.tokenizer import TargetTokenizer
from datastore_service.paths import cache_dir
from datastore_service.rest.build import build_rest_store
from datastore_service.sizes import Budget, format_bytes


@dataclass(frozen=True)
class CrestVariant:
    line: str  # its name in tables and the plot
    params: BuildParams  # everything but the budget, which the sweep varies


VARIANTS = {
    "ours": CrestVariant("CREST, ours: benefit per byte, N<=3", BuildParams(policy="benefit")),
    "paper": CrestVariant("CREST, paper's rule: top-t per length, N<=3", BuildParams(policy="frequency")),
    "ours-n2": CrestVariant("CREST, ours: benefit per byte, N<=2", BuildParams(policy="benefit", max_context=2)),
    "paper-n2": CrestVariant(
        "CREST, paper's rule: top-t per length, N<=2", BuildParams(policy="frequency", max_context=2)
    ),
}
DEFAULT_FRACTIONS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
DEFAULT_BUDGETS_MB = (1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 32.0)
REST_LINE = "REST (corpus fraction)"


@dataclass(frozen=True)
class StorePoint:
    system: str  # REST or CREST
    line: str
    setting: str  # the fraction or the budget, as shown
    path: Path
    file_bytes: int
    lookup_bytes: int  # what lookups read: CREST's file without its vocabulary table (kept for SQL)
    build_seconds: float


def _crest_name(params: BuildParams, megabytes: float) -> str:
    return (
        f"crest-{params.policy}-n{params.max_context}-d{params.max_depth}-c{params.top_c}"
        f"-m{params.min_count}-p{params.min_probability:g}-{megabytes:g}MB.duckdb"
    )


class PointCache:
    """`points.json` of one corpus x tokenizer folder: what each built store weighs and cost."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.index = folder, folder / "points.json"
        self.entries: dict[str, dict] = json.loads(self.index.read_text()) if self.index.exists() else {}

    def get(self, name: str) -> StorePoint | None:
        entry = self.entries.get(name)
        if entry is None or not (self.folder / name).exists():
            return None
        return StorePoint(**{**entry, "path": self.folder / name})

    def put(self, name: str, point: StorePoint) -> None:
        self.entries[name] = {**asdict(point), "path": name}
        partial = self.index.with_suffix(".partial")
        partial.write_text(json.dumps(self.entries, indent=1))
        partial.replace(self.index)


def build_code_key() -> str:
    """A digest of the datastore package's code and SQL: what builds every store of the sweep."""
    package = Path(datastore_service.__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.sql")]):
        digest.update(str(path.relative_to(package)).encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def vocabulary_bytes(pieces: list[str], folder: Path) -> int:
    """Bytes the vocabulary table adds to a store file: an empty store with it minus one without."""
    with_vocabulary, without = folder / "template-vocab.duckdb", folder / "template-empty.duckdb"
    try:
        return create_template(with_vocabulary, pieces) - create_template(without, [])
    finally:
        with_vocabulary.unlink(missing_ok=True)
        without.unlink(missing_ok=True)


def prepare_points(
    corpus: CorpusSpec,
    tokenizer_spec: str,
    fractions: Sequence[float],
    budgets_mb: Sequence[float],
    variants: Sequence[CrestVariant],
    progress: bool = True,
) -> list[StorePoint]:
    tokenizer = TargetTokenizer.load(tokenizer_spec)
    tokenized = tokenize_corpus(corpus, tokenizer, progress=progress)
    cache = PointCache(cache_dir("eval", f"{tokenized.parquet.stem}-{build_code_key()}"))
    points: list[StorePoint] = []
    work = [("rest", fraction) for fraction in fractions]
    # Variants equal but for the policy share one count: group them.
    groups: dict[BuildParams, list[CrestVariant]] = {}
    for variant in variants:
        groups.setdefault(replace(variant.params, policy="benefit"), []).append(variant)
    work += [("crest", group) for group in groups.values()]
    for kind, item in tqdm(work, desc=f"stores of {corpus.display_name}", unit="build", disable=not progress):
        if kind == "rest":
            points.append(_rest_point(cache, corpus, tokenizer_spec, item))
        else:
            points.extend(_crest_points(cache, corpus, tokenizer, tokenizer_spec, item, budgets_mb))
    return points


def _rest_point(cache: PointCache, corpus: CorpusSpec, tokenizer_spec: str, fraction: float) -> StorePoint:
    name = f"rest-{fraction:g}.rest"
    cached = cache.get(name)
    if cached:
        return cached
    summary = build_rest_store(corpus, tokenizer_spec, cache.folder / name, fraction, progress=False)
    point = StorePoint(
        "REST",
        REST_LINE,
        f"{fraction:.1%}".replace(".0%", "%"),
        summary.store,
        summary.file_bytes,
        summary.file_bytes,
        summary.seconds["total"],
    )
    cache.put(name, point)
    return point


def _crest_points(
    cache: PointCache,
    corpus: CorpusSpec,
    tokenizer: TargetTokenizer,
    tokenizer_spec: str,
    variants: list[CrestVariant],
    budgets_mb: Sequence[float],
) -> list[StorePoint]:
    wanted = [(variant, mb, _crest_name(variant.params, mb)) for variant in variants for mb in budgets_mb]
    missing = [(variant, mb, name) for variant, mb, name in wanted if cache.get(name) is None]
    if missing:
        targets = [
            StoreTarget(cache.folder / name, Budget(bytes=int(mb * 1e6)), variant.params.policy)
            for variant, mb, name in missing
        ]
        summaries = build_stores(corpus, tokenizer_spec, missing[0][0].params, targets, replace=True, progress=False)
        vocabulary = vocabulary_bytes(tokenizer.pieces(), cache.folder)
        for (variant, mb, name), summary in zip(missing, summaries):
            cache.put(
                name,
                StorePoint(
                    "CREST",
                    variant.line,
                    format_bytes(mb * 1e6),
                    summary.store,
                    summary.file_bytes,
                    summary.file_bytes - vocabulary,
                    summary.seconds["total"],
                ),
            )
    return [cache.get(name) for _, _, name in wanted]
