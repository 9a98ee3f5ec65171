"""Write a benchmark's Markdown section into docs/BENCHMARKS.md between its own markers."""

from __future__ import annotations

from pathlib import Path

from crest_cli.evaluation.doc_sections import write_section as write_doc_section

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def write_section(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    write_doc_section(path, name, markdown, title="Benchmarks")
