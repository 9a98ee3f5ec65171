"""Write a benchmark's Markdown section into docs/BENCHMARKS.md between its own markers."""

from __future__ import annotations

from pathlib import Path

from crest_cli.evaluation.doc_sections import write_section as write_doc_section

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def write_section(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    write_doc_section(path, name, markdown, title="Benchmarks")


def cpu_text() -> str:
    """The CPU a figure was measured on, as /proc/cpuinfo names it, and the instruction set our panel
    kernel runs in there: machines of one size differ (AVX-512 or not), and so do their figures."""
    from decoder import panel_linear  # torch's side: only the decoder benchmarks ask

    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = []
    name = names[0] if names else "unknown CPU"
    return f"{name} x {len(names) or '?'}, panel kernel in {panel_linear.instruction_set() or 'none (oneDNN)'}"
