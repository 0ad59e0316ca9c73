"""The preparing steps: wait for the dependencies, then migrate.

Two callers:
- the runner (PID 1) spawns `python -m mcp_supervisor.prepare.steps --spec-fd N --mode MODE`
  and waits for its exit code, so asyncpg, httpx and SQLAlchemy never load into PID 1
  and their memory goes away with this process;
- the `mcp-supervisor wait` and `mcp-supervisor migrate` subcommands call `run()` in
  their own process. With no database URL they use the data directory's embedded
  PostgreSQL as one more user (pg.share): join the one that runs, or start it (initdb on
  first use), and leave when done; the keeper then stops it if no one else uses it. This
  is how `scripts/run --setup` prepares the database ahead of the first MCP client.

Exit codes: 0 ready, 69 a dependency unavailable at the deadline or unusable
(authentication refused, no pgvector, model missing with pulling off, pull failed),
70 migration failed or timed out, 78 invalid configuration, 128+N stopped by signal N
(SIGTERM/SIGINT stop every step at once; a running migration rolls back).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NoReturn

import anyio
import structlog

from mcp_supervisor import exitcodes
from mcp_supervisor.spec import RunSpec

Mode = Literal["wait", "migrate"]
MODES: tuple[Mode, ...] = ("wait", "migrate")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = structlog.get_logger("mcp_supervisor.prepare.steps")


class _Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.where: dict[str, object] = {}  # the failed step and its duration


def steps_for(spec: RunSpec, mode: Mode) -> list[str]:
    """Which steps run, in order: the dependencies in `wait_for` (a migration needs
    PostgreSQL, so `migrate` always waits for it), then the migration."""
    wanted: list[str] = list(spec.wait_for)
    if mode == "migrate" and "postgres" not in wanted:
        wanted.insert(0, "postgres")
    steps: list[str] = [d for d in ("postgres", "ollama") if d in wanted]
    if mode == "migrate":
        steps.append("migrate")
    return steps


def run(spec: RunSpec, mode: Mode) -> int:
    """Run the steps for `mode`; returns the exit code. Installs SIGTERM/SIGINT handlers
    for its duration; logging is the caller's to configure."""
    return anyio.run(_run, spec, mode)


async def _run(spec: RunSpec, mode: Mode) -> int:
    result: list[int] = []
    stopped_by: list[int] = []

    async with anyio.create_task_group() as tg:

        async def watch_signals(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
                # `mcp-supervisor` blocks every signal on entry (so none is lost before the
                # runner takes over); a stop that arrived since is pending and lands now.
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                task_status.started()
                async for signum in signals:
                    stopped_by.append(int(signum))
                    log.warning("stop signal: stopping", signal=signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    return

        await tg.start(watch_signals)
        result.append(await _steps(spec, mode))
        tg.cancel_scope.cancel()
    if stopped_by:
        return exitcodes.for_signal(stopped_by[0])
    return result[0]


async def _steps(spec: RunSpec, mode: Mode) -> int:
    from mcp_supervisor.prepare import deps

    steps = steps_for(spec, mode)
    if not steps:
        log.info("nothing to wait for", wait_for="none")
        return exitcodes.OK
    if ("postgres" in steps) and not spec.database_url:
        return await _with_embedded_postgres(spec, mode)
    deadline = time.monotonic() + spec.dependency_timeout
    waits: dict[str, Callable[[], Awaitable[None]]] = {}
    if "postgres" in steps:
        url = spec.database_url or ""
        waits["postgres"] = lambda: deps.wait_for_postgres(
            url, deadline=deadline, cap=spec.backoff_cap
        )
    if "ollama" in steps:
        waits["ollama"] = lambda: deps.wait_for_ollama(
            spec.ollama_base_url,
            spec.ollama_embedding_model,
            pull=spec.pull_model,
            deadline=deadline,
            cap=spec.backoff_cap,
        )
    try:
        await _wait_all(waits)
        if "migrate" in steps:
            await _step("migrate", lambda: _migrate(spec))
    except _Failed as exc:
        log.error(str(exc), exit_code=exc.code, **exc.where)
        return exc.code
    return exitcodes.OK


async def _with_embedded_postgres(spec: RunSpec, mode: Mode) -> int:
    """The steps against the data directory's shared PostgreSQL, as one of its users for
    their duration (the runner's child never gets here: the runner passes it the URL)."""
    try:
        member = await _join_embedded(spec)
    except _Failed as exc:
        log.error(str(exc), exit_code=exc.code, step="postgres")
        return exc.code
    try:
        return await _steps(dataclasses.replace(spec, database_url=member.url), mode)
    finally:
        member.close()
        if member.started_owner and await _owner_stopped(member.paths):
            # Nothing of ours outlives the command: a set-up leaves no PostgreSQL behind.
            log.info("embedded PostgreSQL stopped", data_dir=member.paths.data_dir)
        else:
            log.debug("left the embedded PostgreSQL to its other users", port=member.port)


async def _join_embedded(spec: RunSpec) -> Any:
    """A share.Membership once the shared PostgreSQL is ready (starting its keeper,
    detached, when none runs); _Failed when it cannot be had in time."""
    from mcp_supervisor.pg import share

    started = time.monotonic()
    try:
        paths = share.Paths.for_data_dir(spec.data_dir)
        joining = share.Joining(paths, share.spawn_detached_keeper)
        member = None
        try:
            with anyio.move_on_after(spec.dependency_timeout):
                member = await _joined(joining)
        finally:
            joining.abandon()  # our users lock, unless a membership took it over
    except share.JoinError as exc:
        raise _Failed(exitcodes.UNAVAILABLE, str(exc)) from None
    if member is None:
        raise _Failed(
            exitcodes.UNAVAILABLE,
            f"the embedded PostgreSQL in {paths.data_dir} was not ready within "
            f"{spec.dependency_timeout:g} s (last phase: {joining.phase}; its log is "
            f"{paths.log_file})",
        )
    log.info(
        "embedded PostgreSQL started" if member.started_owner else "embedded PostgreSQL joined",
        url=member.safe_url,
        postmaster_pid=member.state.postmaster_pid,
        duration_s=round(time.monotonic() - started, 3),
    )
    return member


async def _joined(joining: Any) -> Any:
    """Step `joining` (a share.Joining) until it yields a membership, logging the
    first use's initdb (the one phase that takes a while)."""
    from mcp_supervisor.pg import share

    seen = ""
    member = None
    while member is None:
        member = joining.step()
        if member is None and joining.phase != seen:
            seen = joining.phase
            if seen == share.INITDB:
                log.info("initialising embedded PostgreSQL", data_dir=joining.paths.data_dir)
            else:
                log.debug("waiting for the embedded PostgreSQL", phase=seen)
        if member is None:
            await anyio.sleep(0.02)
    return member


async def _owner_stopped(paths: Any, *, limit: float = 15.0, settle: float = 0.5) -> bool:
    """After leaving a PostgreSQL we started: True once its keeper has stopped it and
    exited. False when it stays ready for `settle` s (others joined meanwhile and use it)
    or outlasts `limit`."""
    from mcp_supervisor.pg import share

    started = time.monotonic()
    while share.owner_alive(paths):
        state = share.read_state(paths)
        ready = state is not None and state.phase == share.READY
        waited = time.monotonic() - started
        if (ready and waited > settle) or waited > limit:
            return False
        await anyio.sleep(0.02)
    return True


async def _wait_all(waits: dict[str, Callable[[], Awaitable[None]]]) -> None:
    """The dependency waits run side by side under the one deadline; the first failure
    stops the others."""
    failures: list[_Failed] = []
    async with anyio.create_task_group() as tg:
        for name, fn in waits.items():

            async def one(name: str = name, fn: Callable[[], Awaitable[None]] = fn) -> None:
                try:
                    await _step(name, fn)
                except _Failed as exc:
                    failures.append(exc)
                    tg.cancel_scope.cancel()

            tg.start_soon(one)
    if failures:
        raise failures[0]


async def _step(name: str, fn: Callable[[], Awaitable[object]]) -> None:
    from mcp_supervisor.prepare.deps import DependencyUnavailable, InvalidDependencyConfig
    from mcp_supervisor.prepare.migrate import MigrationFailed

    log.info("step started", step=name)
    started = time.monotonic()
    try:
        try:
            await fn()
        except InvalidDependencyConfig as exc:
            raise _Failed(exitcodes.CONFIG, f"invalid configuration: {exc}") from None
        except DependencyUnavailable as exc:
            raise _Failed(exitcodes.UNAVAILABLE, str(exc)) from None
        except MigrationFailed as exc:
            raise _Failed(exitcodes.SOFTWARE, str(exc)) from None
    except _Failed as failed:
        failed.where = {"step": name, "duration_ms": _ms_since(started)}
        raise
    log.info("step finished", step=name, duration_ms=_ms_since(started))


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


async def _migrate(spec: RunSpec) -> None:
    from mcp_supervisor.prepare.migrate import AlembicIniNotFound, upgrade_head

    try:
        result = await upgrade_head(
            spec.database_url or "", time_limit=spec.migration_timeout, alembic_ini=spec.alembic_ini
        )
    except AlembicIniNotFound as exc:
        raise _Failed(exitcodes.CONFIG, f"invalid configuration: {exc}") from None
    if result.ran:
        log.info(
            "migrated",
            from_revision=result.before or "base",
            to_revision=result.after,
            lock_wait_ms=round(result.lock_wait * 1000),
        )
    else:
        log.info(
            "schema already at head",
            revision=result.after,
            lock_wait_ms=round(result.lock_wait * 1000),
        )


# --- entry point for the runner ---------------------------------------------------------


def _configure_logging(spec: RunSpec) -> None:
    from mcp_supervisor.log import configure_logging

    configure_logging(spec, phase="preparing", stdlib=True)


def _load_spec(fd: int | None) -> RunSpec:
    if fd is not None:
        return RunSpec.read_from_fd(fd)
    from mcp_supervisor.config import load_settings

    return load_settings().to_spec(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mcp_supervisor.prepare.steps",
        description="Wait for the dependencies (and migrate); exit 0 when ready.",
    )
    parser.add_argument("--spec-fd", type=int, help="read the run spec (JSON) from this fd")
    parser.add_argument("--mode", choices=MODES, default="migrate")
    args = parser.parse_args(argv)
    try:
        spec = _load_spec(args.spec_fd)
    except Exception as exc:  # ConfigError, or a broken pipe from the runner
        print(f"mcp-supervisor: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    _configure_logging(spec)
    return run(spec, args.mode)


def exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's teardown: unloading SQLAlchemy, alembic and pydantic
    takes 0.2-1 s here, time a stop signal or the server's start would wait for. Every
    connection is closed by now and log lines are written as they come."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
