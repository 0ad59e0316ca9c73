"""Hybrid search: the vector and BM25 lists (hybrid, lexical, bm25), their fusion (fusion),
the list a client sees (results), the filters both retrievals apply (filters) and whether
a result's file changed since it was indexed (freshness). Builds on source and store."""
