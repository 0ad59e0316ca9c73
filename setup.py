"""The one compiled part: codebase_mcp._tsvector (see src/codebase_mcp/_tsvector.c).

Everything else is configured in pyproject.toml. The extension is optional: without a C
compiler the install still succeeds and the indexer uses the pure-Python tsvector builder
(the same bytes, ~6x slower). The container image requires it (see the Dockerfile).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "codebase_mcp._tsvector",
            sources=["src/codebase_mcp/_tsvector.c"],
            optional=True,
        )
    ]
)
