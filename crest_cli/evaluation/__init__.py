"""`crest eval`: REST vs CREST acceptance across storage sizes, by exact replay of greedy outputs."""
