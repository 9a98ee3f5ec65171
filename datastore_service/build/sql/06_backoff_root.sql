-- The back-off tree of the empty context: what follows any position, the base of every back-off.
-- Input : ngrams
-- Output: smoothed_nodes(context_key, node_key, parent_key, token, depth, probability) created with
--         the empty context's tree (context_key 0): the $top_c most frequent n-grams of at most
--         $max_depth tokens, each a path from the root, with probability count / (counted tokens).
--         Ranked by count, then depth, then token sequence, so it is prefix-closed.
-- node_key and parent_key name a node by the n-gram that realizes it: here the path itself.
CREATE OR REPLACE TEMP TABLE smoothed_nodes AS
WITH counted AS (
    SELECT sum(count)::DOUBLE AS tokens FROM ngrams WHERE level = 1
)
SELECT
    0::BIGINT                                                                   AS context_key,
    (level::BIGINT << 56) | gid                                                 AS node_key,
    CASE WHEN level = 1 THEN NULL ELSE ((level - 1)::BIGINT << 56) | parent END AS parent_key,
    token,
    level::TINYINT                                                              AS depth,
    count / counted.tokens                                                      AS probability
FROM ngrams, counted
WHERE level <= $max_depth
QUALIFY row_number() OVER (ORDER BY count DESC, level, gid) <= $top_c;
