"""Logging through structlog, always to stderr (stdout belongs to MCP): readable on a
terminal, JSON lines otherwise. Every line carries the supervisor's phase and child pid."""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any

from mcp_supervisor.redact import redact_url
from mcp_supervisor.spec import RunSpec
from mcp_supervisor.state import SupervisorState

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_state: SupervisorState | None = None
_phase_override: str | None = None


def _add_context(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _state is not None:
        event.setdefault("phase", _phase_override or _state.phase.value)
        event.setdefault("child_pid", _state.child_pid)
    elif _phase_override is not None:
        event.setdefault("phase", _phase_override)
    return event


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Belt and braces: no URL password reaches a log line, whoever formatted the message.
    for key, value in event.items():
        if isinstance(value, str) and "://" in value:
            event[key] = redact_url(value)
    return event


def configure_logging(
    spec: RunSpec | None = None,
    *,
    state: SupervisorState | None = None,
    phase: str | None = None,
    log_format: str | None = None,
    log_level: str | None = None,
    stdlib: bool = False,
) -> None:
    """Set up structlog for this process; `state` feeds phase and child_pid into each line
    (the runner), `phase` fixes the phase (helper processes such as the preparation step)."""
    global _state, _phase_override
    import structlog

    _state = state
    _phase_override = phase
    fmt = log_format or (spec.log_format if spec else "auto")
    level = LEVELS.get((log_level or (spec.log_level if spec else "info")).lower(), 20)
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_context,
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    if stdlib:
        # Libraries that log through stdlib logging (alembic, asyncpg, httpx, uvicorn,
        # fastmcp) go to stderr too; not in PID 1, which uses none of them. `force`: a
        # library may have put its own handler on the root logger first.
        import logging

        logging.basicConfig(
            stream=sys.stderr,
            level=max(level, logging.WARNING),
            format="%(levelname)s %(name)s: %(message)s",
            force=True,
        )


def get_logger(name: str = "mcp-supervisor") -> Any:
    import structlog

    return structlog.get_logger(name)
