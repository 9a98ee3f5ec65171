"""`crest eval` end to end on a small slice (real SmolLM2, real stores), and the claims arithmetic."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import crest_cli
from crest_cli.evaluation.args import output_folder
from crest_cli.evaluation.report import AblationStep, ResultRow, claims_for, markdown_report
from crest_cli.main import main, parser


@pytest.fixture(scope="module")
def chat_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Assistant-style answers, one JSON line each (the shape MT-Bench answers take)."""
    path = tmp_path_factory.mktemp("chat") / "answers.jsonl"
    answers = [
        f"Sure! Here are {n} tips to improve your writing: 1. Read widely. 2. Write every day. "
        f"3. Ask for feedback. In summary, practice is the key to becoming a better writer."
        for n in range(3, 40)
    ] + [
        f"I'm sorry, but I cannot help with request number {n}. Is there anything else I can help you with?"
        for n in range(40)
    ]
    path.write_text("\n".join(json.dumps({"text": answer}) for answer in answers))
    return path


def test_eval_runs_end_to_end_on_a_slice(code_corpus: Path, chat_corpus: Path, tmp_path: Path, capsys):
    status = main(
        [
            "eval",
            "--prompts",
            "2",
            "--max-new-tokens",
            "24",
            "--fractions",
            "0.5,1",
            "--budgets",
            "1MB",
            "--suites",
            "humaneval,mtbench",
            "--variants",
            "ours,gain,authors",
            "--code-corpus",
            str(code_corpus),
            "--chat-corpus",
            str(chat_corpus),
            "--ablation-budget",
            "1MB",
            "--real-check",
            "1",
            "--output-dir",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert status == 0
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["suite"], r["system"]) for r in rows} == {
        ("humaneval", "REST"),
        ("humaneval", "CREST"),
        ("mtbench", "REST"),
        ("mtbench", "CREST"),
    }
    # per suite: 2 REST fractions, ours, the gain rule, the authors' store counted two ways
    assert len(rows) == 2 * (2 + 1 + 1 + 2)
    for row in rows:
        assert 1.0 <= float(row["accepted_length"]) <= 24.0
        pickled = row["line"].endswith("[LZMA pickles]")
        assert 0 < int(row["storage_bytes"]) and (pickled or int(row["storage_bytes"]) <= int(row["file_bytes"]))
        if row["line"].startswith("CREST, ours"):
            assert set(row["lookup"].split("/")) <= {"scored", "longest", "merged", "chained"}
            assert (
                row["accepted_scored"]
                and row["accepted_longest"]
                and row["accepted_merged"]
                and row["accepted_chained"]
            )
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- eval:begin -->" in results and "### HumanEval" in results and "### MT-Bench" in results
    # the ablation: every step of each suite, one row each, at the ablation's budget
    ablation = results.split("one difference at a time", 1)[1].split("### Replay vs real decoding", 1)[0]
    steps = [line.split(" | ") for line in ablation.splitlines() if line[:3] in {f"| {n}" for n in range(1, 10)}]
    assert len(steps) == 2 * 10 and ["| 2", "without REST's cut of the trees", "longest"] == steps[1][:3]
    assert all(1.0 <= float(step[4]) <= 24.0 for step in steps)
    assert steps[0][5] == steps[10][5] == " |"  # each suite's first row compares with none
    assert steps[1][5].endswith("vs row 1 |") and steps[17][5].endswith("vs row 5 |")
    assert ["| 9", "the merged lookup instead of longest match", "merged"] == steps[18][:3]
    # Real decoding checked the largest REST store and the first CREST line's store, on each suite.
    assert "4 of 4 checked decodings took exactly the replayed number" in results
    assert "### HumanEval" in capsys.readouterr().out


def row(system: str, line: str, storage: int, accepted: float) -> ResultRow:
    return ResultRow(
        "suite", system, line, "", storage, storage, accepted, "longest", None, accepted, None, None, 0.0, 0.0
    )


def test_claims_compare_at_rest_full_corpus_and_at_equal_storage():
    rows = [
        row("REST", "REST", 1_000_000, 1.2),
        row("REST", "REST", 10_000_000, 1.4),
        row("REST", "REST", 300_000_000, 1.6),
        row("CREST", "good", 500_000, 1.3),
        row("CREST", "good", 5_000_000, 1.7),
        row("CREST", "weak", 2_000_000, 1.1),
        row("CREST", "weak", 20_000_000, 1.3),
    ]
    full, claims = claims_for(rows)
    assert full.accepted_length == 1.6
    good, weak = claims
    assert good.matching_bytes == 5_000_000 and good.best_at_thirtieth == 1.7
    ((at, gain),) = good.equal_storage_gains
    assert at == 1_000_000 and gain == pytest.approx((1.3 + 0.4 * 0.30103) / 1.2 - 1, rel=1e-6)
    assert weak.matching_bytes is None and weak.best_at_thirtieth == 1.1
    assert [b for b, _ in weak.equal_storage_gains] == [10_000_000]
    assert weak.equal_storage_gains[0][1] == pytest.approx((1.1 + 0.2 * 0.69897) / 1.4 - 1, rel=1e-6)


def test_claims_report_the_largest_step_down_in_budget():
    rows = [row("REST", "REST", 10_000_000, 1.2)] + [
        row("CREST", "line", size, accepted)
        for size, accepted in ((1_000_000, 1.40), (2_000_000, 1.50), (4_000_000, 1.46), (8_000_000, 1.52))
    ]
    (claim,) = claims_for(rows)[1]
    assert claim.largest_step_down == pytest.approx(0.04)


def test_each_half_is_scored_with_the_lookup_chosen_on_the_other():
    from pathlib import Path

    from crest_cli.evaluation.measure import Acceptance
    from crest_cli.evaluation.run import _rows
    from crest_cli.evaluation.store_points import StorePoint
    from decoder.replay import Replay

    def acceptance(steps_per_prompt: list[int]) -> Acceptance:
        replays = [Replay(tokens=10, steps=steps, drafted=0) for steps in steps_per_prompt]
        tokens, forwards = 10 * len(replays), sum(steps + 1 for steps in steps_per_prompt)
        return Acceptance(tokens / forwards, tokens, forwards, 0.0, replays)

    store = StorePoint("CREST", "line", "1 MB", Path("s.duckdb"), 1, 1, 0.0, ("scored", "longest"))
    # prompts 0-1 form half 0, prompts 2-3 half 1; scored wins on half 0, longest on half 1
    replayed = {
        (store.path, "scored"): acceptance([4, 4, 9, 9]),
        (store.path, "longest"): acceptance([6, 6, 7, 7]),
    }
    (result,) = _rows("suite", [store], replayed, ([0, 1], [2, 3]))
    # half 0 is scored with longest (chosen on half 1), half 1 with scored (chosen on half 0)
    assert result.lookup == "longest/scored"
    assert result.accepted_length == pytest.approx(40 / (7 + 7 + 10 + 10))
    assert result.accepted_scored == pytest.approx(40 / (5 + 5 + 10 + 10))
    assert result.accepted_longest == pytest.approx(40 / (7 + 7 + 8 + 8))


def test_the_shape_choice_line_scores_each_half_with_the_shape_chosen_on_the_other():
    from pathlib import Path

    from crest_cli.evaluation.measure import Acceptance
    from crest_cli.evaluation.run import _shape_choice_rows
    from crest_cli.evaluation.store_points import SHAPE_CHOICE, VARIANTS, StorePoint
    from decoder.replay import Replay

    def acceptance(steps_per_prompt: list[int]) -> Acceptance:
        replays = [Replay(tokens=10, steps=steps, drafted=0) for steps in steps_per_prompt]
        tokens, forwards = 10 * len(replays), sum(steps + 1 for steps in steps_per_prompt)
        return Acceptance(tokens / forwards, tokens, forwards, 0.0, replays)

    stores = [
        StorePoint(
            "CREST", VARIANTS[name].line, "2 MB", Path(f"{name}.duckdb"), 2_000_000, size, 0.0, ("merged", "chained")
        )
        for name, size in zip(SHAPE_CHOICE.members, (1_500_000, 1_600_000, 1_700_000, 1_800_000))
    ]
    # every option takes 9 steps a prompt, but for two: the first shape chained wins on half 0 (prompts
    # 0-1), the second shape merged on half 1 (prompts 2-3)
    replayed = {(store.path, lookup): acceptance([9, 9, 9, 9]) for store in stores for lookup in ("merged", "chained")}
    replayed[stores[0].path, "chained"] = acceptance([5, 5, 8, 8])
    replayed[stores[1].path, "merged"] = acceptance([8, 8, 4, 4])
    # a budget where one shape is missing has no row
    lonely = StorePoint("CREST", VARIANTS["raw"].line, "4 MB", Path("raw-4.duckdb"), 4_000_000, 3_000_000, 0.0)
    (row,) = _shape_choice_rows("suite", [*stores, lonely], replayed, ([0, 1], [2, 3]))
    assert row.line == SHAPE_CHOICE.line and row.setting == "2 MB"
    # half 0 is scored with the second shape merged (chosen on half 1), half 1 with the first chained
    assert row.lookup == f"{SHAPE_CHOICE.members[1]} merged/{SHAPE_CHOICE.members[0]} chained"
    assert row.accepted_length == pytest.approx(40 / (9 + 9 + 9 + 9))
    assert row.storage_bytes == 1_600_000  # the larger of the two picks


def test_a_reduced_run_says_what_it_compared():
    rows = [
        ResultRow(
            "suite", "REST", "REST", "0.3%", 1_000_000, 1_000_000, 1.2, "longest", None, 1.2, None, None, 0.0, 0.0
        ),
        ResultRow("suite", "REST", "REST", "1%", 3_000_000, 3_000_000, 1.3, "longest", None, 1.3, None, None, 0.0, 0.0),
        ResultRow(
            "suite", "CREST", "big", "8 MB", 5_400_000, 5_400_000, 1.4, "longest", None, 1.4, None, None, 0.0, 0.0
        ),
    ]
    report = markdown_report(rows, [], [], {}, "setup", "plot.png", "rows.csv")
    assert "REST on 1% of the corpus (this run's largest REST): accepted length 1.300" in report
    assert "reaches the accepted length of REST on 1% of the corpus" in report and "1.8x more storage" in report
    assert "whole corpus" not in report and "less storage" not in report


def test_eval_writes_the_checkout_docs_only_when_asked(crest_cache: Path, tmp_path: Path):
    def folder(*flags: str) -> Path:
        return output_folder(parser().parse_args(["eval", *flags]))

    checkout_docs = Path(crest_cli.__file__).resolve().parent.parent / "docs"
    assert folder() == crest_cache / "eval" / "results"
    assert folder("--write-docs") == checkout_docs
    assert folder("--output-dir", str(tmp_path)) == tmp_path
    with pytest.raises(SystemExit):
        folder("--write-docs", "--output-dir", str(tmp_path))


def test_each_ablation_step_is_compared_with_the_row_it_names():
    steps = [
        AblationStep("suite", "first", "a", "longest", 1_000_000, 1.50, None),
        AblationStep("suite", "second", "b", "longest", 1_000_000, 1.20, 1),
        AblationStep("suite", "third", "c", "scored", 1_000_000, 1.65, 1),
    ]
    rows = [
        ResultRow(
            "suite", "REST", "REST", "100%", 2_000_000, 2_000_000, 1.1, "longest", None, 1.1, None, None, 0.0, 0.0
        )
    ]
    report = markdown_report(rows, steps, [], {}, "setup", "plot.png", "rows.csv")
    assert "| 1 | first | longest | 1.0 MB | 1.500 |  |" in report
    assert "| 2 | second | longest | 1.0 MB | 1.200 | -20.0% vs row 1 |" in report
    assert "| 3 | third | scored | 1.0 MB | 1.650 | +10.0% vs row 1 |" in report


def test_online_eval_learns_only_after_each_prompt(code_corpus: Path, chat_corpus: Path, tmp_path: Path):
    """One HumanEval prompt: nothing learned before it, so the learning store equals the static one;
    one MT-Bench question: both turns replayed, the second after learning the first's output."""
    arguments = ["eval", "--online", "--prompts", "1", "--max-new-tokens", "24", "--output-dir", str(tmp_path)]
    arguments += ["--code-corpus", str(code_corpus), "--chat-corpus", str(chat_corpus), "--quiet"]
    assert main(arguments) == 0
    results = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- online:begin -->" in results
    assert "| humaneval-python" not in results  # the default suites' large-corpus twin has no learning line
    rows = {
        cells[0]: cells
        for line in results.splitlines()
        if line.startswith("| humaneval") or line.startswith("| mtbench")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    static, learning, static_lookup, learning_lookup = (float(v) for v in rows["humaneval"][3:7])
    assert rows["humaneval"][2] == "1" and (learning, learning_lookup) == (static, static_lookup)
    assert 1.0 <= static <= 24.0 and 1.0 <= static_lookup <= 24.0
    assert rows["mtbench"][2] == "2" and int(rows["mtbench"][-1].replace(",", "")) > 0  # learned contexts
