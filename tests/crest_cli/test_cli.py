"""The `crest` command as a user runs it: help, summaries, one-line errors, interrupted builds."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crest_cli.main import parser
from datastore_service.store.reader import read_store_info, resolve_store


def crest(*args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "crest_cli", *args], capture_output=True, text=True, timeout=300, **kwargs
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def start_crest(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crest_cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_help_explains_every_command():
    result = crest("--help", check=True)
    for command in ("build", "inspect", "migrate"):
        assert command in result.stdout
    build_help = crest("build", "--help", check=True).stdout
    for flag in ("--corpus", "--budget", "--policy", "--max-context", "--max-depth", "--top-c", "--on-bad-file"):
        assert flag in build_help


@pytest.fixture(scope="module")
def published(code_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("cli") / "code.duckdb"
    result = crest(
        "build",
        "--corpus",
        str(code_corpus / "json"),
        "--output",
        str(output),
        "--budget",
        "200rows",
        "--quiet",
        check=True,
    )
    assert "published" in result.stdout and "200 kept" in result.stdout and "bytes per context" in result.stdout
    return output


def test_rest_build_stores_its_lookup_parameters(code_corpus: Path, tmp_path: Path):
    from datastore_service.lookup.index_loader import load_index
    from datastore_service.rest.index import RestParams

    output = tmp_path / "json.rest"
    corpus = ["--corpus", str(code_corpus / "json"), "--output", str(output), "--quiet"]
    result = crest("build", "--kind", "rest", *corpus, "--rest-k", "50", "--rest-c", "12", check=True)
    assert "lookups     n 16..2, k 50, m 10, c 12" in result.stdout
    assert load_index(output).params == RestParams(k=50, c=12)


def test_inspect_prints_metadata_and_drafts(published: Path):
    result = crest("inspect", str(published), "--top", "3", check=True)
    assert "tokenizer_fingerprint" in result.stdout and "most common contexts" in result.stdout
    sql = crest("inspect", str(published), "--sql", "SELECT count(*) AS n FROM drafts", check=True)
    assert "200" in sql.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "--corpus", "/no/such/corpus"], "corpus not found"),
        (["build", "--budget", "lots"], "cannot read budget"),
        (["build", "--max-depth", "0"], "max_depth must be"),
        (["inspect", "/no/such/store.duckdb"], "datastore not found"),
        (["build", "--master", "local[1]"], "need --engine spark"),
        (["build", "--engine", "spark", "--spark-conf", "no-value"], "takes KEY=VALUE"),
        (["build", "--engine", "spark", "--add-shard", "/no/such/shard"], "not found"),
        (["build", "--spark-bind-address", "0.0.0.0"], "need --engine spark"),
        (["build", "--kind", "rest", "--add-shard", "/no/such/shard"], "not --kind rest"),
        (["build", "--rest-k", "10"], "set a --kind rest store"),
        (["build", "--kind", "rest", "--rest-n-min", "20"], "1 <= n_min <= n_max"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str):
    result = crest(*args)
    assert result.returncode == 1
    assert result.stderr.startswith("crest: error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_file_fails_the_build_when_asked(code_corpus: Path, tmp_path: Path):
    result = crest(
        "build",
        "--corpus",
        str(code_corpus),
        "--glob",
        "*.py",
        "--on-bad-file",
        "fail",
        "--output",
        str(tmp_path / "s.duckdb"),
        "--quiet",
    )
    assert result.returncode == 1 and "latin1.py: not UTF-8" in result.stderr
    assert not (tmp_path / "s.duckdb").exists()


def _wait_for_work_dir(versions: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if versions.exists() and any(f".work-{process.pid}" in p.name for p in versions.iterdir()):
            return
        time.sleep(0.02)
    raise AssertionError("build never reached its counting phase")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_build_stopped_midway_leaves_the_old_version_published(published: Path, code_corpus: Path, how: int):
    old_file, old_info = resolve_store(published), read_store_info(published)
    process = start_crest(
        "build", "--corpus", str(code_corpus), "--output", str(published), "--budget", "1000rows", "--quiet"
    )
    _wait_for_work_dir(published.with_name(published.name + ".versions"), process)
    os.kill(process.pid, how)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    if how == signal.SIGINT:
        assert process.returncode == 130 and "nothing was published" in stderr
    assert resolve_store(published) == old_file
    assert read_store_info(published) == old_info
    published_files = list(published.with_name(published.name + ".versions").glob("*.duckdb"))
    assert published_files == [old_file]  # no half-written file under a name readers open


def test_datastore_side_runs_without_torch(published: Path, code_corpus: Path, tmp_path: Path):
    """Build and inspect with `import torch` made impossible (the tokenizer is already cached)."""
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from crest_cli.main import main\n"
        f"code = main(['build', '--corpus', {str(code_corpus / 'json')!r}, '--output', {str(tmp_path / 't.duckdb')!r},"
        " '--budget', '50rows', '--quiet'])\n"
        f"code = code or main(['inspect', {str(tmp_path / 't.duckdb')!r}, '--top', '2'])\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_duckdb_out_of_memory_is_a_clear_error(code_corpus: Path, tmp_path: Path):
    result = crest(
        "build",
        "--corpus",
        str(code_corpus / "email"),
        "--output",
        str(tmp_path / "s.duckdb"),
        "--memory-limit",
        "30MB",
        "--max-temp-size",
        "1MB",
        "--quiet",
    )
    assert result.returncode == 1 and "DuckDB ran out of" in result.stderr
    assert not (tmp_path / "s.duckdb").exists()


def all_parsers(root: argparse.ArgumentParser):
    yield root
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_parsers(sub)


def test_every_flag_shows_its_default_once():
    for command in all_parsers(parser()):
        formatter = command._get_formatter()
        for action in command._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            text = formatter._expand_help(action)
            where = f"{command.prog} {action.option_strings[0]}: {text}"
            assert text.count("(default") <= 1 and "(default: None)" not in text, where
            says_nothing = (  # as help_format.py reads them
                action.default is None or action.default is False or action.default == []
            ) or action.default is argparse.SUPPRESS
            if not (says_nothing or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
                assert "default" in text, where
