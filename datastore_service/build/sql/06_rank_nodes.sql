-- Draft trees: per context, the $top_c best nodes, ranked by count (desc), then depth, then token
-- sequence (node_key order). A node never outranks its parent (its count is no larger and it is
-- deeper), so every prefix of the ranking is a prefix-closed tree: REST's trie rule with a
-- reproducible tie-break.
-- Input : tree_candidates
-- Output: ranked_nodes(context_key, node_key, parent_key, token, count, node)   node = rank, from 0
--         tree_stats(context_key, context_count, denominator, nodes, expected_accepted, accepted_count)
--                    one row per tree; denominator = context_count (probability = count / context_count);
--                    accepted_count = context_count * expected_accepted, exactly
CREATE OR REPLACE TEMP TABLE ranked_nodes AS
SELECT
    context_key, context_count, node_key, parent_key, token, count,
    row_number() OVER (PARTITION BY context_key ORDER BY count DESC, node_key) - 1 AS node
FROM tree_candidates
WHERE depth > 0
QUALIFY node < $top_c;

CREATE OR REPLACE TEMP TABLE tree_stats AS
SELECT
    context_key,
    any_value(context_count)                               AS context_count,
    any_value(context_count)                               AS denominator,
    count(*)                                               AS nodes,
    -- expected accepted draft tokens = sum over nodes of P(the path to the node matches)
    (sum(count) / any_value(context_count))::FLOAT         AS expected_accepted,
    sum(count)::BIGINT                                     AS accepted_count,
    NULL::DOUBLE                                           AS added_count  -- priced by the back-off pass only
FROM ranked_nodes
GROUP BY context_key;
