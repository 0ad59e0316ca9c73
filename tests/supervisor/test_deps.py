"""Waiting for PostgreSQL and Ollama: the pure decisions, then the waits against a real
PostgreSQL and the Ollama-API test server."""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from structlog.testing import capture_logs

from mcp_supervisor.prepare import deps
from mcp_supervisor.prepare.backoff import Cause
from mcp_supervisor.prepare.deps import (
    DependencyUnavailable,
    InvalidDependencyConfig,
    ProgressThrottle,
    classify,
    describe,
    model_names,
    model_present,
    no_pgvector_message,
    pg_target,
    pull_percent,
)
from tests.support.fake_ollama import FakeOllama
from tests.support.pg import PASSWORD, PostgresCluster, free_port

# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p%40ss@db.example:6543/app",
        "postgres://u:p%40ss@db.example:6543/app",
        "postgresql+asyncpg://u:p%40ss@db.example:6543/app",
    ],
)
def test_pg_target_accepts_the_schemes(url: str) -> None:
    t = pg_target(url)
    assert t.dsn == "postgresql://u:p%40ss@db.example:6543/app"
    assert (t.host, t.port, t.where) == ("db.example", 6543, "db.example:6543")
    assert t.password == "p@ss"
    assert "p@ss" not in repr(t)


def test_pg_target_defaults_and_socket_host() -> None:
    assert pg_target("postgresql://u@h/db").port == 5432
    assert pg_target("postgresql://u@/db?host=/run/pg").host == "/run/pg"


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "postgresql://u:p@h:notaport/db"])
def test_pg_target_rejects_bad_urls_without_the_password(url: str) -> None:
    with pytest.raises(InvalidDependencyConfig) as info:
        pg_target(url)
    assert ":p@" not in str(info.value)


# --- classifying failures -----------------------------------------------------------------


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Cause.REFUSED),
        (OSError(errno.ECONNREFUSED, "Connect call failed"), Cause.REFUSED),
        (
            OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432, 0, 0)"),
            Cause.REFUSED,
        ),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Cause.DNS),
        (TimeoutError(), Cause.TIMEOUT),
        (asyncpg.InvalidPasswordError("password authentication failed"), Cause.AUTHENTICATION),
        (
            asyncpg.InvalidAuthorizationSpecificationError('role "x" does not exist'),
            Cause.AUTHENTICATION,
        ),
        (asyncpg.CannotConnectNowError("the database system is starting up"), Cause.STARTING),
        (
            _chained(httpx.ConnectError("[Errno -2] Name or service not known"), socket.gaierror()),
            Cause.DNS,
        ),
        (
            _chained(
                httpx.ConnectError("All connection attempts failed"), ConnectionRefusedError()
            ),
            Cause.REFUSED,
        ),
        (httpx.ReadTimeout("timed out"), Cause.TIMEOUT),
        (
            httpx.HTTPStatusError(
                "401", request=httpx.Request("GET", "http://x"), response=httpx.Response(401)
            ),
            Cause.AUTHENTICATION,
        ),
        (
            httpx.HTTPStatusError(
                "503", request=httpx.Request("GET", "http://x"), response=httpx.Response(503)
            ),
            Cause.OTHER,
        ),
        (asyncpg.TooManyConnectionsError("too many clients"), Cause.OTHER),
        (ValueError("something else"), Cause.OTHER),
    ],
)
def test_classify(exc: BaseException, cause: Cause) -> None:
    assert classify(exc) is cause


def test_describe_masks_passwords() -> None:
    exc = OSError("cannot reach postgresql://app:hunter2@db:5432/x (hunter2)")
    text = describe(exc, "hunter2")
    assert "hunter2" not in text
    assert "db:5432" in text


# --- Ollama decisions ---------------------------------------------------------------------


def test_model_present_matches_latest_and_explicit_tags() -> None:
    names = {"nomic-embed-text:latest", "all-minilm:33m"}
    assert model_present("nomic-embed-text", names)
    assert model_present("nomic-embed-text:latest", names)
    assert model_present("all-minilm:33m", names)
    assert not model_present("all-minilm", names)  # :latest is not :33m
    assert not model_present("nomic-embed-text:v1.5", names)
    assert model_present("registry:5000/ns/m", {"registry:5000/ns/m:latest"})


def test_model_names_reads_name_and_model_fields() -> None:
    tags: dict[str, Any] = {"models": [{"name": "a:latest"}, {"model": "b:1"}, "junk"]}
    assert model_names(tags) == {"a:latest", "b:1"}
    assert model_names({}) == set()


def test_pull_percent() -> None:
    assert pull_percent({"total": 200, "completed": 50}) == 25.0
    assert pull_percent({"status": "pulling manifest"}) is None
    assert pull_percent({"total": 0, "completed": 0}) is None


def test_progress_throttle_logs_each_10_percent_or_each_second() -> None:
    t = ProgressThrottle()
    assert t.should_log(0.0, "pulling manifest", None)
    assert t.should_log(0.1, "pulling", 1.0)  # a new status
    assert not t.should_log(0.2, "pulling", 5.0)
    assert t.should_log(0.3, "pulling", 11.5)  # 10 % more
    assert not t.should_log(0.4, "pulling", 12.0)
    assert t.should_log(1.4, "pulling", 12.5)  # a second later
    assert not t.should_log(1.5, "pulling", 13.0)
    assert t.should_log(1.6, "pulling", 100.0)
    assert t.should_log(1.7, "success", None)


def test_no_pgvector_message_says_what_to_do() -> None:
    msg = no_pgvector_message("db:5432", 150013)
    assert "pgvector/pgvector:pg17" in msg
    assert "postgresql-15-pgvector" in msg
    assert "db:5432" in msg


# --- real waits -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_wait_for_postgres_with_pgvector(pg_url: str) -> None:
    await deps.wait_for_postgres(pg_url, deadline=time.monotonic() + 10, cap=0.5)
    asyncpg_url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
    await deps.wait_for_postgres(asyncpg_url, deadline=time.monotonic() + 10, cap=0.5)


@pytest.mark.anyio
async def test_wrong_password_fails_at_once(pg_cluster: PostgresCluster) -> None:
    url = pg_cluster.url(password="not-the-Pa55word")
    started = time.monotonic()
    with capture_logs() as logs, pytest.raises(DependencyUnavailable) as info:
        await deps.wait_for_postgres(url, deadline=time.monotonic() + 30, cap=0.5)
    assert time.monotonic() - started < 10  # not retried until the 30 s deadline
    assert "authentication" in str(info.value)
    assert f"127.0.0.1:{pg_cluster.port}" in str(info.value)
    for text in [str(info.value), repr(logs)]:
        assert "not-the-Pa55word" not in text
        assert PASSWORD not in text


@pytest.mark.anyio
async def test_deadline_names_target_and_last_error() -> None:
    port = free_port()
    with capture_logs() as logs, pytest.raises(DependencyUnavailable) as info:
        await deps.wait_for_postgres(
            f"postgresql://u:pw@127.0.0.1:{port}/db", deadline=time.monotonic() + 1, cap=0.3
        )
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "refused" in msg and "deadline" in msg
    failures = [e for e in logs if e["event"] == "dependency not ready"]
    assert len(failures) >= 3
    assert all(e["cause"] == "refused" and e["target"] == f"127.0.0.1:{port}" for e in failures)


@pytest.mark.anyio
async def test_ollama_with_the_model_needs_no_pull(fake_ollama: FakeOllama) -> None:
    await deps.wait_for_ollama(
        fake_ollama.url, "nomic-embed-text", pull=True, deadline=time.monotonic() + 5, cap=0.5
    )
    assert not [r for r in fake_ollama.requests if r[0] == "POST /api/pull"]


@pytest.mark.anyio
async def test_ollama_missing_model_is_pulled_with_progress() -> None:
    with FakeOllama(models=set(), pull_steps=5) as server, capture_logs() as logs:
        await deps.wait_for_ollama(
            server.url, "nomic-embed-text", pull=True, deadline=time.monotonic() + 5, cap=0.5
        )
        assert server.has_model("nomic-embed-text")
    progress = [e for e in logs if e["event"] == "pull progress" and "percent" in e]
    assert [e["percent"] for e in progress] == [20.0, 40.0, 60.0, 80.0, 100.0]


@pytest.mark.anyio
async def test_ollama_missing_model_without_pull_is_unavailable_at_the_deadline() -> None:
    with FakeOllama(models=set()) as server, pytest.raises(DependencyUnavailable) as info:
        await deps.wait_for_ollama(
            server.url, "nomic-embed-text", pull=False, deadline=time.monotonic() + 0.5, cap=0.2
        )
    assert "ollama pull nomic-embed-text" in str(info.value)
    assert not [r for r in server.requests if r[0] == "POST /api/pull"]


@pytest.mark.anyio
async def test_ollama_refused_until_it_starts() -> None:
    port = free_port()
    server = FakeOllama()

    async def start_later() -> None:
        await anyio.sleep(0.7)
        server.start(port=port)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(start_later)
            with capture_logs() as logs:
                await deps.wait_for_ollama(
                    f"http://127.0.0.1:{port}",
                    "nomic-embed-text",
                    pull=False,
                    deadline=time.monotonic() + 10,
                    cap=2.0,
                )
    finally:
        server.stop()
    assert any(e.get("cause") == "refused" for e in logs)
