"""The compiled parts: codebase_mcp._tsvector (a chunk's search vectors) and
codebase_mcp._halfvec (vectors in pgvector's half-precision format); see their .c files.

Everything else is configured in pyproject.toml. The extensions are optional: without a C
compiler the install still succeeds and the indexer uses their pure-Python twins (the same
bytes: ~6x slower each). The container image requires them (see the Dockerfile).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "codebase_mcp._tsvector",
            sources=["src/codebase_mcp/_tsvector.c"],
            optional=True,
        ),
        Extension(
            "codebase_mcp._halfvec",
            sources=["src/codebase_mcp/_halfvec.c"],
            optional=True,
        ),
    ]
)
