"""Logging for codebase-mcp processes: structlog to stderr only (stdout belongs to MCP);
readable on a terminal, JSON lines otherwise. URL passwords never reach a line."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from mcp_supervisor.redact import redact_url

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Any URL in any value, also inside an error message: the supervisor's redaction (a
    # stdlib-only module, shared so both processes mask the same way).
    for key, value in event.items():
        if isinstance(value, str) and "://" in value and "@" in value:
            event[key] = redact_url(value)
    return event


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    numeric = LEVELS.get(level.lower(), logging.INFO)
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
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries on stdlib logging (uvicorn, alembic, asyncpg, httpx, fastmcp) go to stderr.
    logging.basicConfig(
        stream=sys.stderr,
        level=max(numeric, logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
