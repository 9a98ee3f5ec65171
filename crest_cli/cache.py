"""`crest cache`: what the cache under `$CREST_CACHE` (default ~/.cache/crest) holds, and pruning it."""

from __future__ import annotations

import argparse

from datastore_service.build.caches import PRUNABLE, cache_folders, prune_caches
from datastore_service.paths import cache_root
from datastore_service.sizes import format_bytes

DEFAULT_UNUSED_DAYS = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    prune = actions.add_parser(
        "prune",
        help="remove token and count files no build used for a while (the next build remakes them)",
        description=f"Remove the files in {' and '.join(f'$CREST_CACHE/{name}' for name in PRUNABLE)} (a corpus's "
        "token ids, a shard's n-gram counts) that no build used for --unused-days days, and scratch files of builds "
        "that died. A build that needs a removed file makes it again. Stores, models and tokenizers are never "
        "pruned.",
    )
    prune.add_argument(
        "--unused-days",
        type=float,
        default=DEFAULT_UNUSED_DAYS,
        help=f"remove files no build used for this many days (default: {DEFAULT_UNUSED_DAYS:g}; 0: all)",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")


def run(args: argparse.Namespace) -> int:
    if args.action != "prune":
        print(f"{cache_root()} ($CREST_CACHE)")
        for folder in cache_folders():
            note = "prunable: crest cache prune" if folder.prunable else "kept"
            print(f"  {folder.name:<14}{folder.files:>7} files  {format_bytes(folder.bytes):>10}  {note}")
        return 0
    removed = prune_caches(args.unused_days, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for cache_file in removed:
        print(f"{verb:<12}{cache_file.path.parent.name}/{cache_file.path.name} ({format_bytes(cache_file.bytes)})")
    print(f"{verb} {len(removed)} file(s), {format_bytes(sum(f.bytes for f in removed))} from {cache_root()}")
    return 0
