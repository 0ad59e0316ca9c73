"""codebase-mcp: semantic code search for AI assistants over MCP.

    cli, __main__     the command line: serve, index, search (exit codes in cli)
    embedded          `index|search` beside a server: the supervisor's embedded PostgreSQL
    serve/            `serve`: the MCP tools, the stdio wire and teardown, HTTP security, readiness
    engine, validate  the one object serve and the CLI talk to; checks of what users type
    index/            the indexing pipeline, which files changed, embeddings catching up
    search/           hybrid search: vector and BM25 lists, fusion, results, filters, freshness
    jobs/             index jobs: the shared queue, the jobs this process runs, watch mode
    store/            PostgreSQL: queries, BM25 statistics, leases, embeddings store, HNSW index
    embed/            the embedders: HTTP clients (Ollama, OpenAI-compatible), the local model
    source/           a repository's files, their chunks and words; no database, no network
    config, errors, models, paths, logs, _tsvector, _halfvec
                      plain modules: settings, errors, result types, the text form of
                      paths, logging, the compiled tsvector builder and halfvec encoder

Imports go down only: cli -> serve -> engine -> index | search | jobs -> store | embed ->
source -> the plain modules. Parts on one line do not import each other (the engine hands
jobs the pipeline); a part may import any part below it. The one exception: config reads
the local model's facts (name, size, whether its extra is installed) from
embed.local_embed, which imports only errors. Every subpackage's `__init__` is a docstring
only. tests/codebase/test_layering.py checks all of this, lazy imports included.
"""

__version__ = "0.1.0"
