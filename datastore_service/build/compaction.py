"""`crest compact`: fold a learning store's snapshots into a new published version, exactly.

The snapshots (store/snapshots.py) not yet held by the published version are summed with the
counts earlier compactions folded (`ingested-*.counts.parquet`) into one count file, which a
sharded build adds to the corpus's counts: the new version equals a build over the corpus plus
every observed sequence. It records which snapshots it holds, so serving replicas drop exactly
those from their overlays when they reload it. Files every kept version holds are removed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

from datastore_service.build.corpus import CorpusSpec
from datastore_service.build.observed_counts import sum_count_files, tokens_in
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import BuildSummary, EngineSettings, ObservedCounts, build_store
from datastore_service.errors import CrestError
from datastore_service.sizes import parse_budget
from datastore_service.store.publishing import VersionedStore
from datastore_service.store.reader import read_store_info
from datastore_service.store.snapshots import SnapshotFolder, folded_of


@dataclass(frozen=True)
class CompactionSummary:
    build: BuildSummary
    snapshots: int  # folded by this compaction
    observed_tokens: int  # every observed token the new version holds
    removed_files: int


def params_of(build_params: dict) -> BuildParams:
    """The build parameters a published store records (its extra keys ignored)."""
    known = {f.name for f in fields(BuildParams)}
    values = {k: v for k, v in build_params.items() if k in known}
    values["budget"] = parse_budget(str(values["budget"]))
    values.setdefault("backoff", 0.0)  # stores from before back-off trees hold raw trees
    return BuildParams(**values)


def compact_store(
    store: Path,
    corpus: CorpusSpec,
    tokenizer_spec: str,
    shards: tuple[CorpusSpec, ...] = (),
    settings: EngineSettings = EngineSettings(),
    progress: bool = True,
) -> CompactionSummary:
    info = read_store_info(store)
    build_params = info["build_params"]
    folder = SnapshotFolder(store)
    folded_before = folded_of(build_params)
    new = folder.unfolded(folded_before)
    if not new:
        raise CrestError(f"nothing to compact: {store} already holds every snapshot in {folder.folder}")
    folded = dict(folded_before)
    for snapshot in new:
        folded[snapshot.writer] = max(folded.get(snapshot.writer, 0), snapshot.sequence)
    digest = hashlib.sha256(json.dumps(sorted(folded.items())).encode()).hexdigest()[:16]
    overlay = build_params.get("overlay", {})
    earlier = [folder.folder / overlay["counts"]] if overlay.get("counts") else []
    params = params_of(build_params)
    counts = folder.write_file(
        f"ingested-{digest}.counts.parquet",
        lambda target: sum_count_files([*earlier, *(s.path for s in new)], params.levels, target),
    )
    observed = ObservedCounts(
        counts, tokens_in(counts), folded, digest, overlay.get("base_corpus_fingerprint", info["corpus_fingerprint"])
    )
    summary = build_store(corpus, tokenizer_spec, store, params, settings, progress=progress, shards=shards,
                          observed=observed)  # fmt: skip
    return CompactionSummary(summary, len(new), observed.tokens, _remove_held_everywhere(store, folder))


def _remove_held_everywhere(store: Path, folder: SnapshotFolder) -> int:
    """Delete snapshots every kept version holds and summed counts no kept version names (a rollback
    to a kept version still finds what it lacks)."""
    versions = VersionedStore(store)
    kept = [read_store_info(path)["build_params"] for path in sorted(versions.versions.glob(f"*{versions.suffix}"))]
    named = {params.get("overlay", {}).get("counts") for params in kept}
    held_by_all = [folded_of(params) for params in kept]
    removed = 0
    for snapshot in folder.snapshots():
        if all(snapshot.sequence <= held.get(snapshot.writer, 0) for held in held_by_all):
            snapshot.path.unlink(missing_ok=True)
            removed += 1
    for counts in folder.folder.glob("ingested-*.counts.parquet"):
        if counts.name not in named:
            counts.unlink(missing_ok=True)
            removed += 1
    return removed
