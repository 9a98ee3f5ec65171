"""`crest build --engine spark` on a real Spark standalone cluster that the test starts on loopback:
a master and two workers (each one core), a sharded build whose counts run on the cluster. One
shard's counts are already cached (by DuckDB), so the cluster counts only the new shard, as an
operator adding a shard sees it. The store equals DuckDB's build over the union of the shards,
both workers ran executors, every socket of the cluster and of the build listens on loopback
only, and `--quiet` keeps Spark's lines off the terminal. The cluster is stopped on every exit
path (and dies with the test process).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datastore_service.build.corpus import corpus_spec
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import build_store
from datastore_service.build.shard_counts import shard_counts, shard_counts_path
from datastore_service.build.token_table import tokenize_corpus
from datastore_service.sizes import Budget
from datastore_service.store.reader import open_store
from tests.datastore_service.listening_sockets import ListeningSockets

START_TIMEOUT = 120.0
# Small and shallow: Spark's cost here is per statement, not per token.
PARAMS = BuildParams(max_context=1, max_depth=1, top_c=4, budget=Budget(rows=300))
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Daemon:
    """A Spark master or worker JVM in its own process group, its log lines read as they come."""

    def __init__(self, spark_class: Path, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(spark_class), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str) -> re.Match:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} from Spark; its log ends:\n{''.join(self.lines[-20:])}")

    def stop(self) -> None:
        """SIGTERM to the group (a worker stops its executors), SIGKILL if it lingers."""
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Path]]]:
    """(master URL, the workers' work folders) of a standalone cluster on 127.0.0.1."""
    pyspark = pytest.importorskip("pyspark")
    pytest.importorskip("sqlglot")
    spark_home = Path(pyspark.__file__).parent
    folder = tmp_path_factory.mktemp("spark-cluster")
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "SPARK_LOCAL_IP": "127.0.0.1",  # the daemons, their web UIs and the executors bind here
        "SPARK_DAEMON_MEMORY": "256m",
        "SPARK_LOG_DIR": str(folder),
    }
    spark_class = spark_home / "bin" / "spark-class"
    daemons: list[Daemon] = []
    try:
        master = Daemon(
            spark_class,
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", "0", "--webui-port", "0"],
            env,
        )
        daemons.append(master)
        url = master.wait_for(r"Starting Spark master at (spark://127\.0\.0\.1:\d+)").group(1)
        work_dirs = [folder / f"worker{i}" for i in range(2)]
        for work_dir in work_dirs:
            worker_args = ["--host", "127.0.0.1", "--port", "0", "--webui-port", "0", "--cores", "1"]
            worker_args += ["--memory", "768m", "--work-dir", str(work_dir), url]
            daemons.append(Daemon(spark_class, ["org.apache.spark.deploy.worker.Worker", *worker_args], env))
        for worker in daemons[1:]:
            worker.wait_for("Successfully registered with master")
        yield url, work_dirs
    finally:
        for daemon in reversed(daemons):
            daemon.stop()


def test_sharded_build_on_a_standalone_cluster(
    cluster: tuple[str, list[Path]], code_corpus: Path, smollm2, tmp_path: Path
):
    url, work_dirs = cluster
    shards = [tmp_path / "shard-json", tmp_path / "shard-email"]
    shutil.copytree(code_corpus / "json", shards[0])
    shards[1].mkdir()
    for name in ("_encoded_words.py", "errors.py", "charset.py"):
        shutil.copy(code_corpus / "email" / name, shards[1] / name)
    tokenized = [tokenize_corpus(corpus_spec(str(shard), glob="*.py"), smollm2, progress=False) for shard in shards]
    shard_counts(tokenized[0], PARAMS.levels, smollm2.vocab_size)  # counted earlier, by DuckDB
    flags = ["--glob", "*.py", "--budget", "300rows", "--max-context", "1", "--max-depth", "1", "--top-c", "4"]
    spark_conf = {
        "spark.executor.memory": "512m",
        "spark.executor.cores": "1",
        "spark.driver.memory": "768m",
        "spark.sql.shuffle.partitions": "2",
        "spark.locality.wait": "0",  # tiny tasks: never hold one back for a busy executor's cached block
    }
    for key, value in spark_conf.items():
        flags += ["--spark-conf", f"{key}={value}"]
    command = [sys.executable, "-m", "crest_cli", "build", "--engine", "spark", "--master", url, "--quiet"]
    command += ["--corpus", str(shards[0]), "--add-shard", str(shards[1]), "--output", str(tmp_path / "spark.duckdb")]
    with ListeningSockets() as sockets:
        result = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stderr == ""  # --quiet: none of Spark's start-up lines or warnings
    assert result.stdout.startswith("published ") and "WARN" not in result.stdout

    # Both workers ran an executor of the build, and nothing of ours listened beyond loopback.
    assert all(any(work_dir.glob("app-*/*/stderr")) for work_dir in work_dirs)
    assert (
        len({pid for _, _, name, pid in sockets.seen if name == "java"}) >= 6
    )  # master, 2 workers, 2 executors, driver
    assert sockets.not_loopback() == []
    assert shard_counts_path(tokenized[1], PARAMS.levels).is_dir()  # the new shard, counted by Spark

    union = tmp_path / "union"
    for shard in shards:
        shutil.copytree(shard, union / shard.name)
    build_store(corpus_spec(str(union), glob="*.py"), "smollm2", tmp_path / "duckdb.duckdb", PARAMS, progress=False)
    stores = {}
    for engine in ("spark", "duckdb"):
        with open_store(tmp_path / f"{engine}.duckdb") as connection:
            stores[engine] = connection.execute("SELECT * FROM drafts ORDER BY context").fetchall()
    assert len(stores["spark"]) == 300 and stores["spark"] == stores["duckdb"]
