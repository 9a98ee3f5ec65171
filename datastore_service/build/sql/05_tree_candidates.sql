-- Candidate draft nodes, one level at a time (run for level = 1 .. max_context + max_depth).
-- Input : ngrams(level, gid, parent, token, count), context_floors
-- Output: tree_candidates gains, for every level-$level n-gram, one row per context it can be a
--         draft node of: each of its prefixes of length 1..max_context at most $max_depth tokens
--         shorter, and itself (depth 0) when $level <= $max_context. Skipped, with their subtrees:
--         nodes whose probability (count / context_count) is below $min_probability, and nodes
--         below depth 1 whose count is at or below the context's floor (see 04_context_floors.sql).
-- An n-gram's key is (level << 56) | gid: unique, and ordered by (level, token sequence).
INSERT INTO tree_candidates
SELECT
    node.level,
    (node.level::BIGINT << 56) | node.gid   AS node_key,
    context.node_key                        AS parent_key,
    node.token,
    node.count,
    context.context_key,
    context.context_count,
    context.context_floor,
    context.depth + 1                       AS depth
FROM ngrams AS node
JOIN tree_candidates AS context
  ON context.level = $level - 1 AND context.node_key = ((node.level - 1)::BIGINT << 56) | node.parent
WHERE node.level = $level
  AND context.depth < $max_depth
  AND node.count >= $min_probability * context.context_count
  AND (context.depth = 0 OR node.count > context.context_floor)
UNION ALL
SELECT
    level, (level::BIGINT << 56) | gid, NULL, token, count,
    (level::BIGINT << 56) | gid, count, coalesce(floors.floor, 0), 0
FROM ngrams
LEFT JOIN context_floors AS floors ON floors.context_key = (level::BIGINT << 56) | gid
WHERE level = $level AND level <= $max_context;
