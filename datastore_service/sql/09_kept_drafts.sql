-- The drafts a store keeps: the first $kept contexts of the policy's order, as stored rows.
-- Input : ranked_contexts, ranked_nodes, tree_stats, context_tokens
-- Output: kept_drafts(context, context_count, expected_accepted, tokens, parents, counts)
--         sorted by context; arrays in rank order; parents index into the same arrays
--         (-1 = the context itself).
CREATE OR REPLACE TEMP TABLE kept_drafts AS
WITH kept_nodes AS (
    SELECT nodes.*
    FROM ranked_nodes AS nodes
    SEMI JOIN ranked_contexts AS ranked
      ON ranked.context_key = nodes.context_key AND ranked.priority <= $kept
),
trees AS (
    SELECT
        child.context_key,
        list(child.token ORDER BY child.node)                         AS tokens,
        list(coalesce(parent.node, -1)::SMALLINT ORDER BY child.node) AS parents,
        list(child.count ORDER BY child.node)                         AS counts
    FROM kept_nodes AS child
    LEFT JOIN kept_nodes AS parent
      ON parent.context_key = child.context_key AND parent.node_key = child.parent_key
    GROUP BY child.context_key
)
SELECT tokens_of.context, stats.context_count, stats.expected_accepted, trees.tokens, trees.parents, trees.counts
FROM trees
JOIN tree_stats AS stats USING (context_key)
JOIN context_tokens AS tokens_of USING (context_key)
ORDER BY tokens_of.context;
