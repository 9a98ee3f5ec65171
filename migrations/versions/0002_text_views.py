"""Add SQL helpers to read drafts as text: detokenize(), draft_paths(), contexts_text,
drafts_like(), drafts_text.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CREATE_DETOKENIZE = """
CREATE MACRO detokenize(ids) AS (
    SELECT coalesce(string_agg(v.piece, '' ORDER BY u.i), '')
    FROM (SELECT unnest(ids) AS token_id, generate_subscripts(ids, 1) AS i) AS u
    JOIN vocab AS v USING (token_id)
)
"""

CREATE_CONTEXTS_TEXT = """
CREATE VIEW contexts_text AS
SELECT
    detokenize(context)   AS context_text,
    len(context)          AS context_length,
    context_count,
    expected_accepted,
    len(tokens)           AS nodes,
    context
FROM drafts
"""

# The token path from the context to each node of a tree, in one pass (parents precede children).
CREATE_DRAFT_PATHS = """
CREATE MACRO draft_paths(tokens, parents) AS list_reduce(
    list_zip(tokens, parents),
    lambda paths, node: list_append(
        paths,
        CASE WHEN node[2] < 0 THEN [node[1]] ELSE list_append(paths[node[2] + 1], node[1]) END
    ),
    []::INTEGER[][]
)
"""

# One row per draft node of the contexts whose text is LIKE `pattern`; `continuation_text` is the
# path from the context to the node. The MATERIALIZED filter runs first, so only matching trees are
# expanded: fast for one context.
CREATE_DRAFTS_LIKE = """
CREATE MACRO drafts_like(pattern) AS TABLE
WITH matching AS MATERIALIZED (
    SELECT detokenize(context) AS context_text, *
    FROM drafts
    WHERE detokenize(context) LIKE pattern
),
with_paths AS (
    SELECT *, draft_paths(tokens, parents) AS paths FROM matching
),
nodes AS (
    SELECT
        context_text, context, context_count,
        unnest(range(len(paths))) AS node, unnest(paths) AS path, unnest(counts) AS count
    FROM with_paths
)
SELECT
    context_text,
    node,
    len(path)                 AS depth,
    detokenize(path)          AS continuation_text,
    count,
    count / context_count     AS probability,
    context,
    path
FROM nodes
"""

# Every node of every tree (expands all trees: seconds on a large store; filter with drafts_like).
CREATE_DRAFTS_TEXT = "CREATE VIEW drafts_text AS SELECT * FROM drafts_like('%')"


def upgrade() -> None:
    op.execute(CREATE_DETOKENIZE)
    op.execute(CREATE_CONTEXTS_TEXT)
    op.execute(CREATE_DRAFT_PATHS)
    op.execute(CREATE_DRAFTS_LIKE)
    op.execute(CREATE_DRAFTS_TEXT)


def downgrade() -> None:
    op.execute("DROP VIEW drafts_text")
    op.execute("DROP MACRO TABLE drafts_like")
    op.execute("DROP MACRO draft_paths")
    op.execute("DROP VIEW contexts_text")
    op.execute("DROP MACRO detokenize")
