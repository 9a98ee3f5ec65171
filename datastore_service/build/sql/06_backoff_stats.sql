-- The smoothed trees in the shape 08 and 09 read (06_rank_nodes.sql makes it for raw trees).
-- A store keeps probabilities as counts over a denominator (probability = count / context_count).
-- Smoothed probabilities are not ratios of integers, so each tree gets a denominator of its
-- effective count (06_backoff_level.sql) times the smallest power of two that lifts it to at least
-- $resolution, and each node the nearest integer count at or above 1: 1/$resolution precision
-- or better. Without smoothing ($strength = 0) the denominator is the context's count and the
-- counts are the raw counts.
-- Input : smoothed_nodes, smoothed_contexts
-- Output: ranked_nodes(context_key, node_key, parent_key, token, count, node)   node = rank, from 0,
--                    node_key = node, parent_key = the parent's rank (NULL: the context)
--         tree_stats(context_key, context_count, denominator, nodes, expected_accepted,
--                    accepted_count, added_count)
--                    context_count = occurrences; expected_accepted = sum(count) / denominator;
--                    accepted_count = context_count * expected_accepted; added_count = what the tree
--                    adds over the back-off tree where the context occurs, in accepted tokens
CREATE OR REPLACE TEMP TABLE tree_denominators AS
SELECT
    context_key, context_count, backoff_expected,
    CASE WHEN $strength = 0 THEN context_count::DOUBLE
         ELSE round(effective_count * pow(2, greatest(0, ceil(log2($resolution / effective_count)))))
    END AS denominator
FROM smoothed_contexts;

CREATE OR REPLACE TEMP TABLE ranked_nodes AS
WITH ranked AS (
    SELECT
        nodes.context_key, nodes.node_key AS name, nodes.parent_key AS parent_name, nodes.depth, nodes.token,
        greatest(1, round(nodes.probability * tree.denominator))::BIGINT AS count,
        row_number() OVER (PARTITION BY nodes.context_key ORDER BY nodes.probability DESC, nodes.depth, nodes.node_key) - 1
                                                                          AS node
    FROM smoothed_nodes AS nodes
    JOIN tree_denominators AS tree USING (context_key)
)
-- node names are unique per depth only: key the nodes by rank, which 09 joins parents on
SELECT child.context_key, child.node AS node_key, parent.node AS parent_key, child.token, child.count, child.node
FROM ranked AS child
LEFT JOIN ranked AS parent
  ON parent.context_key = child.context_key AND parent.depth = child.depth - 1 AND parent.name = child.parent_name;

CREATE OR REPLACE TEMP TABLE tree_stats AS
SELECT
    nodes.context_key,
    any_value(tree.context_count)                                            AS context_count,
    any_value(tree.denominator)::BIGINT                                      AS denominator,
    count(*)                                                                 AS nodes,
    (sum(nodes.count) / any_value(tree.denominator))::FLOAT                  AS expected_accepted,
    any_value(tree.context_count) * sum(nodes.count) / any_value(tree.denominator) AS accepted_count,
    any_value(tree.context_count) * greatest(0, sum(nodes.count) / any_value(tree.denominator)
                                                - any_value(tree.backoff_expected)) AS added_count
FROM ranked_nodes AS nodes
JOIN tree_denominators AS tree USING (context_key)
GROUP BY nodes.context_key;
