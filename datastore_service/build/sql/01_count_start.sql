-- Start of the level-wise n-gram count.
-- Input : tokens(doc_id, pos, token)   one row per corpus token
-- Output: ngrams(level, gid, parent, token, count)
--         every n-gram seen at least $min_count times. An n-gram is its parent (n-1)-gram plus
--         one token; gids are dense per level and follow the lexicographic order of the token
--         sequence (a 1-gram's gid is its token), which makes every tie-break reproducible.
CREATE OR REPLACE TEMP TABLE ngrams AS
SELECT 1::TINYINT AS level, token::BIGINT AS gid, NULL::BIGINT AS parent, token, count(*) AS count
FROM tokens
GROUP BY token
HAVING count(*) >= $min_count;

-- Output: level_keys(key, t2 .. t{last})   one row per corpus position that has a next token:
--         the key of the 2-gram starting there, (first token << token_bits) | second token, and
--         the tokens after it in the same document (NULL past the document's end), so later
--         levels never join back to `tokens`.
CREATE OR REPLACE TEMP TABLE level_keys AS
SELECT *
FROM (
    SELECT
        (token::BIGINT << {token_bits}) | lead(token, 1) OVER next_in_document AS key{future_tokens}
    FROM tokens
    WINDOW next_in_document AS (PARTITION BY doc_id ORDER BY pos)
)
WHERE key IS NOT NULL;
