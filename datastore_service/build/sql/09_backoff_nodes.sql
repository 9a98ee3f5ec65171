-- The nodes of the smoothed trees a store may keep, in the shape 09_compact_drafts.sql reads.
-- Input : smoothed_nodes, tree_denominators (06_backoff_stats.sql), ranked_contexts (08)
-- Output: ranked_nodes(context_key, node_key, parent_key, token, count, node) for the contexts of
--         priority <= $max_priority: node = rank from 0 (probability, then depth, then name), count =
--         probability in units of the tree's denominator; node names are unique per depth only, so
--         node_key = node and parent_key = the parent's rank (NULL: the context), which 09 joins on.
CREATE OR REPLACE TEMP TABLE ranked_nodes AS
WITH ranked AS (
    SELECT
        nodes.context_key, nodes.node_key AS name, nodes.parent_key AS parent_name, nodes.depth, nodes.token,
        greatest(1, round(nodes.probability * tree.denominator))::BIGINT AS count,
        row_number() OVER (PARTITION BY nodes.context_key ORDER BY nodes.probability DESC, nodes.depth, nodes.node_key) - 1
                                                                          AS node
    FROM smoothed_nodes AS nodes
    JOIN tree_denominators AS tree USING (context_key)
    JOIN ranked_contexts AS kept USING (context_key)
    WHERE kept.priority <= $max_priority
)
SELECT child.context_key, child.node AS node_key, parent.node AS parent_key, child.token, child.count, child.node
FROM ranked AS child
LEFT JOIN ranked AS parent
  ON parent.context_key = child.context_key AND parent.depth = child.depth - 1 AND parent.name = child.parent_name;
