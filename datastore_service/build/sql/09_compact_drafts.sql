-- The compact table: the candidate contexts a store may keep (priority <= $max_priority) with their
-- draft trees as stored arrays, in the selection policy's order. A store keeps the rows with
-- priority <= its cut (store_writer.py); the Spark build writes this table as Parquet and the
-- writer loads it.
-- Input : ranked_contexts, ranked_nodes, tree_stats, context_tokens
-- Output: compact_drafts(priority, cumulative_bytes, context, context_count, expected_accepted,
--         tokens, parents, counts)   one row per context; arrays in rank order;
--         parents index into the same arrays (-1 = the context itself); context_count is the
--         denominator of the counts (tree_stats.denominator), so count / context_count is each node's
--         probability, smoothed or not.
CREATE OR REPLACE TEMP TABLE compact_drafts AS
WITH trees AS (
    SELECT
        child.context_key,
        list(child.token ORDER BY child.node)                         AS tokens,
        list(coalesce(parent.node, -1)::SMALLINT ORDER BY child.node) AS parents,
        list(child.count ORDER BY child.node)                         AS counts
    FROM ranked_nodes AS child
    JOIN ranked_contexts AS kept ON kept.context_key = child.context_key AND kept.priority <= $max_priority
    LEFT JOIN ranked_nodes AS parent
      ON parent.context_key = child.context_key AND parent.node_key = child.parent_key
    GROUP BY child.context_key
)
SELECT
    ranked.priority, ranked.cumulative_bytes,
    tokens_of.context, stats.denominator AS context_count, stats.expected_accepted, trees.tokens, trees.parents, trees.counts
FROM ranked_contexts AS ranked
JOIN trees USING (context_key)
JOIN tree_stats AS stats USING (context_key)
JOIN context_tokens AS tokens_of USING (context_key);
