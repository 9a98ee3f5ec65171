"""Corpus readers on real files: source trees, truncated ShareGPT JSON, JSONL, plain text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datastore_service.build.corpus import CorpusReport, corpus_spec, read_documents, sharegpt_corpus
from datastore_service.errors import CorpusError


def read(path: Path, **options) -> tuple[list[str], CorpusReport]:
    report = CorpusReport()
    return list(read_documents(corpus_spec(str(path), **options), report)), report


def test_source_tree_skips_and_counts_non_utf8_files(code_corpus: Path):
    documents, report = read(code_corpus, glob="*.py")
    assert report.skipped == [(str(code_corpus / "latin1.py"), "not UTF-8")]
    assert len(documents) == report.documents > 20  # json/ and email/ modules; the empty file adds nothing
    assert all(doc.strip() for doc in documents)


def test_source_tree_fails_on_non_utf8_when_asked(code_corpus: Path):
    with pytest.raises(CorpusError, match="latin1.py: not UTF-8"):
        read(code_corpus, glob="*.py", skip_bad_files=False)


def test_fingerprint_is_deterministic_and_content_sensitive(code_corpus: Path, tmp_path: Path):
    assert read(code_corpus)[1].fingerprint == read(code_corpus)[1].fingerprint
    (tmp_path / "a.txt").write_text("one")
    first = read(tmp_path)[1].fingerprint
    (tmp_path / "a.txt").write_text("two")
    assert read(tmp_path)[1].fingerprint != first


def test_sharegpt_recovers_complete_conversations_and_keeps_assistant_turns(tmp_path: Path):
    conversations = [
        {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "q"}, {"from": "chatgpt", "value": "answer"}]},
    ]
    text = json.dumps(conversations, indent=2)
    truncated = text[: text.rindex("]")] + ',\n  {"id": "c", "conversations": [{"from": "gpt", "value": "cut of'
    (tmp_path / "chat.json").write_text(truncated)
    documents, report = read(tmp_path / "chat.json")
    assert documents == ["hello there", "answer"]
    assert report.truncated_tail


def test_shipped_sharegpt_file_is_recovered():
    report = CorpusReport()
    documents = read_documents(sharegpt_corpus(), report)
    first = next(documents)
    assert isinstance(first, str) and first
    for _ in documents:
        pass
    assert report.truncated_tail
    assert report.documents > 60_000  # assistant turns of the 17,671 complete conversations


def test_jsonl_and_plain_text(tmp_path: Path):
    (tmp_path / "rows.jsonl").write_text('{"text": "alpha"}\n\n{"text": "beta", "x": 1}\n{"other": 2}\n')
    assert read(tmp_path / "rows.jsonl")[0] == ["alpha", "beta"]
    (tmp_path / "notes.txt").write_text("plain words\n")
    assert read(tmp_path / "notes.txt")[0] == ["plain words\n"]
    (tmp_path / "bad.jsonl").write_text("not json\n")
    with pytest.raises(CorpusError, match="bad.jsonl:1"):
        read(tmp_path / "bad.jsonl")


def test_missing_corpus_is_a_clear_error(tmp_path: Path):
    with pytest.raises(CorpusError, match="corpus not found"):
        read(tmp_path / "nowhere")
