-- Smoothed draft trees of the contexts of $context_length tokens (run for 1 .. max_context, in order).
-- A context c = (its first token, then c') backs off to c', whose smoothed tree is already built.
-- The probability that path p follows c mixes c's own counts with the tree of c':
--     P(p | c) = w(c) * count(c p) / count(c) + (1 - w(c)) * P(p | c')     (P(p | c') = 0 off its tree)
--     w(c)     = count(c) / (count(c) + $strength * kinds(c))
-- kinds(c), Witten-Bell's estimate of how often c is followed by something new: the distinct counted
-- tokens after c, plus one for each occurrence of c that no counted token follows. A rare context
-- (few occurrences, each followed by something else) leans on c'; a frequent one keeps its counts.
-- The tree of c keeps its $top_c likeliest paths (ties: shallower first, then by node_key) with
-- P >= $min_probability; P never grows along a path, so they form a tree.
-- A node is named by its depth and the n-gram that realizes it: c + p if that was counted, else
-- its name in the tree of c' (the depth is needed: with repeated tokens, c' + p can be the same
-- n-gram as c + q for a shorter q). Its parent is the node of p without its last token.
-- Input : ngram_links, tree_candidates (c's own paths), smoothed_nodes (trees of $context_length - 1)
-- Output: smoothed_nodes gains the trees of the contexts of $context_length tokens that have a
--         counted continuation; smoothed_contexts gains, per such context:
--         effective_count  count(c) + $strength * kinds(c): the denominator of P(. | c) as counts
--         backoff_expected expected accepted tokens of the tree of c' where c occurs (sum of
--                          P(p | c) over the nodes of c'): what storing c adds is the difference;
--                          0 for single tokens, whose back-off (the empty context) is not stored

CREATE OR REPLACE TEMP TABLE level_contexts AS
WITH continuations AS (
    SELECT parent AS gid, count(*) AS kinds, sum(count) AS followed
    FROM ngram_links
    WHERE level = $context_length + 1
    GROUP BY parent
)
SELECT
    ($context_length::BIGINT << 56) | context.gid                                  AS context_key,
    context.count                                                                  AS context_count,
    CASE WHEN $context_length = 1 THEN 0::BIGINT
         ELSE (($context_length - 1)::BIGINT << 56) | context.suffix_gid END        AS backoff_key,
    context.first_token,
    context.count + $strength * (continuations.kinds + context.count - continuations.followed) AS effective_count,
    context.count / (context.count + $strength * (continuations.kinds + context.count - continuations.followed))
                                                                                   AS own_weight
FROM ngram_links AS context
JOIN continuations USING (gid)
WHERE context.level = $context_length;

-- every node of the back-off tree, under every context that backs off to it, with c's own count
CREATE OR REPLACE TEMP TABLE level_backoff AS
WITH backoff AS (
    SELECT
        context.context_key, context.context_count, context.own_weight, context.first_token,
        tree.node_key AS backoff_node, tree.parent_key AS backoff_parent, tree.token, tree.depth,
        tree.probability AS backoff_probability,
        -- a node realized by c' + p may have a counted c + p; one realized by a shorter context has none
        CASE WHEN tree.node_key >> 56 = $context_length - 1 + tree.depth THEN $context_length + tree.depth END AS own_level
    FROM level_contexts AS context
    JOIN smoothed_nodes AS tree ON tree.context_key = context.backoff_key
),
longer AS (
    SELECT level, gid, parent, count, suffix_gid, first_token
    FROM ngram_links
    WHERE level > $context_length AND level <= $context_length + $max_depth
)
SELECT
    backoff.*,
    CASE WHEN own.gid IS NOT NULL THEN (backoff.own_level::BIGINT << 56) | own.gid END AS own_node,
    CASE WHEN own.gid IS NOT NULL AND backoff.depth > 1
         THEN ((backoff.own_level - 1)::BIGINT << 56) | own.parent END              AS own_parent,
    coalesce(own.count, 0)                                                           AS own_count
FROM backoff
LEFT JOIN longer AS own
  ON own.level = backoff.own_level
 AND own.suffix_gid = backoff.backoff_node & $gid_mask
 AND own.first_token = backoff.first_token;

CREATE OR REPLACE TEMP TABLE level_candidates AS
WITH own_paths AS (
    -- c's own counted paths, each with the name of its version in the tree of c'
    SELECT
        node.context_key, context.context_count, context.own_weight, node.node_key, node.token, node.depth,
        node.count,
        CASE WHEN node.depth > 1 THEN node.parent_key END     AS own_parent,
        ((node.level - 1)::BIGINT << 56) | links.suffix_gid   AS backoff_name
    FROM tree_candidates AS node
    JOIN level_contexts AS context USING (context_key)
    JOIN ngram_links AS links
      ON links.level = node.level AND links.gid = node.node_key & $gid_mask
     AND links.level > $context_length AND links.level <= $context_length + $max_depth
    WHERE node.depth > 0 AND node.level - node.depth = $context_length
)
SELECT
    context_key, coalesce(own_node, backoff_node) AS node_key, own_parent, backoff_node, backoff_parent, token, depth,
    own_weight * own_count / context_count + (1 - own_weight) * backoff_probability AS probability
FROM level_backoff
UNION ALL
SELECT
    own.context_key, own.node_key, own.own_parent, NULL, NULL, own.token, own.depth,
    own.own_weight * own.count / own.context_count
FROM own_paths AS own
ANTI JOIN level_backoff AS seen
  ON seen.context_key = own.context_key AND seen.depth = own.depth AND seen.backoff_node = own.backoff_name;

INSERT INTO smoothed_contexts
SELECT
    context.context_key, context.context_count, context.effective_count,
    -- the empty context's tree is never stored: where no single token matches, nothing is drafted
    CASE WHEN $context_length = 1 THEN 0 ELSE coalesce(backoff.expected, 0) END
FROM level_contexts AS context
LEFT JOIN (
    SELECT context_key, sum(probability) AS expected
    FROM level_candidates
    WHERE backoff_node IS NOT NULL
    GROUP BY context_key
) AS backoff USING (context_key);

CREATE OR REPLACE TEMP TABLE level_ranked AS
SELECT *
FROM level_candidates
WHERE probability > 0 AND probability >= $min_probability
QUALIFY row_number() OVER (PARTITION BY context_key ORDER BY probability DESC, depth, node_key) <= $top_c;

INSERT INTO smoothed_nodes
SELECT
    child.context_key,
    child.node_key,
    coalesce(child.own_parent, parent.node_key) AS parent_key,
    child.token,
    child.depth,
    child.probability
FROM level_ranked AS child
LEFT JOIN level_ranked AS parent
  ON parent.context_key = child.context_key AND parent.depth = child.depth - 1
 AND parent.backoff_node = child.backoff_parent;
