-- A count floor per context, to skip nodes that can never make its tree.
-- Input : ngrams
-- Output: context_floors(context_key, floor)   for contexts with at least $top_c children: the
--         count of the $top_c-th best child. Those children all rank above any deeper node whose
--         count is at or below the floor (counts never grow with depth, and ties go to the
--         shallower node), so such deeper nodes, and their subtrees, are skipped exactly.
CREATE OR REPLACE TEMP TABLE context_floors AS
SELECT ((level - 1)::BIGINT << 56) | parent AS context_key, count AS floor
FROM ngrams
WHERE level BETWEEN 2 AND $max_context + 1
QUALIFY row_number() OVER (PARTITION BY level, parent ORDER BY count DESC, gid) = $top_c;
