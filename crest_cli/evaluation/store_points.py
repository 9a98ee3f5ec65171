"""The stores of a sweep: REST over corpus fractions, CREST variants and the authors' CREST over
byte budgets; built once, cached.

Stores live under `<cache>/eval/<corpus tokens key>-<build code key>/`: a folder named by the cached
tokenization (corpus content + tokenizer) and by the datastore code and SQL that build stores, so
another corpus, tokenizer or build code never reuses them. `points.json` there records each
store's size and build time, so a rerun reports them without rebuilding. All CREST variants of a
corpus share one n-gram count (build_stores).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

import datastore_service
from crest_cli.evaluation.authors_crest import cached_authors_trees, write_authors_store
from datastore_service.build.corpus import CorpusSpec
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import StoreTarget, build_stores
from datastore_service.build.store_writer import create_template
from datastore_service.build.token_table import TokenizedCorpus, tokenize_corpus
from datastore_service.build.tokenizer import TargetTokenizer
from datastore_service.paths import cache_dir
from datastore_service.rest.build import build_rest_store
from datastore_service.sizes import Budget, format_bytes

LOOKUPS = ("scored", "longest", "merged", "chained")  # DraftIndex's selections, all replayed for every CREST store


@dataclass(frozen=True)
class CrestVariant:
    line: str  # its name in tables and the plot
    params: BuildParams  # everything but the budget, which the sweep varies


@dataclass(frozen=True)
class AuthorsVariant:
    """The authors' CREST: REST's cut trees of the most frequent contexts, longest match."""

    line: str
    max_context: int
    cut: bool = True  # REST's cut_to_choices, as the authors' trees had it


VARIANTS: dict[str, CrestVariant | AuthorsVariant] = {
    "ours": CrestVariant(
        "CREST, ours: back-off trees, paper's rule, N<=2", BuildParams(policy="frequency", backoff=2.0, max_context=2)
    ),
    "ours-n4": CrestVariant(
        "CREST, ours: back-off trees, paper's rule, N<=4", BuildParams(policy="frequency", backoff=2.0, max_context=4)
    ),
    "gain": CrestVariant(
        "CREST, back-off trees, gain per byte, N<=4", BuildParams(policy="gain", backoff=2.0, max_context=4)
    ),
    "raw": CrestVariant(
        "CREST, raw trees (no back-off), paper's rule, N<=2, 32 nodes to depth 8",
        BuildParams(policy="frequency", backoff=0.0, max_context=2),
    ),
    # tree shapes: small trees leave bytes to more contexts, and chained lookups grow them at need
    "raw-c8": CrestVariant(
        "CREST, raw trees, paper's rule, N<=2, 8 nodes to depth 2",
        BuildParams(policy="frequency", backoff=0.0, max_context=2, top_c=8, max_depth=2),
    ),
    "raw-c16": CrestVariant(
        "CREST, raw trees, paper's rule, N<=2, 16 nodes to depth 3",
        BuildParams(policy="frequency", backoff=0.0, max_context=2, top_c=16, max_depth=3),
    ),
    "raw-n3-c64": CrestVariant(
        "CREST, raw trees, paper's rule, N<=3, 64 nodes to depth 8",
        BuildParams(policy="frequency", backoff=0.0, max_context=3, top_c=64, max_depth=8),
    ),
    "authors": AuthorsVariant("CREST, the authors': REST trees (cut), paper's rule, longest match, N<=4", 4),
    "authors-n5": AuthorsVariant("CREST, the authors': REST trees (cut), paper's rule, longest match, N<=5", 5),
    # for the ablation (one budget): what each difference between the authors' CREST and ours is worth
    "raw-n4": CrestVariant(
        "CREST, raw trees (no back-off), paper's rule, N<=4",
        BuildParams(policy="frequency", backoff=0.0, max_context=4),
    ),
    "authors-uncut": AuthorsVariant("CREST, REST trees (uncut), paper's rule, longest match, N<=4", 4, cut=False),
    "authors-n5-uncut": AuthorsVariant("CREST, REST trees (uncut), paper's rule, longest match, N<=5", 5, cut=False),
}


@dataclass(frozen=True)
class ShapeChoice:
    """A line whose store at each budget is the tree shape (one of `members`, variant names) and
    lookup that draft best on held-in prompts: no one shape is best at every budget and corpus."""

    line: str
    members: tuple[str, ...]


SHAPE_CHOICE = ShapeChoice(
    "CREST, raw trees, tree shape per budget chosen on held-in prompts", ("raw-c8", "raw-c16", "raw", "raw-n3-c64")
)
# the authors' contexts: up to 4 tokens for code, up to 5 for chat; raw is `crest build`'s defaults with contexts
# of up to 2 tokens (its default is 3), and the only line over the large code corpus, where back-off builds would
# take hours on two cores
DEFAULT_VARIANTS = {
    "humaneval": ("raw", "raw-c8", "raw-c16", "raw-n3-c64", "ours", "ours-n4", "gain", "authors"),
    "mtbench": ("raw", "raw-c8", "raw-c16", "raw-n3-c64", "ours", "ours-n4", "gain", "authors-n5"),
    "humaneval-python": ("raw",),
}
DEFAULT_FRACTIONS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
DEFAULT_BUDGETS_MB = (1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 32.0)
REST_LINE = "REST (corpus fraction)"
PICKLED_SUFFIX = " [LZMA pickles]"  # the authors' stores, storage counted as they keep them


@dataclass(frozen=True)
class StorePoint:
    system: str  # REST or CREST
    line: str
    setting: str  # the fraction or the budget, as shown
    path: Path
    file_bytes: int
    lookup_bytes: int  # what lookups read: CREST's file without its vocabulary table (kept for SQL)
    build_seconds: float
    lookups: tuple[str, ...] = field(default=("longest",))  # the lookups replayed; the first is the default


def _crest_name(params: BuildParams, megabytes: float) -> str:
    return (
        f"crest-{params.policy}-n{params.max_context}-d{params.max_depth}-c{params.top_c}"
        f"-m{params.min_count}-p{params.min_probability:g}-b{params.backoff:g}-{megabytes:g}MB.duckdb"
    )


class PointCache:
    """`points.json` of one corpus x tokenizer folder: what each built store weighs and cost."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.index = folder, folder / "points.json"
        self.entries: dict[str, dict] = json.loads(self.index.read_text()) if self.index.exists() else {}

    def get(self, name: str) -> StorePoint | None:
        entry = self.entries.get(name)
        if entry is None or not (self.folder / entry["path"]).exists():
            return None
        return StorePoint(**{**entry, "path": self.folder / entry["path"], "lookups": tuple(entry["lookups"])})

    def put(self, name: str, point: StorePoint) -> None:
        self.entries[name] = {**asdict(point), "path": point.path.name}
        partial = self.index.with_suffix(".partial")
        partial.write_text(json.dumps(self.entries, indent=1))
        partial.replace(self.index)


# What builds every store of the sweep: the layers up to REST (lookups, the overlay and the
# service read stores but never write them, so changing them keeps the cached stores).
BUILDING_LAYERS = ("build", "store", "rest")


def build_code_key() -> str:
    """A digest of the code and SQL that build stores (the shared modules, the building layers and
    the authors' rebuild)."""
    package = Path(datastore_service.__file__).parent
    files = [*package.glob("*.py")]
    for layer in BUILDING_LAYERS:
        files += [*(package / layer).rglob("*.py"), *(package / layer).rglob("*.sql")]
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(package)).encode() + path.read_bytes())
    digest.update((Path(__file__).parent / "authors_crest.py").read_bytes())
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
    variants: Sequence[CrestVariant | AuthorsVariant],
    progress: bool = True,
) -> list[StorePoint]:
    tokenizer = TargetTokenizer.load(tokenizer_spec)
    tokenized = tokenize_corpus(corpus, tokenizer, progress=progress)
    cache = PointCache(cache_dir("eval", f"{tokenized.parquet.stem}-{build_code_key()}"))
    crest = [v for v in variants if isinstance(v, CrestVariant)]
    authors = [v for v in variants if isinstance(v, AuthorsVariant)]
    steps = len(fractions) + bool(crest) + len(authors)
    with tqdm(total=steps, desc=f"stores of {corpus.display_name}", unit="build", disable=not progress) as bar:
        rest = []
        for fraction in fractions:
            rest.append(_rest_point(cache, corpus, tokenizer_spec, fraction))
            bar.update()
        points = list(rest)
        if crest:
            points += _crest_points(cache, corpus, tokenizer, tokenizer_spec, crest, budgets_mb)
            bar.update()
        for variant in authors:
            full = _rest_point(cache, corpus, tokenizer_spec, 1.0)
            points += _authors_points(cache, tokenized, tokenizer, full.path, variant, budgets_mb, progress)
            bar.update()
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
            StoreTarget(cache.folder / name, Budget(bytes=int(mb * 1e6)), variant.params.policy, params=variant.params)
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
    # The lookups replayed and the line's name are this code's, not those of the run that built the store.
    return [replace(cache.get(name), lookups=LOOKUPS, line=variant.line) for variant, _, name in wanted]


def _authors_points(
    cache: PointCache,
    tokenized: TokenizedCorpus,
    tokenizer: TargetTokenizer,
    rest_store: Path,
    variant: AuthorsVariant,
    budgets_mb: Sequence[float],
    progress: bool,
) -> list[StorePoint]:
    kind = f"authors-n{variant.max_context}" + ("" if variant.cut else "-uncut")
    names = [(mb, f"{kind}-{mb:g}MB.duckdb") for mb in budgets_mb]
    if any(cache.get(name) is None or cache.get(name + PICKLED_SUFFIX) is None for _, name in names):
        trees = cached_authors_trees(
            cache.folder / f"{kind}-trees-{max(budgets_mb):g}MB.parquet",
            rest_store,
            tokenized.parquet,
            variant.max_context,
            1.5e6 * max(budgets_mb),
            progress,
            variant.cut,
        )
        vocabulary = vocabulary_bytes(tokenizer.pieces(), cache.folder)
        corpus = {
            "corpus_name": tokenized.parquet.stem,
            "corpus_fingerprint": tokenized.report.fingerprint,
            "corpus_documents": tokenized.report.documents,
            "corpus_tokens": tokenized.tokens,
        }
        for mb, name in names:
            if cache.get(name) is not None and cache.get(name + PICKLED_SUFFIX) is not None:
                continue
            written = write_authors_store(
                trees,
                cache.folder / name,
                Budget(bytes=int(mb * 1e6)),
                tokenizer,
                corpus,
                variant.max_context,
                variant.cut,
            )
            ours = StorePoint(
                "CREST",
                variant.line,
                format_bytes(mb * 1e6),
                written.path,
                written.file_bytes,
                written.file_bytes - vocabulary,
                0.0,
            )
            cache.put(name, ours)
            cache.put(
                name + PICKLED_SUFFIX,
                StorePoint(
                    "CREST",
                    variant.line + PICKLED_SUFFIX,
                    format_bytes(mb * 1e6),
                    written.path,
                    written.file_bytes,
                    written.pickled_bytes,
                    0.0,
                ),
            )
    return [point for _, name in names for point in (cache.get(name), cache.get(name + PICKLED_SUFFIX))]
