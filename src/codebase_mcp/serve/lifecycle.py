"""How `codebase-mcp serve` runs and stops: the stdio wire, signals, readiness, teardown.

FastMCP 4.1 has no graceful stop on stdio: SIGTERM kills the process before the lifespan
teardown, and SIGINT hangs while stdin stays open because the stdin read blocks in a
worker thread that cannot be cancelled. Here the wire is ours: stdin is read from the
event loop (cancellable), SIGTERM/SIGINT cancel the transport, and the FastMCP lifespan
(engine shutdown: jobs marked interrupted, pool closed) runs on the way out. For http,
uvicorn's signal capture is replaced so that its re-raise cannot skip the teardown
(PrefectHQ/fastmcp#4927).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, cast

import anyio
import structlog

from codebase_mcp.serve.notify import Notifier

if TYPE_CHECKING:
    from fastmcp import FastMCP

    from codebase_mcp.serve.http_security import HttpSecuritySettings

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ServeError(Exception):
    """The server could not serve; the message says why, for the user as it is."""


_READ_SIZE = 65536


# --- the stdio wire -------------------------------------------------------------------


def _private_dup(fd: int) -> int:
    """A close-on-exec duplicate above the standard range."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


@contextlib.contextmanager
def claimed_stdio() -> Iterator[tuple[int, int]]:
    """Take fd 0 and fd 1 for the protocol and yield private duplicates of them.

    While serving, fd 0 reads /dev/null and fd 1 writes to stderr, and Python's sys.stdout
    is sys.stderr: a stray print(), a C library or a child process cannot corrupt the
    wire. Everything is restored on exit."""
    sys.stdout.flush()
    wire_in = _private_dup(0)
    wire_out = _private_dup(1)
    saved_stdout = sys.stdout
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        yield wire_in, wire_out
    finally:
        sys.stdout = saved_stdout
        os.close(devnull)
        with contextlib.suppress(OSError):
            os.dup2(wire_in, 0)
            os.dup2(wire_out, 1)
        os.close(wire_in)
        os.close(wire_out)


def pollable(fd: int) -> bool:
    """Whether the event loop can wait on fd (pipes, sockets, terminals; not regular
    files or /dev/null, which epoll refuses and which never block anyway)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


def split_lines(buffer: bytearray) -> list[bytes]:
    """Remove and return the complete lines in buffer (without their newline)."""
    end = buffer.rfind(b"\n")
    if end < 0:
        return []
    complete = bytes(buffer[:end])
    del buffer[: end + 1]
    return complete.split(b"\n")


class LineReader:
    """Newline-delimited messages from a file descriptor, read from the event loop.

    Waiting happens in the loop (cancellable), not in a worker thread; stdio_server()
    only iterates over it, so it stands in for the AsyncFile it expects."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()
        self._ready: list[bytes] = []
        self._eof = False
        self._pollable = pollable(fd)

    def __aiter__(self) -> LineReader:
        return self

    async def _read(self) -> bytes:
        if self._pollable:
            await anyio.wait_readable(self.fd)
            # The fd stays blocking (it is shared with our parent); after readiness a
            # read returns what is there at once.
            return os.read(self.fd, _READ_SIZE)
        return await anyio.to_thread.run_sync(os.read, self.fd, _READ_SIZE)

    async def __anext__(self) -> str:
        while True:
            while self._ready:
                line = self._ready.pop(0)
                if line.strip():
                    return line.decode("utf-8", errors="replace")
            if self._eof:
                raise StopAsyncIteration
            try:
                chunk = await self._read()
            except OSError as exc:  # EIO on a hung-up terminal and the like: the end
                log.debug("stdin read failed", error=str(exc))
                chunk = b""
            if chunk:
                self._buffer.extend(chunk)
                self._ready.extend(split_lines(self._buffer))
            else:
                self._eof = True
                if self._buffer:
                    self._ready.append(bytes(self._buffer))
                    self._buffer.clear()


class WireWriter:
    """Writes messages to the wire fd from a worker thread (a slow reader must not block
    the loop); a vanished reader (EPIPE) ends the session instead of crashing it."""

    def __init__(self, fd: int, on_closed: Callable[[], None]) -> None:
        self.fd = fd
        self._on_closed = on_closed
        self._closed = False

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    async def write(self, text: str) -> None:
        if self._closed:
            return
        try:
            # abandon_on_cancel: at shutdown a write stuck on a full pipe must not hold
            # up the teardown; nothing is written after it anyway.
            await anyio.to_thread.run_sync(
                self._write_all, text.encode("utf-8"), abandon_on_cancel=True
            )
        except (BrokenPipeError, ConnectionResetError):
            self._closed = True
            log.info("client closed the wire")
            self._on_closed()

    async def flush(self) -> None:
        return None


# --- stopping ---------------------------------------------------------------------------


class Stopper:
    """Turns SIGTERM/SIGINT into one graceful stop.

    Further signals change nothing: Ctrl-C in a terminal reaches both the supervisor (which
    forwards a stop) and us, and must not cut the teardown short; the supervisor's SIGKILL
    after its grace period is the hard stop."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.scope = anyio.CancelScope()
        self.signum: int | None = None
        self.on_stop: Callable[[], None] = self.scope.cancel

    def stop(self, reason: str) -> None:
        if self.scope.cancel_called:
            return
        log.info("stopping", reason=reason)
        self.notifier.stopping(f"stopping: {reason}")
        self.on_stop()

    async def watch(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self.signum is not None:
                log.info("already stopping", signal=name)
                continue
            self.signum = signum
            self.stop(name)


async def _run_with_signals(notifier: Notifier, body: Callable[[Stopper], Any]) -> None:
    stopper = Stopper(notifier)
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            tg.start_soon(stopper.watch, signals)
            tg.start_soon(notifier.run_watchdog)
            try:
                await body(stopper)
            finally:
                tg.cancel_scope.cancel()


async def serve_stdio(server: FastMCP[Any], notifier: Notifier) -> None:
    """Serve MCP on stdin/stdout until the client closes stdin or a stop signal arrives;
    the lifespan teardown runs in every case."""
    from fastmcp.server.context import reset_transport, set_transport
    from mcp.server.stdio import stdio_server

    async def body(stopper: Stopper) -> None:
        with claimed_stdio() as (wire_in, wire_out), stopper.scope:
            token = set_transport("stdio")
            try:
                # The lifespan starts the engine (pool open, schema checked); its exit is
                # shielded by FastMCP, so a cancelled scope still tears down.
                async with server._lifespan_manager():
                    notifier.ready("serving on stdio")
                    log.info("serving", transport="stdio")
                    reader = cast("anyio.AsyncFile[str]", LineReader(wire_in))
                    writer = cast(
                        "anyio.AsyncFile[str]",
                        WireWriter(wire_out, lambda: stopper.stop("client closed stdout")),
                    )
                    async with stdio_server(reader, writer) as (read_stream, write_stream):
                        low = server._mcp_server
                        await low.run(
                            read_stream, write_stream, low.create_initialization_options()
                        )
                    log.info("client closed stdin")
                    notifier.stopping("client closed stdin")
            finally:
                reset_transport(token)

    await _run_with_signals(notifier, body)


async def serve_http(
    server: FastMCP[Any],
    notifier: Notifier,
    host: str,
    port: int,
    path: str = "/mcp",
    *,
    security: HttpSecuritySettings | None = None,
) -> None:
    """Serve streamable HTTP with uvicorn; SIGTERM/SIGINT ask uvicorn to stop, and the
    app's lifespan (the engine teardown) completes before we return. `security` (default:
    the Host/Origin guard on, no token, stateless) decides who may talk to it."""
    import uvicorn

    from codebase_mcp.serve.http_security import build_http_app, default_http_security

    class Server(uvicorn.Server):
        # uvicorn re-raises a captured signal after its shutdown, which killed the
        # process before FastMCP's lifespan teardown (PrefectHQ/fastmcp#4927).
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    security = security or default_http_security()
    app = build_http_app(server, path=path, bind_host=host, settings=security)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_config=None,  # uvicorn's loggers propagate to ours (stderr)
        timeout_graceful_shutdown=2,
        ws="websockets-sansio",
    )
    userver = Server(config)

    async def announce_ready() -> None:
        while not userver.started:  # noqa: ASYNC110 - uvicorn offers no event for it
            await anyio.sleep(0.05)
        notifier.ready(f"serving on http://{host}:{port}{path}")
        log.info(
            "serving",
            transport="http",
            host=host,
            port=port,
            path=path,
            auth=security.describe_auth() if not security.auth_disabled else "disabled",
            allowed_hosts=security.allowed_hosts,
            stateless=security.stateless,
        )

    async def body(stopper: Stopper) -> None:
        def ask_uvicorn_to_exit() -> None:
            userver.should_exit = True

        stopper.on_stop = ask_uvicorn_to_exit
        # The engine starts here, before uvicorn, as FastMCP's run_http_async does (the
        # app's own lifespan then only counts a reference): a failed start is our error
        # to report in one line, not an uvicorn traceback and exit 3.
        async with server._lifespan_manager(), anyio.create_task_group() as tg:
            tg.start_soon(announce_ready)
            with contextlib.suppress(SystemExit):  # uvicorn's answer to an unbindable port
                await userver.serve()
            tg.cancel_scope.cancel()
        if not userver.started:
            raise ServeError(
                f"cannot serve on http://{host}:{port}{path} (the reason is logged above)"
            )

    await _run_with_signals(notifier, body)
