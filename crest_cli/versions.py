"""`crest versions`: list a store's versions, pin and unpin them, roll back, prune."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from datastore_service.errors import StoreError
from datastore_service.sizes import format_bytes
from datastore_service.store.publishing import KEEP_OLD_VERSIONS, Version, VersionedStore

ACTIONS = ("list", "pin", "unpin", "publish", "prune")
VERSION_HELP = "a version id, a unique prefix of one, `published`, or `previous` (published before the published one)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, summary: str, with_version: bool) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        sub.add_argument("store", type=Path, help="published store path (a .duckdb or .rest symlink)")
        if with_version:
            sub.add_argument("version", help=VERSION_HELP)
        return sub

    action("list", "list the versions: published, pinned, served by which live replicas (the default)", False)
    action("pin", "keep a version until it is unpinned: pruning never removes it", True)
    action("unpin", "let pruning remove a version again", True)
    action(
        "publish",
        "point the store at an existing version (roll back, or forward again); replicas reload it; prunes nothing",
        True,
    )
    prune = action(
        "prune",
        "remove old versions; never the published one, a pinned one or one a live replica serves",
        False,
    )
    prune.add_argument(
        "--keep",
        type=int,
        default=None,
        help=f"other versions to keep, most recently published first (default: as last given, else "
        f"{KEEP_OLD_VERSIONS}); remembered for later builds of this store",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")


def with_default_action(argv: list[str]) -> list[str]:
    """`crest versions STORE` means `crest versions list STORE`."""
    if len(argv) >= 2 and argv[0] == "versions" and argv[1] not in ACTIONS and not argv[1].startswith("-"):
        return [argv[0], "list", *argv[1:]]
    return argv


def _time(seconds: float | None) -> str:
    return "-" if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _state(version: Version) -> str:
    states = [name for name, flag in (("published", version.published), ("pinned", version.pinned)) if flag]
    if version.served_by:
        states.append(f"served by {len(version.served_by)}: " + ", ".join(version.served_by))
    return "; ".join(states) or "-"


def render(store: VersionedStore, versions: list[Version]) -> str:
    rows = [("version", "created (UTC)", "last published (UTC)", "size", "state")]
    for v in versions:
        created = v.created_at.timestamp() if v.created_at else None
        rows.append((v.name, _time(created), _time(v.published_at), format_bytes(v.bytes), _state(v)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{store.path}: {len(versions)} version(s) in {store.versions}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4] for row in rows]
    lines.append(
        f"pruning keeps {store.keep} other version(s), most recently published first; published, pinned and "
        "served versions are never pruned (replicas report what they serve in the versions folder)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    store = VersionedStore(args.store)
    if not store.versions.exists():
        raise StoreError(f"{args.store} has no versions folder ({store.versions}): not a published store")
    if args.action == "list":
        print(render(store, store.list_versions()))
    elif args.action == "pin":
        print(f"pinned      {store.pin(args.version).name}")
    elif args.action == "unpin":
        print(f"unpinned    {store.unpin(args.version).name}")
    elif args.action == "publish":
        version = store.republish(args.version)
        print(f"published   {store.path} -> {version.file.name} (replicas reload it within their --reload-interval)")
    else:
        removed = store.prune(args.keep, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        for version in removed:
            print(f"{verb:<12}{version.name} ({format_bytes(version.bytes)})")
        print(f"{verb} {len(removed)} version(s), {format_bytes(sum(v.bytes for v in removed))}")
    return 0
