"""Generated Markdown goes between `<!-- name:begin -->` and `<!-- name:end -->` markers, so a
rerun replaces its own section and leaves hand-written text around it alone."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, name: str, markdown: str, title: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else f"# {title}\n"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
