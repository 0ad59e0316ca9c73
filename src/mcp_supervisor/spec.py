"""The validated run specification: what the lean PID-1 runner needs, as plain data.

`config.py` validates settings with pydantic-settings (heavy: ~16 MB resident) and turns
them into a `RunSpec`. The supervisor then re-executes itself into the lean runner and
hands the spec over through an inherited pipe, so PID 1 keeps none of pydantic resident
(the core issue's ≤ 25 MB goal). This module imports nothing heavy on purpose.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

LogFormat = Literal["auto", "console", "json"]
RestartPolicy = Literal["never", "on-failure", "always"]
Dependency = Literal["postgres", "ollama"]

DEFAULT_COMMAND: tuple[str, ...] = ("codebase-mcp", "serve")


@dataclass(frozen=True)
class RunSpec:
    """Every setting the supervisor acts on, already validated."""

    command: tuple[str, ...] = DEFAULT_COMMAND
    grace_period: float = 8.0
    signal_group: bool = False
    log_format: LogFormat = "auto"
    log_level: str = "info"
    # Dependencies and migrations (issue: dependencies, migrations, embedded PostgreSQL).
    wait_for: tuple[Dependency, ...] = ("postgres", "ollama")
    migrate: bool = True
    dependency_timeout: float = 60.0
    backoff_cap: float = 2.0
    migration_timeout: float = 300.0
    alembic_ini: str | None = None  # None: found beside migrations/ (migrate.find_alembic_ini)
    pull_model: bool = True
    data_dir: str = ""
    # The database URL may hold a password: it never goes into a log line (see redact_url).
    database_url: str | None = None
    ollama_base_url: str = "http://localhost:11434"
    ollama_embedding_model: str = "nomic-embed-text"
    # Health (issue: heartbeat, --check, readiness and watchdog).
    # None: in a runtime directory of this instance's own (see `runtime`), found by the
    # runner when it starts.
    heartbeat_file: str | None = None
    heartbeat_interval: float = 5.0
    heartbeat_max_age: float = 15.0
    watchdog_sec: float = 30.0
    restart: RestartPolicy = "never"
    restart_limit: int = 5
    restart_window: float = 60.0
    restart_backoff_cap: float = 30.0

    @property
    def embedded_postgres(self) -> bool:
        """PostgreSQL is wanted but no URL was given: start the bundled one."""
        return "postgres" in self.wait_for and not self.database_url

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        raw: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in raw.items() if k in known}
        for key in ("command", "wait_for"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def write_to_pipe(self) -> int:
        """A readable fd holding this spec, inheritable across exec (the pipe is small)."""
        rfd, wfd = os.pipe()
        with os.fdopen(wfd, "w") as w:
            w.write(self.to_json())
        os.set_inheritable(rfd, True)
        return rfd

    @classmethod
    def read_from_fd(cls, fd: int) -> RunSpec:
        with os.fdopen(fd, "r") as r:
            return cls.from_json(r.read())
