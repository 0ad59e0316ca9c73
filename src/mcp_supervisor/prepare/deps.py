"""Waiting for the dependencies: PostgreSQL (with pgvector) and Ollama (with the model).

Runs in the short-lived prepare process, never in PID 1 (asyncpg and httpx are heavy).
The decisions (what a failure means, when to retry, what to log) are pure functions
here and in `backoff`; the IO around them is thin. Every failure is logged with its cause
and host:port; no password ever reaches a log line or an error message.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import anyio
import asyncpg
import httpx
import structlog

from mcp_supervisor.prepare.backoff import Cause, next_retry
from mcp_supervisor.redact import redact_secret

log = structlog.get_logger("mcp_supervisor.prepare.deps")

T = TypeVar("T")

ATTEMPT_TIMEOUT = 5.0  # one connection attempt; the overall deadline bounds the rest
PROBE_INTERVAL = 0.05  # while refused: how often to look whether the port opened
PROGRESS_INTERVAL = 1.0  # pull progress: at most a line a second...
PROGRESS_STEP = 10.0  # ...unless another 10 % is done


class DependencyUnavailable(Exception):
    """A dependency is down at the deadline or unusable (auth, no pgvector, no model)."""


class InvalidDependencyConfig(Exception):
    """The settings cannot work (e.g. no database URL); exit 78."""


class _Fatal(Exception):
    """Raised by an attempt when retrying cannot help; carries the user's message."""


class ModelMissing(Exception):
    pass


# --- pure decisions ---------------------------------------------------------------------


@dataclass(frozen=True)
class PgTarget:
    dsn: str  # for asyncpg: postgresql://...
    host: str
    port: int
    password: str | None = field(repr=False)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def pg_target(url: str) -> PgTarget:
    """Accept postgresql://, postgres:// and postgresql+asyncpg:// URLs."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or 5432
    except ValueError as exc:
        raise InvalidDependencyConfig(
            f"REGISTRY_DATABASE_URL is not a valid URL ({redact_secret(str(exc), None)})"
        ) from None
    if parts.scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise InvalidDependencyConfig(
            "REGISTRY_DATABASE_URL must be a postgresql:// or postgresql+asyncpg:// URL"
        )
    host = parts.hostname or parse_qs(parts.query).get("host", ["localhost"])[0]
    password = unquote(parts.password) if parts.password else None
    return PgTarget(
        dsn=urlunsplit(("postgresql", *parts[1:])), host=host, port=port, password=password
    )


def http_target(url: str) -> str:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.hostname}:{parts.port or default}"


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(exc: BaseException) -> Cause:
    """Why an attempt failed, from the exception and what caused it."""
    for e in _chain(exc):
        if isinstance(
            e,
            asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError,
        ):
            return Cause.AUTHENTICATION
        if isinstance(e, asyncpg.CannotConnectNowError):
            return Cause.STARTING
        if isinstance(e, httpx.HTTPStatusError) and e.response.status_code in (401, 403):
            return Cause.AUTHENTICATION
        if isinstance(e, socket.gaierror):
            return Cause.DNS
        if isinstance(e, TimeoutError | httpx.TimeoutException):
            return Cause.TIMEOUT
        if isinstance(e, ConnectionRefusedError) or (
            isinstance(e, OSError) and e.errno == errno.ECONNREFUSED
        ):
            return Cause.REFUSED
    text = str(exc).lower()
    # asyncpg joins several addresses' errors (localhost = ::1 and 127.0.0.1) into one
    # OSError without errno; httpx wraps socket errors into its own text.
    if "name or service not known" in text or "name resolution" in text:
        return Cause.DNS
    if "refused" in text or "connect call failed" in text:
        return Cause.REFUSED
    return Cause.OTHER


def describe(exc: BaseException, secret: str | None) -> str:
    """One line for a log: the error's own words, passwords masked."""
    text = str(exc).strip() or type(exc).__name__
    return redact_secret(" ".join(text.split()), secret)


def model_names(tags: Any) -> set[str]:
    """The model names in an /api/tags answer (both `name` and `model` fields)."""
    names: set[str] = set()
    for m in (tags or {}).get("models") or []:
        if isinstance(m, dict):
            names.update(str(m[k]) for k in ("name", "model") if m.get(k))
    return names


def model_present(wanted: str, names: Iterable[str]) -> bool:
    """`nomic-embed-text` matches `nomic-embed-text:latest`; an explicit tag must match."""
    full = wanted if ":" in wanted.rsplit("/", 1)[-1] else f"{wanted}:latest"
    return any(n in (wanted, full) for n in names)


def no_pgvector_message(where: str, server_version_num: int | None) -> str:
    major = server_version_num // 10000 if server_version_num else None
    package = f"postgresql-{major}-pgvector" if major else "postgresql-NN-pgvector"
    return (
        f"PostgreSQL at {where} has no pgvector: the `vector` extension is not available. "
        "Use a PostgreSQL with pgvector, e.g. the Docker image pgvector/pgvector:pg17, or "
        f"install it into this server (Debian/Ubuntu: apt-get install {package}), or unset "
        "REGISTRY_DATABASE_URL to use the embedded PostgreSQL"
    )


@dataclass
class ProgressThrottle:
    """Decides which pull progress updates become log lines: status changes, and progress
    at most once per `interval` unless another `step` percent is done."""

    interval: float = PROGRESS_INTERVAL
    step: float = PROGRESS_STEP
    last_time: float | None = None
    last_percent: float = -1.0
    last_status: str | None = None

    def should_log(self, now: float, status: str, percent: float | None) -> bool:
        if status != self.last_status:
            self._mark(now, status, percent)
            return True
        if percent is None:
            return False
        due = self.last_time is None or now - self.last_time >= self.interval
        if due or percent >= self.last_percent + self.step or percent >= 100.0 > self.last_percent:
            self._mark(now, status, percent)
            return True
        return False

    def _mark(self, now: float, status: str, percent: float | None) -> None:
        self.last_time = now
        self.last_status = status
        if percent is not None:
            self.last_percent = percent


def pull_percent(update: dict[str, Any]) -> float | None:
    total, completed = update.get("total"), update.get("completed")
    if isinstance(total, int | float) and total > 0 and isinstance(completed, int | float):
        return min(100.0, 100.0 * completed / total)
    return None


# --- retry loop -------------------------------------------------------------------------


async def retry(
    name: str,
    where: str,
    attempt_fn: Callable[[float], Awaitable[T]],
    *,
    deadline: float,
    cap: float,
    secret: str | None = None,
    port_probe: Callable[[], Awaitable[bool]] | None = None,
) -> T:
    """Call `attempt_fn(budget_seconds)` until it succeeds, fails fatally, or time is up."""
    attempt = 0
    while True:
        budget = max(0.2, min(ATTEMPT_TIMEOUT, deadline - time.monotonic()))
        try:
            with anyio.fail_after(budget):
                return await attempt_fn(budget)
        except _Fatal as exc:
            raise DependencyUnavailable(str(exc)) from None
        except Exception as exc:
            cause = classify(exc)
            error = describe(exc, secret)
            decision = next_retry(attempt, cause, now=time.monotonic(), deadline=deadline, cap=cap)
            if decision.delay is None:
                if cause is Cause.AUTHENTICATION:
                    raise DependencyUnavailable(
                        f"{name} at {where} refused our credentials (authentication): {error}"
                    ) from None
                raise DependencyUnavailable(
                    f"{name} at {where} still unavailable at the deadline after "
                    f"{attempt + 1} attempts; last error ({cause.value}): {error}"
                ) from None
            log.warning(
                "dependency not ready",
                dependency=name,
                target=where,
                cause=cause.value,
                error=error,
                attempt=attempt + 1,
                retry_in_ms=round(decision.delay * 1000),
            )
            probe = port_probe if cause is Cause.REFUSED else None
            await _sleep(decision.delay, probe)
            attempt += 1


async def _sleep(delay: float, probe: Callable[[], Awaitable[bool]] | None) -> None:
    """Sleep `delay`, but when the port was refused, wake as soon as it opens: a server
    coming up is then met within PROBE_INTERVAL rather than a whole backoff delay."""
    end = time.monotonic() + delay
    while (left := end - time.monotonic()) > 0:
        if probe is not None and await probe():
            return
        await anyio.sleep(min(PROBE_INTERVAL, left))


def tcp_probe(host: str, port: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        with anyio.move_on_after(0.25):
            try:
                stream = await anyio.connect_tcp(host, port)
            except OSError:
                return False
            await stream.aclose()
            return True
        return False

    return probe


# --- PostgreSQL -------------------------------------------------------------------------


async def wait_for_postgres(url: str, *, deadline: float, cap: float) -> None:
    """Until PostgreSQL at `url` runs a query and offers the `vector` extension."""
    target = pg_target(url)

    async def attempt(budget: float) -> None:
        conn = await asyncpg.connect(target.dsn, timeout=budget)
        try:
            await conn.fetchval("SELECT 1")
            has_vector = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')"
            )
            version = await conn.fetchval("SELECT current_setting('server_version_num')::int")
        finally:
            await conn.close(timeout=1.0)
        if not has_vector:
            raise _Fatal(no_pgvector_message(target.where, version))

    await retry(
        "PostgreSQL",
        target.where,
        attempt,
        deadline=deadline,
        cap=cap,
        secret=target.password,
        port_probe=tcp_probe(target.host, target.port) if not target.host.startswith("/") else None,
    )


# --- Ollama -----------------------------------------------------------------------------


async def wait_for_ollama(
    base_url: str, model: str, *, pull: bool, deadline: float, cap: float
) -> None:
    """Until Ollama at `base_url` answers and has `model`; pull it when missing and `pull`.

    A pull runs past the dependency deadline as long as it makes progress (a model is
    hundreds of MB): it fails only when no progress arrives for `dependency timeout`.
    """
    where = http_target(base_url)
    parts = urlsplit(base_url)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    async with httpx.AsyncClient(base_url=base_url, timeout=ATTEMPT_TIMEOUT) as client:

        async def attempt(budget: float) -> bool:
            response = await client.get("/api/tags", timeout=budget)
            response.raise_for_status()
            present = model_present(model, model_names(response.json()))
            if not present and not pull:
                raise ModelMissing(
                    f"the model {model!r} is not present and MCP_SUPERVISOR_PULL_MODEL is "
                    f"off: pull it (ollama pull {model}) or turn pulling on"
                )
            return present

        probe = tcp_probe(host, port)
        kwargs: dict[str, Any] = {"deadline": deadline, "cap": cap, "port_probe": probe}
        if await retry("Ollama", where, attempt, **kwargs):
            return
        stall = max(deadline - time.monotonic(), 30.0)
        await pull_model(client, model, where=where, stall_timeout=stall)
        if not await retry("Ollama", where, attempt, **kwargs):
            raise DependencyUnavailable(
                f"Ollama at {where} reported the pull of {model!r} done, but does not list it"
            )


async def pull_model(
    client: httpx.AsyncClient, model: str, *, where: str, stall_timeout: float
) -> None:
    """POST /api/pull and follow its NDJSON progress stream, logging it throttled."""
    log.info("pulling model", model=model, target=where)
    throttle = ProgressThrottle()
    timeout = httpx.Timeout(ATTEMPT_TIMEOUT, read=stall_timeout)
    try:
        async with client.stream(
            "POST",
            "/api/pull",
            # `name` as well: older Ollama releases read that field instead of `model`.
            json={"model": model, "name": model, "stream": True},
            timeout=timeout,
        ) as response:
            if response.status_code >= 400:
                body = (await response.aread()).decode(errors="replace")[:300]
                raise DependencyUnavailable(
                    f"Ollama at {where} refused to pull {model!r}: HTTP "
                    f"{response.status_code} {body}"
                )
            status = ""
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    update = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if update.get("error"):
                    raise DependencyUnavailable(
                        f"Ollama at {where} failed to pull {model!r}: {update['error']}"
                    )
                status = str(update.get("status", ""))
                percent = pull_percent(update)
                # Layer digests make each layer its own status; group them as "pulling".
                shown = "pulling" if status.startswith("pulling ") else status
                if throttle.should_log(time.monotonic(), shown, percent):
                    fields: dict[str, Any] = {"model": model, "status": status}
                    if percent is not None:
                        fields["percent"] = round(percent, 1)
                    log.info("pull progress", **fields)
            if status != "success":
                raise DependencyUnavailable(
                    f"Ollama at {where}: the pull of {model!r} ended without success "
                    f"(last status {status!r})"
                )
    except httpx.HTTPError as exc:
        raise DependencyUnavailable(
            f"Ollama at {where}: pulling {model!r} failed ({classify(exc).value}): "
            f"{describe(exc, None)}"
        ) from None
    log.info("model pulled", model=model)
