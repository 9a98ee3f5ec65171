"""Create the store tables: store_info (one row of metadata), vocab, drafts.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

CREATE_STORE_INFO = """
CREATE TABLE store_info (
    store_version          VARCHAR NOT NULL,   -- unique id of this published build
    crest_version          VARCHAR NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL,
    tokenizer_name         VARCHAR NOT NULL,
    tokenizer_fingerprint  VARCHAR NOT NULL,   -- sha256 of the vocabulary in id order
    vocab_size             INTEGER NOT NULL,
    corpus_name            VARCHAR NOT NULL,
    corpus_fingerprint     VARCHAR NOT NULL,   -- sha256 of the documents' text
    corpus_documents       BIGINT NOT NULL,
    corpus_tokens          BIGINT NOT NULL,
    max_context            TINYINT NOT NULL,   -- longest stored context (tokens)
    max_depth              TINYINT NOT NULL,   -- deepest draft node (tokens after the context)
    policy                 VARCHAR NOT NULL,   -- context selection policy
    contexts_kept          BIGINT NOT NULL,    -- rows of drafts
    nodes_kept             BIGINT NOT NULL,
    build_params           JSON NOT NULL       -- every build flag, for reproduction
)
"""

CREATE_VOCAB = """
CREATE TABLE vocab (
    token_id  INTEGER NOT NULL,
    piece     VARCHAR NOT NULL     -- the text the token decodes to on its own
)
"""

# One row per stored context, sorted by context. Nodes are ranked best first (count desc, then
# depth, then token sequence), so every prefix of the arrays is itself a valid draft tree.
CREATE_DRAFTS = """
CREATE TABLE drafts (
    context            INTEGER[] NOT NULL,   -- context tokens, oldest first
    context_count      BIGINT NOT NULL,      -- occurrences of the context in the corpus
    expected_accepted  FLOAT NOT NULL,       -- sum(counts) / context_count: expected accepted draft tokens
    tokens             INTEGER[] NOT NULL,   -- draft node tokens
    parents            SMALLINT[] NOT NULL,  -- index of each node's parent in these arrays; -1 = the context
    counts             BIGINT[] NOT NULL     -- occurrences of context + path to the node
)
"""


def upgrade() -> None:
    op.execute(CREATE_STORE_INFO)
    op.execute(CREATE_VOCAB)
    op.execute(CREATE_DRAFTS)


def downgrade() -> None:
    op.execute("DROP TABLE drafts")
    op.execute("DROP TABLE vocab")
    op.execute("DROP TABLE store_info")
