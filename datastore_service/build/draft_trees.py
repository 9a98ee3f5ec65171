"""From the n-gram prefix tree to one precomputed draft tree per context.

A context c of length n drafts with the n-grams that extend it: the node for continuation p is
the n-gram c+p, its count is how often p followed c. Per context, the `top_c` best nodes form the
tree (see sql/06_rank_nodes.sql for the ranking that keeps it prefix-closed).

With back-off (`backoff` > 0, sql/06_backoff_*.sql), a context's tree is instead the `top_c`
likeliest paths of a mix of its own counts and the smoothed tree of its suffix one token shorter,
weighted by how much the context's counts can be trusted: a rare context's tree is mostly its
suffix's, so it can't be worse than that tree where it occurs. Built from the empty context up.

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
CREATE_NGRAM_LINKS = """
CREATE OR REPLACE TEMP TABLE ngram_links (
    level TINYINT, gid BIGINT, parent BIGINT, token INTEGER, count BIGINT, suffix_gid BIGINT, first_token INTEGER
)
"""
CREATE_SMOOTHED_CONTEXTS = """
CREATE OR REPLACE TEMP TABLE smoothed_contexts (
    context_key BIGINT, context_count BIGINT, effective_count DOUBLE, backoff_expected DOUBLE
)
"""
# Smoothed probabilities are stored as counts over a denominator of at least this (06_backoff_stats.sql).
PROBABILITY_RESOLUTION = 256
GID_MASK = (1 << 56) - 1  # a node key is (level << 56) | gid


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
    if params.smoothed:
        _smooth_trees(connection, params, progress)
    else:
        run_sql(connection, "06_rank_nodes.sql", {"top_c": params.top_c})
    connection.execute("DROP TABLE tree_candidates; DROP TABLE context_floors")
    connection.execute(CREATE_CONTEXT_TOKENS)
    for level in range(1, params.max_context + 1):
        run_sql(connection, "07_context_tokens.sql", {"level": level})


def _smooth_trees(connection: SqlConnection, params: BuildParams, progress: bool) -> None:
    """`ranked_nodes` and `tree_stats` from the back-off pass, shortest contexts first."""
    connection.execute(CREATE_NGRAM_LINKS)
    for level in tqdm(range(1, params.levels + 1), desc="suffix links", unit="level", disable=not progress):
        run_sql(connection, "06_backoff_links.sql", {"level": level})
    run_sql(connection, "06_backoff_root.sql", {"max_depth": params.max_depth, "top_c": params.top_c})
    connection.execute(CREATE_SMOOTHED_CONTEXTS)
    for length in tqdm(range(1, params.max_context + 1), desc="back-off trees", unit="length", disable=not progress):
        run_sql(
            connection,
            "06_backoff_level.sql",
            {
                "context_length": length,
                "strength": params.backoff,
                "top_c": params.top_c,
                "max_depth": params.max_depth,
                "min_probability": params.min_probability,
                "gid_mask": GID_MASK,
            },
        )
    run_sql(connection, "06_backoff_stats.sql", {"strength": params.backoff, "resolution": PROBABILITY_RESOLUTION})
    # smoothed_nodes and tree_denominators stay: the kept trees' nodes are ranked once the contexts are
    connection.execute(
        "DROP TABLE ngram_links; DROP TABLE smoothed_contexts; DROP TABLE level_contexts; "
        "DROP TABLE level_backoff; DROP TABLE level_candidates; DROP TABLE level_ranked"
    )
