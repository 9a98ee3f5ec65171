"""The docs run as written: every shell and Python block of README.md and docs/DEPLOY.md, in order,
in one bash session (`set -euo pipefail`) in an empty folder, on loopback, with the small corpora
the docs name (./my_code, ./my_repo, ...) made from a few stdlib modules. A block whose first line
is `# not run by the doc test: <why>` is skipped; the reason is visible in the doc itself."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import STDLIB

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/DEPLOY.md"]
RUN_LANGUAGES = {"bash", "sh", "shell", "python"}
NOT_RUN = "# not run by the doc test:"
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
DOC_PORTS = [*range(50051, 50056), 9464]  # the ports the docs' replicas listen on


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    language: str
    code: str

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and not self.code.startswith(NOT_RUN)

    def as_bash(self) -> str:
        if self.language == "python":
            return f"python - <<'CREST_DOC_PYTHON'\n{self.code}CREST_DOC_PYTHON\n"
        return self.code


def blocks(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text()
    return [
        Block(doc, text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2))
        for match in FENCE.finditer(text)
    ]


def test_every_block_has_a_language_and_those_not_run_say_why():
    for doc in DOCS:
        for block in blocks(doc):
            assert block.language, f"{doc}:{block.line}: a fenced block without a language"
            if block.language in RUN_LANGUAGES and block.code.startswith(NOT_RUN):
                assert len(block.code.splitlines()[0]) > len(NOT_RUN) + 5, f"{doc}:{block.line}: say why"
    assert sum(b.runs for doc in DOCS for b in blocks(doc)) >= 15


def corpus_folder(target: Path, *modules: str) -> None:
    target.mkdir()
    for module in modules:
        for source in sorted((STDLIB / module).glob("*.py"))[:4]:
            shutil.copy(source, target / f"{module.replace('/', '_')}_{source.name}")


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """An empty folder holding the small corpora the docs name."""
    corpus_folder(tmp_path / "my_code", "json")
    corpus_folder(tmp_path / "generated", "email/mime")
    corpus_folder(tmp_path / "my_repo", "json")
    corpus_folder(tmp_path / "repo_a", "json")
    corpus_folder(tmp_path / "repo_b", "email/mime")
    lines = [f'{{"body": "def answer_{n}(question):\\n    return {n} * question\\n"}}' for n in range(200)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("doc", DOCS)
def test_doc_runs_as_written(doc: str, sandbox: Path, crest_cache: Path):
    busy = [port for port in DOC_PORTS if port_in_use(port)]
    if busy:
        pytest.skip(f"ports {busy} are in use by another process: the doc's replicas need them")
    runnable = [b for b in blocks(doc) if b.runs]
    script = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT"]
    for block in runnable:
        script += [f"echo '>>> {doc}:{block.line}' >&2", block.as_bash()]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CREST_CACHE": str(crest_cache),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("CREST_TOKEN", None)
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=sandbox, env=env, capture_output=True, text=True, timeout=600
    )
    started = re.findall(r">>> (\S+)", result.stderr)
    where = started[-1] if started else "before the first block"
    assert result.returncode == 0, (
        f"the block at {where} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    assert started == [f"{doc}:{b.line}" for b in runnable]
