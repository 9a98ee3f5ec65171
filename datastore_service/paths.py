"""Where CREST keeps caches: outside git, keyed by what produced them, rebuilt when missing."""

import os
from pathlib import Path


def cache_root() -> Path:
    """`$CREST_CACHE`, else `~/.cache/crest`."""
    return Path(os.environ.get("CREST_CACHE", Path.home() / ".cache" / "crest"))


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
