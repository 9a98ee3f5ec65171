"""Where CREST keeps caches: outside git, keyed by what produced them, rebuilt when missing."""

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """`$CREST_CACHE`, else `~/.cache/crest`."""
    return Path(os.environ.get("CREST_CACHE", Path.home() / ".cache" / "crest"))


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
