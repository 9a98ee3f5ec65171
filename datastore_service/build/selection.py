"""Selection policies: which contexts a store keeps first when the budget can't hold them all.

Each policy is an ORDER BY over `tree_stats` (see sql/08_rank_contexts.sql):

- `frequency` (the CREST paper): the most frequent contexts of each length, taken in turn from
  every length, i.e. the same top-t per length.
- `benefit`: accepted tokens saved per byte: how often the context occurs times how many draft
  tokens its tree is expected to get accepted, divided by what the tree costs on disk.
- `gain`: the accepted tokens a context adds per byte beyond what the tree of its suffix one token
  shorter already drafts where it occurs (tree_stats.added_count, sql/06_backoff_stats.sql). A
  context whose tree repeats its suffix's adds nothing and comes last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from datastore_service.build.sql_files import SqlConnection, run_sql
from datastore_service.sizes import Budget

POLICY_ORDER = {
    "frequency": "frequency_rank, context_level",
    # exact integer over integer-valued double: equal benefits tie exactly on every engine
    "benefit": "accepted_count / estimated_bytes DESC",
    "gain": "added_count / estimated_bytes DESC",
}


@dataclass(frozen=True)
class CostModel:
    """Bytes a tree adds to the published file, as a linear function of its node count."""

    bytes_per_context: float = 16.0
    bytes_per_node: float = 4.0


def rank_contexts(connection: SqlConnection, policy: str, cost: CostModel) -> int:
    """Create `ranked_contexts` (priority 1 = kept first); return how many candidate contexts there are."""
    run_sql(
        connection,
        "08_rank_contexts.sql",
        {"bytes_per_context": cost.bytes_per_context, "bytes_per_node": cost.bytes_per_node},
        policy_order=POLICY_ORDER[policy],
    )
    return connection.execute("SELECT count(*) FROM ranked_contexts").fetchall()[0][0]


# The writer corrects the cost model's guess by the real bytes per estimated byte of the file it
# wrote; contexts beyond this many times a budget by the guess are never kept.
ESTIMATE_SLACK = 4.0


def priority_limit(connection: SqlConnection, budgets: Sequence[Budget]) -> int:
    """The last priority a store within one of `budgets` may keep (all contexts without budgets)."""
    total = connection.execute("SELECT count(*) FROM ranked_contexts").fetchall()[0][0]
    if not budgets:
        return total
    limits = []
    for budget in budgets:
        if budget.rows is not None:
            limits.append(min(budget.rows, total))
        else:
            rows = connection.execute(
                "SELECT count(*) FROM ranked_contexts WHERE cumulative_bytes <= $bytes",
                {"bytes": ESTIMATE_SLACK * (budget.bytes or 0)},
            ).fetchall()
            limits.append(rows[0][0])
    return max(limits)


def contexts_within(connection: SqlConnection, estimated_bytes: float) -> int:
    """How many contexts, in priority order, fit in `estimated_bytes` by the cost model."""
    rows = connection.execute(
        "SELECT count(*) FROM compact_drafts WHERE cumulative_bytes <= $allowance", {"allowance": estimated_bytes}
    ).fetchall()
    return rows[0][0]


def estimated_bytes_of(connection: SqlConnection, kept: int) -> float:
    rows = connection.execute(
        "SELECT coalesce(max(cumulative_bytes), 0) FROM compact_drafts WHERE priority <= $kept", {"kept": kept}
    ).fetchall()
    return float(rows[0][0])
