-- One level of a sharded count (run for level = 2 .. max_context + max_depth).
-- Input : shard_ngrams, shard_gids of level {level}-1
-- Output: ngrams gains level {level}: the summed counts of the shards' {level}-grams whose parent
--         survived, kept when >= $min_count, with dense gids in (parent, token) order: the key
--         order 02_level_extend.sql gives them, so the result equals a count over the union.
--         shard_gids of level {level}
CREATE OR REPLACE TEMP TABLE shard_level AS
SELECT grams.shard, grams.gid, parents.merged_gid AS parent, grams.token, grams.count
FROM shard_ngrams AS grams
JOIN shard_gids AS parents
  ON parents.shard = grams.shard AND parents.gid = grams.parent
WHERE grams.level = {level};

CREATE OR REPLACE TEMP TABLE merged_level AS
WITH summed AS (
    SELECT parent, token, sum(count)::BIGINT AS count
    FROM shard_level
    GROUP BY parent, token
    HAVING sum(count) >= $min_count
)
SELECT parent, token, count, (row_number() OVER (ORDER BY parent, token) - 1)::BIGINT AS gid
FROM summed;

INSERT INTO ngrams
SELECT {level}, gid, parent, token, count
FROM merged_level;

CREATE OR REPLACE TEMP TABLE shard_gids AS
SELECT shard_level.shard, shard_level.gid, merged.gid AS merged_gid
FROM shard_level
JOIN merged_level AS merged USING (parent, token);
