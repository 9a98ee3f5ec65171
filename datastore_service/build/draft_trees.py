"""From the n-gram prefix tree to one precomputed draft tree per context.

A context c of length n drafts with the n-grams that extend it: the node for continuation p is
the n-gram c+p, its count is how often p followed c. Per context, the `top_c` best nodes form the
tree (see sql/06_rank_nodes.sql for the ranking that keeps it prefix-closed).

Result: temp tables `ranked_nodes` (the kept nodes of every tree, ranked), `tree_stats` (one row
per context with a non-empty tree) and `context_tokens` (the token list of every context). The
trees become arrays in the compact table (sql/09_compact_drafts.sql).
"""

from __future__ import annotations

from tqdm import tqdm

from datastore_service.build.params import BuildParams
from datastore_service.build.sql_files import SqlConnection, run_sql

CREATE_TREE_CANDIDATES = """
CREATE OR REPLACE TEMP TABLE tree_candidates (
    level TINYINT, node_key BIGINT, parent_key BIGINT, token INTEGER, count BIGINT,
    context_key BIGINT, context_count BIGINT, context_floor BIGINT, depth TINYINT
)
"""
CREATE_CONTEXT_TOKENS = (
    "CREATE OR REPLACE TEMP TABLE context_tokens (level TINYINT, context_key BIGINT, context INTEGER[])"
)


def build_candidate_trees(connection: SqlConnection, params: BuildParams, progress: bool = True) -> None:
    run_sql(connection, "04_context_floors.sql", {"max_context": params.max_context, "top_c": params.top_c})
    connection.execute(CREATE_TREE_CANDIDATES)
    for level in tqdm(range(1, params.levels + 1), desc="draft trees", unit="level", disable=not progress):
        run_sql(
            connection,
            "05_tree_candidates.sql",
            {
                "level": level,
                "max_context": params.max_context,
                "max_depth": params.max_depth,
                "min_probability": params.min_probability,
            },
        )
    run_sql(connection, "06_rank_nodes.sql", {"top_c": params.top_c})
    connection.execute("DROP TABLE tree_candidates; DROP TABLE context_floors")
    connection.execute(CREATE_CONTEXT_TOKENS)
    for level in range(1, params.max_context + 1):
        run_sql(connection, "07_context_tokens.sql", {"level": level})
