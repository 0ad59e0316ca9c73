"""Settings: environment (MCP_SUPERVISOR_*), an optional .env file, CLI flags on top.

Validation happens here, once, before anything starts; every bad setting is named in one
message and the CLI exits 78 (EX_CONFIG). The result is a plain `RunSpec`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mcp_supervisor.redact import redact_url
from mcp_supervisor.spec import DEFAULT_COMMAND, Dependency, RestartPolicy, RunSpec

PREFIX = "MCP_SUPERVISOR_"
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class ConfigError(Exception):
    """Invalid configuration: `problems` holds one line per bad setting."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


def _env(name: str, *plain: str) -> AliasChoices:
    """Accept the prefixed variable, the field name (CLI overrides) and plain aliases."""
    return AliasChoices(name, PREFIX + name.upper(), *plain)


def default_command() -> tuple[str, ...]:
    """`codebase-mcp serve` from this supervisor's own installation when it is there (a
    virtualenv need not be on PATH: `scripts/run` does not activate it), else from PATH."""
    program, *args = DEFAULT_COMMAND
    sibling = Path(sys.executable).parent / program
    return (str(sibling) if os.access(sibling, os.X_OK) else program, *args)


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "codebase-mcp")


class SupervisorSettings(BaseSettings):
    """All supervisor settings; the env variable of each is MCP_SUPERVISOR_<FIELD> unless
    noted. Defaults are documented in the README and .env.example."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    grace_period: float = Field(8.0, gt=0, le=3600, validation_alias=_env("grace_period"))
    signal_group: bool = Field(False, validation_alias=_env("signal_group"))
    log_format: Literal["auto", "console", "json"] = Field(
        "auto", validation_alias=_env("log_format", "LOG_FORMAT")
    )
    log_level: LogLevel = Field("info", validation_alias=_env("log_level", "LOG_LEVEL"))

    # None: decided by default_wait_for (Ollama only when it is asked for).
    wait_for: Annotated[tuple[Dependency, ...] | None, NoDecode] = Field(
        None, validation_alias=_env("wait_for")
    )
    migrate: bool = Field(True, validation_alias=_env("migrate"))
    dependency_timeout: float = Field(60.0, gt=0, validation_alias=_env("dependency_timeout"))
    backoff_cap: float = Field(2.0, gt=0, le=60, validation_alias=_env("backoff_cap"))
    migration_timeout: float = Field(300.0, gt=0, validation_alias=_env("migration_timeout"))
    # The server's migrations: named by the server's own variable, never imported from it.
    alembic_ini: str | None = Field(
        None, validation_alias=_env("alembic_ini", "CODEBASE_MCP_ALEMBIC_INI")
    )
    pull_model: bool = Field(True, validation_alias=_env("pull_model"))
    data_dir: str = Field(default_factory=default_data_dir, validation_alias=_env("data_dir"))
    database_url: str | None = Field(
        None, validation_alias=_env("database_url", "REGISTRY_DATABASE_URL")
    )
    ollama_base_url: str = Field(
        "http://localhost:11434", validation_alias=_env("ollama_base_url", "OLLAMA_BASE_URL")
    )
    ollama_embedding_model: str = Field(
        "nomic-embed-text",
        min_length=1,
        validation_alias=_env("ollama_embedding_model", "OLLAMA_EMBEDDING_MODEL"),
    )
    # The server's setting, read only to know whether Ollama is asked for (the server
    # validates it).
    embedding_provider: str | None = Field(
        None, validation_alias=_env("embedding_provider", "EMBEDDING_PROVIDER")
    )

    # None: a runtime directory of the instance's own (health/runtime.py); a path is this
    # instance's alone too: a second supervisor given the same directory is refused.
    heartbeat_file: str | None = Field(None, validation_alias=_env("heartbeat_file"))
    heartbeat_interval: float = Field(
        5.0, gt=0, le=3600, validation_alias=_env("heartbeat_interval")
    )
    heartbeat_max_age: float | None = Field(None, gt=0, validation_alias=_env("heartbeat_max_age"))
    watchdog_sec: float = Field(30.0, gt=0, validation_alias=_env("watchdog_sec"))
    # None: decided by the transport (restarting a stdio server would break its client).
    restart: RestartPolicy | None = Field(None, validation_alias=_env("restart"))
    restart_limit: int = Field(5, ge=0, validation_alias=_env("restart_limit"))
    restart_window: float = Field(60.0, gt=0, validation_alias=_env("restart_window"))
    restart_backoff_cap: float = Field(30.0, gt=0, validation_alias=_env("restart_backoff_cap"))
    transport: Literal["stdio", "http"] = Field(
        "stdio", validation_alias=_env("transport", "MCP_TRANSPORT")
    )

    @field_validator("log_format", "log_level", "restart", "transport", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("wait_for", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            items = [v.strip().lower() for v in value.split(",") if v.strip()]
            if items in ([], ["none"]):
                return ()
            return tuple(dict.fromkeys(items))
        return value

    @field_validator("heartbeat_file", "alembic_ini")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme = urlsplit(value).scheme
        if scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
            raise ValueError(
                f"must be a postgresql:// or postgresql+asyncpg:// URL, got {redact_url(value)!r}"
            )
        return value.strip()

    @field_validator("ollama_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL, got {redact_url(value)!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _derived(self) -> SupervisorSettings:
        if self.heartbeat_max_age is not None and self.heartbeat_max_age <= self.heartbeat_interval:
            raise ValueError(
                "MCP_SUPERVISOR_HEARTBEAT_MAX_AGE must be longer than "
                "MCP_SUPERVISOR_HEARTBEAT_INTERVAL"
            )
        return self

    @property
    def effective_wait_for(self) -> tuple[Dependency, ...]:
        if self.wait_for is not None:
            return self.wait_for
        return default_wait_for(
            ollama_url_set="ollama_base_url" in self.model_fields_set,
            embedding_provider=self.embedding_provider,
        )

    def to_spec(self, command: tuple[str, ...] | None) -> RunSpec:
        restart = self.restart or ("never" if self.transport == "stdio" else "on-failure")
        return RunSpec(
            command=command or default_command(),
            grace_period=self.grace_period,
            signal_group=self.signal_group,
            log_format=self.log_format,
            log_level=self.log_level,
            wait_for=self.effective_wait_for,
            migrate=self.migrate,
            dependency_timeout=self.dependency_timeout,
            backoff_cap=self.backoff_cap,
            migration_timeout=self.migration_timeout,
            alembic_ini=self.alembic_ini,
            pull_model=self.pull_model,
            data_dir=self.data_dir,
            database_url=self.database_url,
            ollama_base_url=self.ollama_base_url,
            ollama_embedding_model=self.ollama_embedding_model,
            heartbeat_file=self.heartbeat_file,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_max_age=self.heartbeat_max_age or 3 * self.heartbeat_interval,
            watchdog_sec=self.watchdog_sec,
            restart=restart,
            restart_limit=self.restart_limit,
            restart_window=self.restart_window,
            restart_backoff_cap=self.restart_backoff_cap,
        )


def default_wait_for(
    *, ollama_url_set: bool, embedding_provider: str | None
) -> tuple[Dependency, ...]:
    """What to wait for when MCP_SUPERVISOR_WAIT_FOR is unset: PostgreSQL, and Ollama
    only when the server will use it: EMBEDDING_PROVIDER=ollama, or OLLAMA_BASE_URL set
    with the provider left to `auto`. Otherwise the server embeds with its local model
    or searches full text, and waiting for an Ollama nobody runs would end in exit 69."""
    provider = (embedding_provider or "").strip().lower() or "auto"
    if provider == "ollama" or (provider == "auto" and ollama_url_set):
        return ("postgres", "ollama")
    return ("postgres",)


def setting_names(field: str) -> str:
    """'MCP_SUPERVISOR_GRACE_PERIOD (--grace-period)' for a field name; a plain variable
    such as LOG_LEVEL comes first where the field has one (from its aliases)."""
    env = PREFIX + field.upper()
    info = SupervisorSettings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    # _env() orders the choices: field name, prefixed variable, plain variables.
    plain = [str(c) for c in alias.choices[2:]] if isinstance(alias, AliasChoices) else []
    if plain:
        env = f"{' or '.join(plain)} or {env}"
    return f"{env} (--{field.replace('_', '-')})"


def format_problems(error: ValidationError) -> list[str]:
    """One line per bad setting, naming where it is set; never echoing a secret."""
    problems = []
    for err in error.errors():
        loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
        msg = redact_url(str(err.get("msg", "invalid")))
        msg = msg.removeprefix("Value error, ")
        if loc:
            problems.append(f"{setting_names(loc[0])}: {msg}")
        else:
            problems.append(msg)
    return problems


def load_settings(
    overrides: dict[str, Any] | None = None, env_file: str | None = None
) -> SupervisorSettings:
    """Settings from the environment, `env_file` (default ./.env) and CLI `overrides`."""
    kwargs: dict[str, Any] = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        if env_file is not None:
            if not Path(env_file).is_file():
                raise ConfigError([f"--env-file: no such file: {env_file}"])
            kwargs["_env_file"] = env_file
        return SupervisorSettings(**kwargs)
    except ValidationError as exc:
        raise ConfigError(format_problems(exc)) from None
