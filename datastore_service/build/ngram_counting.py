"""Count every n-gram (n = 1 .. max_context + max_depth) seen at least `min_count` times, in DuckDB.

The count runs level by level. Level 1 groups positions by token. At level n each corpus position
still in play carries the key of its n-gram: (gid of its (n-1)-gram, next token) packed into one
BIGINT. Keys are grouped and counted, rare ones dropped, survivors get dense gids in key order, and
the positions of survivors move on to level n+1. A position whose n-gram is rare stops (apriori:
no longer n-gram through it can be frequent), so each level reads fewer rows than the one before.

Example (min_count 2, tokens `a b a b c`): level 1 keeps a:2, b:2; level 2 keeps `a b`:2 (the only
bigram seen twice); level 3 keeps nothing (`a b a` and `a b c` are seen once each).

Result: temp table `ngrams(level, gid, parent, token, count)`, the prefix tree of frequent n-grams.
"""

from __future__ import annotations

from tqdm import tqdm

from datastore_service.build.params import BuildParams
from datastore_service.build.sql_files import SqlConnection, run_sql
from datastore_service.errors import CrestError


def token_bits(vocab_size: int) -> int:
    """Bits that hold any token id exactly (18 for Gemma-3's 262,144 ids; no 16-bit limit)."""
    return max(1, (vocab_size - 1).bit_length())


def _carried_tokens(first: int, last: int, template: str) -> str:
    """Column list of the tokens a position still carries (t<first> .. t<last>)."""
    return "".join(template.format(k=k) for k in range(first, last + 1))


def count_ngrams(connection: SqlConnection, params: BuildParams, vocab_size: int, progress: bool = True) -> None:
    """Fill temp table `ngrams` from table `tokens(doc_id, pos, token)`."""
    count_ngrams_up_to(connection, params.levels, params.min_count, vocab_size, progress)


def count_ngrams_up_to(
    connection: SqlConnection, levels: int, min_count: int, vocab_size: int, progress: bool = True
) -> None:
    """`ngrams` of lengths 1..levels seen at least `min_count` times (1: every n-gram, for shards)."""
    bits, last = token_bits(vocab_size), levels - 1
    counts = {"min_count": min_count}
    run_sql(
        connection,
        "01_count_start.sql",
        counts,
        token_bits=bits,
        future_tokens=_carried_tokens(2, last, ", lead(token, {k}) OVER next_in_document AS t{k}"),
    )
    for level in tqdm(range(2, levels + 1), desc="count n-grams", unit="level", disable=not progress):
        run_sql(connection, "02_level_extend.sql", counts, level=level, token_bits=bits, token_mask=(1 << bits) - 1)
        distinct = connection.execute("SELECT count(*) FROM level_grams").fetchall()[0][0]
        if distinct >= 1 << (63 - bits):
            raise CrestError(f"level {level} has {distinct} distinct n-grams: too many to pack with {bits}-bit tokens")
        if level < levels:
            run_sql(
                connection,
                "03_level_advance.sql",
                level=level,
                token_bits=bits,
                future_tokens=_carried_tokens(level + 1, last, ", keys.t{k}"),
            )
    connection.execute("DROP TABLE level_keys; DROP TABLE level_grams")
