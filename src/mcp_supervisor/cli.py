"""`mcp-supervisor`: the command line.

    mcp-supervisor [OPTIONS] [-- COMMAND [ARGS...]]   run COMMAND (default: codebase-mcp serve)
    mcp-supervisor wait [OPTIONS]                      wait for the dependencies, then exit
    mcp-supervisor migrate [OPTIONS]                   wait, run the migrations, then exit
    mcp-supervisor --check [--ready]                   the health probe (Docker HEALTHCHECK)

Two rules shape this module. `--check` runs every few seconds in every container, so it is
dispatched before anything heavy is imported. And PID 1 must never be deaf: every catchable
signal is blocked on entry, stays pending through validation and the re-exec into the lean
runner, and is delivered once the runner's handlers are in place.
"""

from __future__ import annotations

import os
import sys

# `typing` costs more than a bare interpreter start here, and --check is dispatched
# before anything else is needed: annotations only (postponed by the __future__ import).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_SUBCOMMANDS = ("run", "wait", "migrate")


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


def _parser() -> Any:
    import argparse

    from mcp_supervisor import __version__

    p = argparse.ArgumentParser(
        prog="mcp-supervisor",
        usage="mcp-supervisor [run|wait|migrate] [OPTIONS] [-- COMMAND [ARGS...]]\n"
        "       mcp-supervisor --check [--ready] [--heartbeat-file PATH]",
        description=(
            "A container init (PID 1) for the codebase MCP server: waits for PostgreSQL and "
            "Ollama, runs migrations, runs COMMAND with stdin/stdout passed straight "
            "through, forwards signals, reaps orphans, writes a heartbeat for --check and "
            "stops gracefully. COMMAND defaults to `codebase-mcp serve`. Every option can "
            "also be set as MCP_SUPERVISOR_<OPTION> in the environment or a .env file; "
            "flags win. Logs go to stderr only."
        ),
        epilog=(
            "exit status: the child's own code; 128+N when it died of signal N; 126 command "
            "not executable; 127 command not found; 69 a dependency unavailable at the "
            "deadline; 70 migration failed or restart limit reached; 78 invalid "
            "configuration; 2 bad command line."
        ),
    )
    p.add_argument(
        "subcommand",
        nargs="?",
        choices=_SUBCOMMANDS,
        default="run",
        help="run (default): supervise COMMAND; wait: only wait for the "
        "dependencies; migrate: wait, then migrate",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--check",
        action="store_true",
        help="health probe: exit 0 when healthy, 1 otherwise, with one line why",
    )
    p.add_argument("--ready", action="store_true", help="with --check: also require readiness")
    p.add_argument(
        "--env-file",
        metavar="PATH",
        help="read settings from this file (default: ./.env if present)",
    )
    g = p.add_argument_group("supervision")
    g.add_argument(
        "--grace-period",
        type=float,
        metavar="SECONDS",
        help="time between the forwarded stop signal and SIGKILL (default 8)",
    )
    g.add_argument(
        "--signal-group",
        action="store_true",
        default=None,
        help="forward signals to the child's whole process group (default: the child only)",
    )
    g.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        help="auto (default): console on a terminal, JSON lines otherwise (env LOG_FORMAT)",
    )
    g.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error", "critical"),
        help="default info (env LOG_LEVEL)",
    )
    d = p.add_argument_group("dependencies and migrations")
    d.add_argument(
        "--wait-for",
        metavar="LIST",
        help="comma list of postgres, ollama, or none (default: postgres, plus ollama when "
        "OLLAMA_BASE_URL is set or EMBEDDING_PROVIDER=ollama)",
    )
    d.add_argument(
        "--migrate",
        dest="migrate",
        action="store_true",
        default=None,
        help="run alembic upgrade head before the server starts (default)",
    )
    d.add_argument("--no-migrate", dest="migrate", action="store_false")
    d.add_argument(
        "--dependency-timeout",
        type=float,
        metavar="SECONDS",
        help="overall wait deadline (default 60)",
    )
    d.add_argument("--migration-timeout", type=float, metavar="SECONDS", help="default 300")
    d.add_argument(
        "--alembic-ini",
        metavar="PATH",
        help="the server's alembic.ini (env CODEBASE_MCP_ALEMBIC_INI; default: ./alembic.ini, "
        "the source checkout's or /app's, beside migrations/)",
    )
    d.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL (env REGISTRY_DATABASE_URL); unset: embedded PostgreSQL",
    )
    d.add_argument(
        "--data-dir",
        metavar="PATH",
        help="embedded PostgreSQL data (default ~/.local/share/codebase-mcp)",
    )
    h = p.add_argument_group("health")
    h.add_argument(
        "--heartbeat-file",
        metavar="PATH",
        help="default: heartbeat.json in a directory of this instance's own, under "
        "$XDG_RUNTIME_DIR/mcp-supervisor or ${TMPDIR:-/tmp}/mcp-supervisor",
    )
    h.add_argument("--heartbeat-interval", type=float, metavar="SECONDS", help="default 5")
    h.add_argument(
        "--restart",
        choices=("never", "on-failure", "always"),
        help="restart policy (default: never for stdio, on-failure for http)",
    )
    return p


def _is_check(options: list[str]) -> bool:
    return "--check" in options


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, command = _split_command(argv)

    if _is_check(options):
        from mcp_supervisor.health import check

        return check.main(options)

    from mcp_supervisor.pid1 import signals

    signals.block_all()
    args = _parser().parse_args(options)
    if command is not None and not command:
        _die(2, "mcp-supervisor: nothing after '--': give a COMMAND or leave '--' out")

    from mcp_supervisor import exitcodes
    from mcp_supervisor.config import ConfigError, load_settings

    overrides = {
        k: getattr(args, k)
        for k in (
            "grace_period",
            "signal_group",
            "log_format",
            "log_level",
            "wait_for",
            "migrate",
            "dependency_timeout",
            "migration_timeout",
            "alembic_ini",
            "database_url",
            "data_dir",
            "heartbeat_file",
            "heartbeat_interval",
            "restart",
        )
    }
    try:
        settings = load_settings(overrides, env_file=args.env_file)
    except ConfigError as exc:
        _die(exitcodes.CONFIG, f"mcp-supervisor: {exc}")
    spec = settings.to_spec(tuple(command) if command else None)

    if args.subcommand in ("wait", "migrate"):
        from mcp_supervisor.log import configure_logging
        from mcp_supervisor.prepare import steps

        configure_logging(spec, phase="preparing", stdlib=True)
        # Skip the interpreter teardown of SQLAlchemy & co. (~1 s): stop promptly.
        steps.exit_now(steps.run(spec, args.subcommand))

    # Re-exec into the lean runner: pydantic and friends do not stay resident in PID 1.
    fd = spec.write_to_pipe()
    runner = [sys.executable, "-m", "mcp_supervisor.pid1", "--spec-fd", str(fd)]
    os.execv(sys.executable, runner)
    return exitcodes.SOFTWARE  # pragma: no cover - execv does not return


def _die(code: int, message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(code)


def console_main() -> None:
    sys.exit(main())
