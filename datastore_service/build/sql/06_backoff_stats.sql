-- What 08 ranks the smoothed trees by (06_rank_nodes.sql makes it for raw trees).
-- A store keeps probabilities as counts over a denominator (probability = count / context_count).
-- Smoothed probabilities are not ratios of integers, so each tree gets a denominator of its
-- effective count (06_backoff_level.sql) times the smallest power of two that lifts it to at least
-- $resolution, and each node the nearest integer count at or above 1: 1/$resolution precision
-- or better. Without smoothing ($strength = 0) the denominator is the context's count and the
-- counts are the raw counts.
-- Input : smoothed_nodes, smoothed_contexts
-- Output: tree_denominators(context_key, denominator)
--         tree_stats(context_key, context_count, denominator, nodes, expected_accepted,
--                    accepted_count, added_count)
--                    context_count = occurrences; expected_accepted = sum(count) / denominator;
--                    accepted_count = context_count * expected_accepted; added_count = what the tree
--                    adds over the back-off tree where the context occurs, in accepted tokens
--         (the nodes themselves, as ranked_nodes, only for the contexts a store may keep: 09_backoff_nodes.sql)
CREATE OR REPLACE TEMP TABLE tree_denominators AS
SELECT
    context_key,
    CASE WHEN $strength = 0 THEN context_count::DOUBLE
         ELSE round(effective_count * pow(2, greatest(0, ceil(log2($resolution / effective_count)))))
    END AS denominator
FROM smoothed_contexts;

CREATE OR REPLACE TEMP TABLE tree_stats AS
WITH sums AS (
    SELECT
        nodes.context_key,
        count(*)                                                                 AS nodes,
        sum(greatest(1, round(nodes.probability * tree.denominator)))            AS counted,
        any_value(tree.denominator)                                              AS denominator
    FROM smoothed_nodes AS nodes
    JOIN tree_denominators AS tree USING (context_key)
    GROUP BY nodes.context_key
)
SELECT
    sums.context_key,
    context.context_count,
    sums.denominator::BIGINT                                                   AS denominator,
    sums.nodes,
    (sums.counted / sums.denominator)::FLOAT                                   AS expected_accepted,
    context.context_count * sums.counted / sums.denominator                    AS accepted_count,
    context.context_count * greatest(0, sums.counted / sums.denominator - context.backoff_expected) AS added_count
FROM sums
JOIN smoothed_contexts AS context USING (context_key);
