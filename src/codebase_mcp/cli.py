"""`codebase-mcp`: serve MCP (stdio or http), or index and search from a terminal.

Exit codes: 0 ok, 1 failure, 2 usage (bad arguments, a path outside CODEBASE_ROOTS),
69 a dependency unavailable (database, schema not migrated), 78 bad configuration,
130 interrupted (index/search only; serve exits 0 on SIGTERM/SIGINT after its teardown).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import anyio
import structlog

from codebase_mcp.errors import ConfigError, DatabaseConnectError, EngineError, SchemaError
from codebase_mcp.logs import LEVELS, configure_logging
from codebase_mcp.serve.lifecycle import ServeError

if TYPE_CHECKING:
    from codebase_mcp.config import Settings
    from codebase_mcp.models import JobInfo, Progress, SearchResponse
    from codebase_mcp.serve.http_security import HttpSecuritySettings

log = structlog.get_logger("codebase-mcp")

OK = 0
FAILURE = 1
USAGE = 2
UNAVAILABLE = 69
CONFIG = 78
INTERRUPTED = 130

TRANSPORTS = ("stdio", "http")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

EPILOG = """\
environment:
  REGISTRY_DATABASE_URL  PostgreSQL URL, e.g. postgresql://user:pw@host:5432/db; serve
                         requires it, index and search without it use the embedded
                         PostgreSQL of MCP_SUPERVISOR_DATA_DIR (started if none runs)
  CODEBASE_ROOTS         directories that may be indexed, comma-separated (default: cwd)
  EMBEDDING_PROVIDER     auto (default: Ollama or OpenAI-compatible when its URL is set,
                         else the local model of the local-embed extra, else full-text
                         search only), ollama, openai or local
  OLLAMA_BASE_URL        default http://localhost:11434 (used when set, or with ollama)
  OLLAMA_EMBEDDING_MODEL default nomic-embed-text
  MCP_TRANSPORT          serve's default transport: stdio (default) or http
  MCP_HOST, MCP_PORT     serve's http address (default 127.0.0.1:8000)
  MCP_AUTH_TOKENS        http: bearer tokens, comma-separated (or MCP_AUTH_JWKS_URI,
                         MCP_AUTH_ISSUER, MCP_AUTH_AUDIENCE for JWTs); required off
                         loopback unless MCP_AUTH_DISABLED=true
  MCP_ALLOWED_HOSTS      http: Host headers accepted besides loopback and the address
                         a request came in on (MCP_ALLOWED_ORIGINS: browser origins)
  CODEBASE_WATCH         serve: keep every indexed repository up to date (true/false)
  CODEBASE_LOG_LEVEL     debug, info (default), warning, error
  NOTIFY_SOCKET          sd_notify socket: READY=1, STOPPING=1, WATCHDOG=1 (set by
                         mcp-supervisor or systemd; WATCHDOG_USEC sets the ping period)

exit codes:
  0 ok, 1 failure, 2 usage, 69 dependency unavailable (database down or not
  migrated), 78 bad configuration, 130 interrupted
"""


class UsageError(Exception):
    """Bad arguments the parser could not catch (exit 2)."""


# --- pure helpers -----------------------------------------------------------------------


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an error that ended a command."""
    return _exit_code(exc, set())


def _exit_code(exc: BaseException, seen: set[int]) -> int:
    from codebase_mcp.source.discover import PathNotAllowedError
    from codebase_mcp.validate import InvalidArgumentError

    if id(exc) in seen:  # exception chains can loop through groups
        return FAILURE
    seen.add(id(exc))
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _exit_code(exc.exceptions[0], seen)
    if isinstance(exc, ConfigError):
        return CONFIG
    if isinstance(exc, UsageError | PathNotAllowedError | InvalidArgumentError):
        return USAGE
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        return exit_code_for_sqlstate(sqlstate)
    if isinstance(exc, DatabaseConnectError | SchemaError | OSError | TimeoutError):
        return UNAVAILABLE
    return FAILURE


def exit_code_for_sqlstate(sqlstate: str) -> int:
    """PostgreSQL errors that end a command: bad credentials are configuration, an
    unreachable, starting or full server is an unavailable dependency."""
    if sqlstate.startswith("28"):  # invalid authorization / password
        return CONFIG
    if sqlstate.startswith("08") or sqlstate in ("57P03", "53300", "3D000"):
        return UNAVAILABLE
    return FAILURE


def error_message(exc: BaseException) -> str:
    """One line for the user; never a traceback."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return error_message(exc.exceptions[0])
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, EngineError | ValueError | ServeError | UsageError):
        return text
    return f"{type(exc).__name__}: {text}"


def resolve_transport(arg: str | None, env: dict[str, str] | os._Environ[str]) -> str:
    value = (arg or env.get("MCP_TRANSPORT") or "stdio").strip().lower()
    if value in ("streamable-http", "streamable_http"):
        value = "http"
    if value not in TRANSPORTS:
        raise ConfigError(f"MCP_TRANSPORT: must be one of {', '.join(TRANSPORTS)}, not {value!r}")
    return value


def resolve_port(arg: int | None, env: dict[str, str] | os._Environ[str]) -> int:
    if arg is not None:
        return arg
    raw = env.get("MCP_PORT", "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"MCP_PORT: must be a port number, not {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"MCP_PORT: must be between 0 and 65535, not {port}")
    return port


def render_bar(done: int, total: int, width: int = 30) -> str:
    """`[#####.....]  50% 5/10` (an unknown total shows only the count)."""
    if total <= 0:
        return f"[{'?' * width}] {done}"
    ratio = min(1.0, max(0.0, done / total))
    filled = int(ratio * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {ratio:4.0%} {done}/{total}"


def format_progress(p: Progress) -> str:
    line = f"files {render_bar(p.files_done, p.files_total)}  chunks {p.chunks_done}"
    return f"{line}  {p.message}" if p.message else line


# How the summary names each skip reason (discover.SkipReason values).
SKIP_LABELS = {
    "too_large": "too large (over CODEBASE_MAX_FILE_SIZE)",
    "binary": "binary",
    "undecodable": "undecodable text",
    "unreadable": "unreadable",
    "failed": "failed (see errors)",
    "broken_symlink": "broken symlinks",
    "symlink_outside_root": "symlinks leading outside the repository",
    "symlink_directory": "symlinks to directories",
    "not_regular": "not regular files",
}


def format_summary(job: JobInfo, elapsed: float) -> str:
    rate = job.files_done / elapsed if elapsed > 0 else 0.0
    lines = [
        f"{job.state}: {job.repository}",
        f"  files: {job.files_done}/{job.files_total} processed, {job.files_unchanged} unchanged, "
        f"{job.files_deleted} deleted",
        f"  chunks: {job.chunks_done}",
        f"  time: {elapsed:.1f} s ({rate:.0f} files/s)",
    ]
    if job.skipped:
        counts = sorted(job.skipped.items(), key=lambda item: (-item[1], item[0]))
        reasons = ", ".join(f"{n} {SKIP_LABELS.get(r, r)}" for r, n in counts)
        lines.append(f"  skipped: {sum(job.skipped.values())} file(s): {reasons}")
    if job.errors:
        lines.append(f"  errors: {len(job.errors)} file(s) could not be indexed")
        lines.extend(f"    {e.path}: {e.error}" for e in job.errors[:10])
        if len(job.errors) > 10:
            lines.append(f"    ... and {len(job.errors) - 10} more")
    if job.message:
        lines.append(f"  note: {job.message}")
    return "\n".join(lines)


def format_results(response: SearchResponse, snippet_lines: int = 4) -> str:
    if not response.results:
        head = f"no results for {response.query!r} ({response.mode})"
        return head + (f"\nnote: {response.notice}" if response.notice else "")
    out: list[str] = []
    for rank, r in enumerate(response.results, 1):
        where = f"{r.path}:{r.start_line}-{r.end_line}"
        what = " ".join(x for x in (r.language and f"[{r.language}]", r.symbol) if x)
        stale = "  (changed on disk since indexed)" if r.stale else ""
        out.append(f"{rank:>2}. {where}  {what}  (score {r.score:.4f}, {r.mode}){stale}")
        out.append(f"    in {r.repository}")
        lines = r.snippet.splitlines()
        out.extend(f"    | {line}" for line in lines[:snippet_lines])
        if len(lines) > snippet_lines:
            out.append(f"    | ... ({len(lines) - snippet_lines} more lines)")
    footer = f"{len(response.results)} result(s), {response.mode}, {response.elapsed_ms:.0f} ms"
    if response.notice:
        footer += f"\nnote: {response.notice}"
    out.append(footer)
    return "\n".join(out)


# --- the parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codebase-mcp",
        description="Semantic code search over MCP: serve it, or index and search from here.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        choices=sorted(LEVELS, key=LEVELS.__getitem__),
        default=None,
        help="log level on stderr (default: $CODEBASE_LOG_LEVEL or info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the MCP server",
        description="Run the MCP server. stdout carries only MCP messages; logs go to stderr. "
        "SIGTERM/SIGINT stop it gracefully (running jobs are marked interrupted), exit 0.",
    )
    serve.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=None,
        help="stdio or http (streamable HTTP at /mcp, plus GET /health) "
        "(default: $MCP_TRANSPORT or stdio)",
    )
    serve.add_argument(
        "--host", default=None, help=f"http bind address (default: $MCP_HOST or {DEFAULT_HOST})"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"http port (default: $MCP_PORT or {DEFAULT_PORT})",
    )

    index = sub.add_parser(
        "index",
        help="index a repository (incrementally), with a progress bar on stderr",
        description="Index a repository under CODEBASE_ROOTS; unchanged files are skipped.",
    )
    index.add_argument("path", metavar="PATH", help="the repository's directory")
    index.add_argument(
        "--force", action="store_true", help="re-embed every file (default: changed files only)"
    )
    index.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: shown on stderr)"
    )

    sync = sub.add_parser(
        "sync",
        help="apply what changed on disk now; return once search sees it",
        description="Index what changed in a repository since the index last read it "
        "(cheap: unchanged files are recognised by their size and mtime) and return once "
        "search sees it. A job already running, here or in a server, may have read the "
        "files before this call: the sync then runs after it.",
    )
    sync.add_argument("path", metavar="PATH", help="the repository's directory")
    sync.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: shown on stderr)"
    )

    search = sub.add_parser(
        "search",
        help="search indexed code; ranked results on stdout",
        description="Hybrid (semantic + full-text) search; prints ranked results with paths "
        "and lines.",
    )
    search.add_argument("query", metavar="QUERY", help="a description or an identifier")
    search.add_argument(
        "--limit", "-n", type=_limit, default=10, help="number of results, 1-100 (default: 10)"
    )
    search.add_argument("--language", "-l", default=None, help="only this language")
    search.add_argument(
        "--repository",
        "-r",
        default=None,
        help="only this repository: its path as results show it, or its directory's name "
        "when no other indexed repository has that name",
    )
    search.add_argument("--path-glob", "-g", default=None, help="only paths matching this glob")
    search.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError("must be between 1 and 100")
    return value


# --- commands ---------------------------------------------------------------------------


def _settings() -> Settings:
    from codebase_mcp.config import load_settings

    return load_settings()


def _http_security(host: str) -> HttpSecuritySettings:
    """Who may use the http transport; a non-loopback address without authentication
    is a configuration error (exit 78) unless MCP_AUTH_DISABLED=true."""
    from codebase_mcp.serve.http_security import check_exposure, load_http_security

    security = load_http_security()
    check_exposure(host, security)
    return security


# Stands in for the URL while the other settings are checked: a bad setting exits 78
# before anything starts.
_PLACEHOLDER_URL = "postgresql://embedded@127.0.0.1:1/postgres"


def _settings_or_embedded() -> Settings:
    """index and search: with no REGISTRY_DATABASE_URL, the embedded PostgreSQL of the
    supervisor's data directory (joined if it runs, started if not)."""
    from codebase_mcp.config import load_settings

    if os.environ.get("REGISTRY_DATABASE_URL", "").strip():
        return load_settings()
    settings = load_settings(database_url=_PLACEHOLDER_URL)
    from codebase_mcp import embedded

    return settings.model_copy(update={"database_url": embedded.database_url()})


def cmd_serve(args: argparse.Namespace) -> int:
    transport = resolve_transport(args.transport, os.environ)
    host = args.host or os.environ.get("MCP_HOST") or DEFAULT_HOST
    port = resolve_port(args.port, os.environ)
    security = _http_security(host) if transport == "http" else None
    settings = _settings()

    from codebase_mcp.serve import lifecycle
    from codebase_mcp.serve.notify import Notifier
    from codebase_mcp.serve.server import build_server

    mcp, state = build_server(settings)
    notifier = Notifier.from_env()
    notifier.status("starting")
    failure: BaseException | None = None
    try:
        if transport == "stdio":
            anyio.run(lifecycle.serve_stdio, mcp, notifier)
        else:
            anyio.run(partial(lifecycle.serve_http, mcp, notifier, host, port, security=security))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # incl. uvicorn's SystemExit, possibly inside a group
        failure = exc
    # When the lifespan failed (uvicorn then exits 3), its own error is the real cause.
    cause = state.startup_error or failure
    if cause is None:
        notifier.close()
        log.info("stopped")
        return OK
    notifier.stopping(f"failed: {error_message(cause)}")
    notifier.close()
    return report_failure("serve", cause)


async def _with_stop(work: Callable[[anyio.CancelScope], Any]) -> tuple[Any, bool]:
    """Run work(scope); SIGINT/SIGTERM cancel it. Returns (result, interrupted)."""
    interrupted = False
    result: Any = None
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def watch() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()

            tg.start_soon(watch)
            result = await work(tg.cancel_scope)
            tg.cancel_scope.cancel()
    return result, interrupted


class ProgressPrinter:
    """A one-line bar on a terminal; a line every few seconds otherwise."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._last = 0.0
        self._message = ""
        self._shown = False

    async def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        # A new message (e.g. the vector index build after the last file) always shows.
        if p.message == self._message and now - self._last < (0.1 if self.tty else 5.0):
            return
        self._last, self._message = now, p.message
        line = format_progress(p)
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self._shown = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def cli_text(name: str, value: str) -> str:
    """A text argument (not a path): the terminal's bytes must be UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(value[exc.start]) - 0xDC00
        shown = f"byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else f"U+{byte + 0xDC00:04X}"
        raise UsageError(f"{name} is not valid UTF-8 ({shown} at position {exc.start})") from None
    return value


def cli_repository(value: str) -> str:
    """--repository in the text form search results show (`caf\\xe9`), or raw bytes from
    the terminal (a shell-completed path that is not UTF-8), which only the OS's form has."""
    from codebase_mcp import paths

    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return paths.to_text(value)
    return value


async def _run_index(
    settings: Settings, path: str, force: bool, show: bool, fresh: bool = False
) -> int:
    from codebase_mcp import paths
    from codebase_mcp.engine import Engine

    printer = ProgressPrinter(sys.stderr, show)
    started = time.monotonic()
    async with Engine(settings) as engine:
        # A path from the command line is the OS's (bytes); the engine takes text form.
        job = await engine.start_index(
            paths.to_text(path), force=force, progress=printer, fresh=fresh
        )

        async def work(_: anyio.CancelScope) -> JobInfo:
            return await engine.wait_job(job.id)

        final, interrupted = await _with_stop(work)
        printer.end()
        if interrupted:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await engine.cancel_job(job.id)
            note = "interrupted: the job stops at a safe point; run again to resume"
            print(note, file=sys.stderr)
            return INTERRUPTED
    elapsed = time.monotonic() - started
    print(format_summary(final, elapsed))  # stdout-ok: the human CLI's result
    return OK if str(final.state) == "completed" else FAILURE


async def _run_search(settings: Settings, args: argparse.Namespace) -> int:
    from codebase_mcp.engine import Engine

    query = cli_text("QUERY", args.query)
    if not query.strip():
        raise UsageError("QUERY must not be empty")
    repository = cli_repository(args.repository) if args.repository else None
    language = cli_text("--language", args.language) if args.language else None
    path_glob = cli_text("--path-glob", args.path_glob) if args.path_glob else None
    async with Engine(settings) as engine:

        async def work(_: anyio.CancelScope) -> SearchResponse:
            return await engine.search(
                query,
                repository=repository,
                language=language,
                path_glob=path_glob,
                limit=args.limit,
            )

        response, interrupted = await _with_stop(work)
    if interrupted:
        return INTERRUPTED
    if args.json:
        import json

        from codebase_mcp.serve.server import search_to_dict

        print(json.dumps(search_to_dict(response), indent=2))  # stdout-ok: requested output
    else:
        print(format_results(response))  # stdout-ok: the human CLI's result
    return OK


def cmd_index(args: argparse.Namespace) -> int:
    settings = _settings_or_embedded()
    result: int = anyio.run(_run_index, settings, args.path, args.force, not args.no_progress)
    return result


def cmd_sync(args: argparse.Namespace) -> int:
    settings = _settings_or_embedded()
    result: int = anyio.run(_run_index, settings, args.path, False, not args.no_progress, True)
    return result


def cmd_search(args: argparse.Namespace) -> int:
    settings = _settings_or_embedded()
    result: int = anyio.run(_run_search, settings, args)
    return result


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "index": cmd_index,
    "sync": cmd_sync,
    "search": cmd_search,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    level = args.log_level or os.environ.get("CODEBASE_LOG_LEVEL", "info")
    if level.lower() not in LEVELS:
        print(f"codebase-mcp: CODEBASE_LOG_LEVEL: unknown level {level!r}", file=sys.stderr)
        return CONFIG
    configure_logging(level, os.environ.get("CODEBASE_LOG_FORMAT", "auto"))
    try:
        code = COMMANDS[args.command](args)
    except KeyboardInterrupt:
        code = INTERRUPTED
    except BaseException as exc:
        code = report_failure(args.command, exc)
    if args.command == "serve":
        _exit_now(code)
    return code


def _exit_now(code: int) -> NoReturn:
    """Leave without the interpreter's finalization. The teardown is done (jobs marked,
    pool closed, logs flushed); unloading fastmcp's module graph takes a second or more on
    a busy machine, time a stop inside the supervisor's grace window should not spend.
    Finalization would also have joined the chunking worker processes; they are ended
    here instead, so that none outlives us as an orphan."""
    _end_children(timeout=1.0)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _end_children(timeout: float) -> None:
    import psutil

    try:
        children = [c for c in psutil.Process().children(recursive=True) if not _is_tracker(c)]
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    if alive:
        psutil.wait_procs(alive, timeout=1.0)


def _is_tracker(process: Any) -> bool:
    """multiprocessing's resource tracker ignores SIGTERM by design; it exits by itself
    once we and the workers are gone, cleaning up after them."""
    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except Exception:
        return False


def report_failure(command: str, exc: BaseException) -> int:
    """One line for the user (the traceback only at debug level, for us); the exit code."""
    if isinstance(exc, SystemExit) and isinstance(exc.code, int):
        return exc.code
    log.debug("command failed", command=command, exc_info=exc)
    print(f"codebase-mcp {command}: {error_message(exc)}", file=sys.stderr)
    return exit_code_for(exc)
