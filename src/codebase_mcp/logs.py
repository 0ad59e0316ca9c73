"""Logging for codebase-mcp processes: structlog to stderr only (stdout belongs to MCP);
readable on a terminal, JSON lines otherwise. URL passwords never reach a line.

The setup is the supervisor's (mcp_supervisor.log, stdlib and structlog only), without
its phase and child-pid context: both processes write the same kind of line to the same
stderr."""

from __future__ import annotations

from mcp_supervisor.log import LEVELS
from mcp_supervisor.log import configure_logging as _configure

__all__ = ["LEVELS", "configure_logging"]


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """`level` one of LEVELS; `fmt` console, json or auto (console on a terminal)."""
    _configure(log_format=fmt, log_level=level, stdlib=True)
