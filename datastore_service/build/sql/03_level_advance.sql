-- Advance to the next level: positions whose {level}-gram is frequent get the key of their
-- ({level}+1)-gram. The others stop (apriori: an n-gram is never more frequent than its prefix).
-- Input : level_keys, level_grams of level {level}
-- Output: level_keys of level {level}+1 (key, t{next_level} ..)
CREATE OR REPLACE TEMP TABLE next_level_keys AS
SELECT (grams.gid << {token_bits}) | keys.t{level} AS key{future_tokens}
FROM level_keys AS keys
JOIN level_grams AS grams USING (key)
WHERE keys.t{level} IS NOT NULL;

DROP TABLE level_keys;
ALTER TABLE next_level_keys RENAME TO level_keys;
