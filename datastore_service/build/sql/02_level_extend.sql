-- One level of the n-gram count: the {level}-grams, from the keys of every position's {level}-gram.
-- Input : level_keys(key, ..)    key = (gid of the position's ({level}-1)-gram << token_bits) | next token
-- Output: level_grams(key, count, gid)   {level}-grams seen >= $min_count times, with dense gids
--         in key order, i.e. in lexicographic order of the token sequence
--         ngrams                        gains those rows as level {level}
CREATE OR REPLACE TEMP TABLE level_grams AS
SELECT key, count, (row_number() OVER (ORDER BY key) - 1)::BIGINT AS gid  -- BIGINT: Spark's is INT
FROM (
    SELECT key, count(*) AS count
    FROM level_keys
    GROUP BY key
    HAVING count(*) >= $min_count
);

INSERT INTO ngrams
SELECT {level}, gid, key >> {token_bits}, (key & {token_mask})::INTEGER, count
FROM level_grams;
