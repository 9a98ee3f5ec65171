-- Start of a sharded count (instead of 01-03): merge the level-1 counts of every shard.
-- Counts add up across shards, so each shard's table is counted without min_count: pruning one
-- shard alone would drop an n-gram that is rare in every shard but frequent in the union.
-- Input : shard_ngrams(shard, level, gid, parent, token, count)   every shard's complete n-gram
--         prefix tree (gids local to the shard)
-- Output: ngrams(level, gid, parent, token, count)   level 1, exactly as 01_count_start.sql makes
--         it for the union of the shards
--         shard_gids(shard, gid, merged_gid)          each shard's surviving level-1 gids
CREATE OR REPLACE TEMP TABLE ngrams AS
SELECT 1::TINYINT AS level, token::BIGINT AS gid, NULL::BIGINT AS parent, token, sum(count)::BIGINT AS count
FROM shard_ngrams
WHERE level = 1
GROUP BY token
HAVING sum(count) >= $min_count;

-- a 1-gram's gid is its token, in every shard and in the union
CREATE OR REPLACE TEMP TABLE shard_gids AS
SELECT shard, gid, gid AS merged_gid
FROM shard_ngrams
WHERE level = 1 AND token IN (SELECT token FROM ngrams);
