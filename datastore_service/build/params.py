"""Parameters of a build: what is counted, what is kept, and within which budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from datastore_service.sizes import Budget

POLICIES = ("frequency", "benefit", "gain")


@dataclass(frozen=True)
class BuildParams:
    """Counting and selection knobs (defaults explained in docs/BENCHMARKS.md).

    max_context:     longest context stored (tokens); every length 1..max_context is kept.
    max_depth:       deepest draft node, in tokens after the context (REST's m).
    top_c:           nodes kept per tree (REST's c), best-ranked first.
    min_count:       an n-gram seen fewer times is neither a context nor a node.
    min_probability: a node with count / context_count below this is pruned (with its subtree).
    backoff:         how strongly a context's tree leans on the tree of its shorter suffix (the
                     Witten-Bell weight's multiplier, sql/06_backoff_level.sql); 0 = raw counts.
    policy:          `frequency` keeps the most frequent contexts of each length in turn (the
                     paper's rule); `benefit` keeps the most accepted tokens per byte first;
                     `gain` keeps first the contexts that add the most accepted tokens per byte
                     beyond the tree of their shorter suffix (sql/08_rank_contexts.sql).
    budget:          bytes of the published file, or rows (contexts).
    """

    max_context: int = 3
    max_depth: int = 8
    top_c: int = 32
    min_count: int = 2
    min_probability: float = 0.0
    # Raw counts by default: back-off trees (--backoff 2) replayed only +1.2% (HumanEval) and +0.3%
    # (MT-Bench) more accepted tokens per step from the default 16 MB stores, for a build 4-6x longer
    # that spills gigabytes (docs/BENCHMARKS.md, "Back-off trees at the default budget").
    backoff: float = 0.0
    # frequency is the default because it drafted better in `crest eval` on both benchmarks and at
    # nearly every budget (docs/RESULTS.md): corpus-estimated benefit overrates boilerplate.
    policy: str = "frequency"
    budget: Budget = Budget(bytes=16_000_000)

    def __post_init__(self) -> None:
        if not 1 <= self.max_context <= 16:
            raise ValueError("max_context must be in 1..16")
        if not 1 <= self.max_depth <= 32:
            raise ValueError("max_depth must be in 1..32")
        if not 1 <= self.top_c <= 32767:
            raise ValueError("top_c must be in 1..32767")
        if self.min_count < 2:
            raise ValueError("min_count must be >= 2 (an n-gram seen once predicts nothing)")
        if not 0.0 <= self.min_probability < 1.0:
            raise ValueError("min_probability must be in [0, 1)")
        if not 0.0 <= self.backoff <= 1000.0:
            raise ValueError("backoff must be in [0, 1000]")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
        if (self.budget.bytes is None) == (self.budget.rows is None) or (
            self.budget.bytes or self.budget.rows or 0
        ) <= 0:
            raise ValueError("budget must be a positive number of bytes or rows")

    @property
    def smoothed(self) -> bool:
        """Trees come from the back-off pass (sql/06_backoff_*), which also prices what each adds."""
        return self.backoff > 0 or self.policy == "gain"

    @property
    def levels(self) -> int:
        """Longest n-gram counted: a context plus its deepest node."""
        return self.max_context + self.max_depth

    def as_dict(self) -> dict:
        values = asdict(self)
        values["budget"] = str(self.budget)
        return values
