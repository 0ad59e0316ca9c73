"""PostgreSQL: the pool and the queries (db), BM25's corpus statistics (stats), leases on
work shared by the replicas (lease), the embeddings store keyed by (model, text hash)
(embeddings) and a model's HNSW index, set aside during bulk loads (vector_index).
Imports only the plain modules at the top of the package."""
