"""End-to-end builds with the real SmolLM2 tokenizer into real DuckDB files."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from datastore_service.build.corpus import corpus_spec
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import StoreTarget, build_store, build_stores
from datastore_service.errors import BudgetError, CorpusError, CrestError
from datastore_service.sizes import Budget
from datastore_service.store.reader import open_store, read_store_info, resolve_store


def build(corpus: Path, output: Path, **params) -> object:
    return build_store(corpus_spec(str(corpus), glob="*.py"), "smollm2", output, BuildParams(**params), progress=False)


@pytest.fixture(scope="module")
def built(code_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("stores") / "code.duckdb"
    return build(code_corpus, output, budget=Budget(rows=10**9)), output


def test_store_holds_metadata_vocab_and_sorted_drafts(built, smollm2):
    summary, output = built
    info = read_store_info(output)
    assert info["tokenizer_fingerprint"] == smollm2.fingerprint
    assert info["vocab_size"] == 49_152 and info["corpus_tokens"] == summary.tokens > 100_000
    assert info["contexts_kept"] == summary.contexts_kept == summary.candidate_contexts
    assert info["build_params"]["max_depth"] == BuildParams().max_depth
    with open_store(output) as connection:
        assert connection.execute("SELECT count(*) FROM vocab").fetchall()[0][0] == 49_152
        contexts = [row[0] for row in connection.execute("SELECT context FROM drafts").fetchall()]
        assert contexts == sorted(contexts)
        bad = connection.execute(
            "SELECT count(*) FROM drafts WHERE len(tokens) <> len(parents) OR len(tokens) <> len(counts) "
            "OR len(context) > $n OR list_max(counts) > context_count",
            {"n": info["max_context"]},
        ).fetchall()[0][0]
        assert bad == 0


def test_drafts_read_as_text_with_plain_sql(built, smollm2):
    _, output = built
    with open_store(output) as connection:
        # the most common context, decoded by SQL and by the tokenizer, must agree
        context, text = connection.execute(
            "SELECT context, context_text FROM contexts_text ORDER BY context_count DESC LIMIT 1"
        ).fetchall()[0]
        assert text == "".join(smollm2.pieces()[t] for t in context)
        rows = connection.execute(
            "SELECT depth, continuation_text, probability FROM drafts_like($text) ORDER BY node",
            {"text": text},
        ).fetchall()
    assert rows and rows[0][0] == 1 and 0 < rows[0][2] <= 1
    assert all(later[2] <= earlier[2] for earlier, later in zip(rows, rows[1:]))


def test_byte_budget_is_honoured(code_corpus: Path, tmp_path: Path):
    budget = 1_000_000
    summary = build(code_corpus, tmp_path / "small.duckdb", budget=Budget(bytes=budget))
    size = resolve_store(tmp_path / "small.duckdb").stat().st_size
    assert size == summary.file_bytes <= 1.10 * budget
    assert 0 < summary.contexts_kept < summary.candidate_contexts


def test_row_budget_keeps_the_policy_order(code_corpus: Path, tmp_path: Path):
    summary = build(code_corpus, tmp_path / "rows.duckdb", budget=Budget(rows=500), policy="frequency")
    assert summary.contexts_kept == 500
    with open_store(tmp_path / "rows.duckdb") as connection:
        per_length = dict(connection.execute("SELECT len(context), count(*) FROM drafts GROUP BY 1").fetchall())
    # the paper's rule takes the same number of contexts from every length
    assert max(per_length.values()) - min(per_length.values()) <= 1


def test_budget_too_small_publishes_nothing(code_corpus: Path, tmp_path: Path):
    with pytest.raises(BudgetError, match="below the empty store"):
        build(code_corpus, tmp_path / "tiny.duckdb", budget=Budget(bytes=10_000))
    assert not (tmp_path / "tiny.duckdb").exists()
    assert not any((tmp_path / "tiny.duckdb.versions").iterdir())


def test_rebuild_publishes_a_new_version_and_keeps_readers_working(built, code_corpus: Path):
    _, output = built
    old_file = resolve_store(output)
    reader = duckdb.connect(str(old_file), read_only=True)
    build(code_corpus, output, budget=Budget(rows=100))
    assert resolve_store(output) != old_file
    assert reader.execute("SELECT count(*) FROM drafts").fetchall()[0][0] > 100  # old version still readable
    reader.close()
    assert read_store_info(output)["contexts_kept"] == 100


def test_other_tokenizer_is_refused(built, code_corpus: Path, tmp_path: Path):
    _, output = built
    other = tmp_path / "tok"
    other.mkdir()
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(other / "tokenizer.json"))
    with pytest.raises(CrestError, match="built with tokenizer 'smollm2'"):
        build_store(corpus_spec(str(code_corpus)), str(other), output, BuildParams(), progress=False)


def test_empty_corpus_is_refused(tmp_path: Path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "blank.txt").write_text("  \n")
    with pytest.raises(CorpusError, match="no non-empty document"):
        build(tmp_path / "corpus", tmp_path / "s.duckdb")


def test_one_count_many_stores_equal_separate_builds(code_corpus: Path, tmp_path: Path):
    spec = corpus_spec(str(code_corpus), glob="*.py")
    targets = [
        StoreTarget(tmp_path / "small-benefit.duckdb", Budget(rows=300), "benefit"),
        StoreTarget(tmp_path / "large-frequency.duckdb", Budget(rows=3000), "frequency"),
    ]
    summaries = build_stores(spec, "smollm2", BuildParams(), targets, progress=False)
    query = "SELECT context, context_count, tokens, parents, counts FROM drafts ORDER BY context"
    for target, summary in zip(targets, summaries):
        alone = build(code_corpus, tmp_path / f"alone-{target.output.name}", budget=target.budget, policy=target.policy)
        assert summary.contexts_kept == alone.contexts_kept == target.budget.rows
        with open_store(target.output) as together, open_store(alone.store) as separate:
            assert together.execute(query).fetchall() == separate.execute(query).fetchall()
        assert read_store_info(target.output)["policy"] == target.policy
