-- Token lists of the contexts, one level at a time (run for level = 1 .. max_context).
-- Input : ngrams
-- Output: context_tokens(level, context_key, context) gains the level-$level n-grams
INSERT INTO context_tokens
SELECT
    node.level,
    (node.level::BIGINT << 56) | node.gid,
    list_append(coalesce(prefix.context, []::INTEGER[]), node.token)
FROM ngrams AS node
LEFT JOIN context_tokens AS prefix
  ON prefix.level = $level - 1 AND prefix.context_key = ((node.level - 1)::BIGINT << 56) | node.parent
WHERE node.level = $level;
