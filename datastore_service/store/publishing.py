"""Versioned, atomic publishing of store files, and the versions an operator keeps.

A store path `S` (e.g. `stdlib.duckdb`) is a symlink to `S.versions/<version>.duckdb`. A build
writes `S.versions/<version>.partial-<pid>`, checkpoints and fsyncs it, renames it to its final
name, then atomically swaps the symlink. Readers resolve `S` once and open the versioned file, so
a reader never sees a half-written file, and a killed build leaves the old version published.

Beside the version files, `S.versions/pins/<version>` marks a pinned version and
`S.versions/replicas/` holds the leases of running replicas (replicas.py). After each publish
the `keep` most recently published other versions stay; older ones are removed unless they are
published, pinned or served by a live replica: those are never removed. A version's file time is
when it was last published (a rollback touches it), so a version rolled back to counts as recent.
A `keep` given once is remembered in `S.versions/keep` for later publishes that give none.

Files derived from a version (the serving file `<version>.serving`) are its companions: published
under the same version before the symlink swap, so a reader that finds the version finds them
too, and pruned with it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from datastore_service.errors import StoreError
from datastore_service.store.replicas import pid_alive, read_leases, remove_dead_leases

KEEP_OLD_VERSIONS = 2  # versions kept besides the published, pinned and served ones
PINS_FOLDER = "pins"
KEEP_FILE = "keep"  # the last --keep given for this store, used by later publishes that give none


def fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


@dataclass(frozen=True)
class Version:
    """One published-at-some-time file of a store, and what protects it from pruning."""

    name: str
    file: Path
    bytes: int
    published_at: float  # when it was last published (the file's modification time)
    published: bool  # the one the store path points at now
    pinned: bool
    served_by: tuple[str, ...]  # live replicas that report serving it

    @property
    def created_at(self) -> datetime | None:
        """From the version id, which starts with its build's UTC time."""
        try:
            return datetime.strptime(self.name.split("-")[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)
        except ValueError:
            return None

    @property
    def protected(self) -> bool:
        return self.published or self.pinned or bool(self.served_by)


class VersionedStore:
    """The published path of a store and the folder holding its versions."""

    def __init__(self, path: Path, suffix: str | None = None, keep: int | None = None) -> None:
        self.path = Path(path).expanduser().absolute()
        self.versions = self.path.with_name(self.path.name + ".versions")
        # of published version files: .duckdb (CREST) or .rest (the REST baseline)
        self.suffix = suffix or (".rest" if self.path.name.endswith(".rest") else ".duckdb")
        self.keep_given = _checked_keep(keep)

    @property
    def keep(self) -> int:
        """Versions kept besides the protected ones: as given, else as last given, else the default."""
        if self.keep_given is not None:
            return self.keep_given
        try:
            return _checked_keep(int((self.versions / KEEP_FILE).read_text()))
        except (OSError, ValueError, StoreError):
            return KEEP_OLD_VERSIONS

    def new_version(self) -> str:
        return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)

    def scratch(self, version: str, kind: str) -> Path:
        """A private path for an unpublished file of this process (partial store, work files)."""
        self.versions.mkdir(parents=True, exist_ok=True)
        return self.versions / f"{version}.{kind}-{os.getpid()}"

    def remove_stale_scratch(self) -> None:
        """Delete scratch files of builds whose process is gone (killed mid-build)."""
        if not self.versions.exists():
            return
        for entry in self.versions.iterdir():
            _, _, pid = entry.name.removesuffix(".wal").rpartition("-")  # DuckDB's log of a scratch file too
            if "." in entry.name and pid.isdigit() and not entry.name.endswith(self.suffix) and not pid_alive(int(pid)):
                remove_path(entry)

    def published(self) -> Path | None:
        """The file readers open now, or None if nothing is published."""
        return self.path.resolve() if self.path.exists() else None

    def publish(self, partial: Path, version: str, companions: Mapping[str, Path] | None = None) -> Path:
        """Publish `partial` as `version`, with `companions` ({suffix: private file}) beside it."""
        companions = companions or {}
        for path in (partial, *companions.values()):
            fsync_file(path)
        final = self.versions / f"{version}{self.suffix}"
        os.replace(partial, final)
        for suffix, path in companions.items():
            os.replace(path, self.versions / f"{version}{suffix}")
        fsync_dir(self.versions)
        self._point_at(final)
        self.prune()
        return final

    def publish_unless_identical(
        self,
        partial: Path,
        version: str,
        same: Callable[[Path, Path], bool],
        companions: Mapping[str, Path] | None = None,
    ) -> tuple[Path, bool]:
        """Publish `partial` (with its companions) unless `same(published, partial)`; returns (the
        file now published, whether it is new). An identical rebuild thus adds no version and pushes
        no older one out."""
        current = self.published()
        if current is not None and same(current, partial):
            return current, False
        return self.publish(partial, version, companions), True

    def republish(self, spec: str) -> Version:
        """Point the store at an existing version (a rollback, or forward again); prunes nothing."""
        version = self.resolve(spec)
        os.utime(version.file)  # it is now the most recently published version
        self._point_at(version.file)
        return self.resolve(version.name)

    def _point_at(self, final: Path) -> None:
        link = self.path.with_name(f".{self.path.name}.link-{os.getpid()}")
        link.unlink(missing_ok=True)
        link.symlink_to(final.relative_to(self.path.parent))
        os.replace(link, self.path)
        fsync_dir(self.path.parent)

    def list_versions(self) -> list[Version]:
        """Every version file, most recently published first."""
        current = self.published()
        pins = self.versions / PINS_FOLDER
        served: dict[str, list[str]] = {}
        if self.versions.exists():
            for lease in read_leases(self.versions):
                if lease.live():
                    served.setdefault(lease.version, []).append(lease.replica)
        found = []
        for file in self.versions.glob(f"*{self.suffix}") if self.versions.exists() else ():
            try:
                stat = file.stat()
            except FileNotFoundError:
                continue  # pruned meanwhile
            name = file.name.removesuffix(self.suffix)
            found.append(
                Version(
                    name,
                    file,
                    stat.st_size,
                    stat.st_mtime,
                    published=file == current,
                    pinned=(pins / name).exists(),
                    served_by=tuple(served.get(name, ())),
                )
            )
        return sorted(found, key=lambda v: (v.published_at, v.name), reverse=True)

    def resolve(self, spec: str) -> Version:
        """A version by its id, a unique prefix of it, `published`, or `previous` (the most recently
        published one before the published one)."""
        versions = self.list_versions()
        if spec == "published":
            matches = [v for v in versions if v.published]
        elif spec == "previous":
            matches = [v for v in versions if not v.published][:1]
        else:
            name = spec.removesuffix(self.suffix)
            exact = [v for v in versions if v.name == name]
            matches = exact or [v for v in versions if v.name.startswith(name)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise StoreError(f"{self.path} has no version {spec!r} (see `crest versions {self.path}`)")
        raise StoreError(f"{spec!r} matches {len(matches)} versions of {self.path}; give more of the id")

    def pin(self, spec: str) -> Version:
        version = self.resolve(spec)
        (self.versions / PINS_FOLDER).mkdir(exist_ok=True)
        (self.versions / PINS_FOLDER / version.name).touch()
        return self.resolve(version.name)

    def unpin(self, spec: str) -> Version:
        version = self.resolve(spec)
        (self.versions / PINS_FOLDER / version.name).unlink(missing_ok=True)
        return self.resolve(version.name)

    def prune(self, keep: int | None = None, dry_run: bool = False) -> list[Version]:
        """Remove versions beyond the `keep` most recently published unprotected ones; returns them.
        Never removes the published version, a pinned one, or one a live replica serves."""
        given = self.keep_given if _checked_keep(keep) is None else keep
        keep = self.keep if given is None else given
        if self.versions.exists() and not dry_run:
            remove_dead_leases(self.versions)
            if given is not None:
                (self.versions / KEEP_FILE).write_text(f"{given}\n")
        removable = [v for v in self.list_versions() if not v.protected][keep:]
        if not dry_run:
            for version in removable:
                for entry in self.versions.glob(f"{version.name}.*"):  # its file and companions
                    if "-" not in entry.name.partition(".")[2]:  # not a build's scratch
                        remove_path(entry)
        return removable


def _checked_keep(keep: int | None) -> int | None:
    if keep is not None and keep < 0:
        raise StoreError(f"--keep must be 0 or more, got {keep}")
    return keep


def remove_path(path: Path) -> None:
    """Remove a file or folder, and the write-ahead log DuckDB may have left beside a file."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".wal").unlink(missing_ok=True)
