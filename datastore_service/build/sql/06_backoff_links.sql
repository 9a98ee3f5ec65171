-- Suffix links of the n-gram prefix tree, one level at a time (run for level = 1 .. levels).
-- Input : ngrams(level, gid, parent, token, count)
-- Output: ngram_links gains the level-$level n-grams, with
--         suffix_gid   the gid (at level $level - 1) of the n-gram without its first token; NULL at
--                      level 1. It always exists: the suffix occurs wherever the n-gram does, so it
--                      is at least as frequent.
--         first_token  the n-gram's first token.
--         (suffix_gid, first_token) identify an n-gram of a level: the longer-context version of a
--         node of the back-off tree is found by it (06_backoff_level.sql).
INSERT INTO ngram_links
SELECT gram.level, gram.gid, gram.parent, gram.token, gram.count,
       CASE WHEN $level = 1 THEN NULL WHEN $level = 2 THEN gram.token::BIGINT ELSE suffix.gid END AS suffix_gid,
       coalesce(prefix.first_token, gram.token)                                              AS first_token
FROM ngrams AS gram
LEFT JOIN ngram_links AS prefix
  ON prefix.level = $level - 1 AND prefix.gid = gram.parent
LEFT JOIN ngrams AS suffix
  ON $level > 2 AND suffix.level = $level - 1 AND suffix.parent = prefix.suffix_gid AND suffix.token = gram.token
WHERE gram.level = $level;
