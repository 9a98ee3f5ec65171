-- Order contexts by the selection policy and price them.
-- Input : tree_stats
-- Output: ranked_contexts(context_key, priority, estimated_bytes, cumulative_bytes)
--         priority 1 is kept first; the store keeps a prefix of this order that fits the budget.
--         estimated_bytes is a linear cost model ($bytes_per_context + $bytes_per_node * nodes)
--         that the writer recalibrates against real file sizes.
-- Ties break on context_key, i.e. on context length, then token sequence.
CREATE OR REPLACE TEMP TABLE ranked_contexts AS
WITH priced AS (
    SELECT
        context_key,
        context_key >> 56                                      AS context_level,
        context_count,
        accepted_count,
        added_count,
        $bytes_per_context + $bytes_per_node * nodes    AS estimated_bytes,
        -- rank among contexts of the same length, most frequent first (the paper's rule)
        row_number() OVER (PARTITION BY context_key >> 56 ORDER BY context_count DESC, context_key) AS frequency_rank
    FROM tree_stats
),
ordered AS (
    SELECT context_key, estimated_bytes, row_number() OVER (ORDER BY {policy_order}, context_key) AS priority
    FROM priced
)
SELECT *, sum(estimated_bytes) OVER (ORDER BY priority) AS cumulative_bytes
FROM ordered;
