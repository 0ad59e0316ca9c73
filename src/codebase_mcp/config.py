"""Settings from the environment (pydantic-settings), validated up front.

`load_settings()` turns every validation problem into one ConfigError that names each bad
setting by its environment variable (the CLI exits 78 on it). URLs are only ever shown
with the password masked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from codebase_mcp.embed import local_embed
from codebase_mcp.errors import ConfigError
from mcp_supervisor.redact import mask_url

# pgvector's HNSW index covers half-precision vectors of up to 4,000 dimensions.
MAX_INDEXED_DIMENSIONS = 4000
_PG_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")

Provider = Literal["ollama", "openai", "local"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    database_url: str = Field(
        validation_alias=AliasChoices("REGISTRY_DATABASE_URL", "database_url"),
        repr=False,
    )
    # auto: an Ollama or OpenAI-compatible server when its URL is set, else the local
    # model when its extra is installed, else none (full-text search); see choose_provider.
    embedding_provider: Literal["auto", "ollama", "openai", "local"] = Field(
        "auto", validation_alias=AliasChoices("EMBEDDING_PROVIDER", "embedding_provider")
    )
    ollama_base_url: str = Field(
        "http://localhost:11434",
        validation_alias=AliasChoices("OLLAMA_BASE_URL", "ollama_base_url"),
    )
    ollama_embedding_model: str = Field(
        "nomic-embed-text",
        validation_alias=AliasChoices("OLLAMA_EMBEDDING_MODEL", "ollama_embedding_model"),
    )
    openai_base_url: str = Field(
        "https://api.openai.com/v1",
        validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"),
    )
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key")
    )
    # The model for the OpenAI-compatible provider; unset means OLLAMA_EMBEDDING_MODEL.
    embedding_model: str | None = Field(
        None, validation_alias=AliasChoices("EMBEDDING_MODEL", "embedding_model")
    )
    # The size an embedding server's model is expected to return (checked on every
    # answer); unset: learned from its first answer. Any size fits the embeddings store.
    embedding_dimensions: int | None = Field(
        None,
        ge=1,
        le=MAX_INDEXED_DIMENSIONS,
        validation_alias=AliasChoices("EMBEDDING_DIMENSIONS", "embedding_dimensions"),
    )
    roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path.cwd()],
        validation_alias=AliasChoices("CODEBASE_ROOTS", "roots"),
    )
    max_file_size: int = Field(
        1_000_000, ge=1, validation_alias=AliasChoices("CODEBASE_MAX_FILE_SIZE", "max_file_size")
    )
    embed_batch_size: int = Field(
        64,
        ge=1,
        le=2048,
        validation_alias=AliasChoices("CODEBASE_EMBED_BATCH_SIZE", "embed_batch_size"),
    )
    embed_concurrency: int = Field(
        4,
        ge=1,
        le=64,
        validation_alias=AliasChoices("CODEBASE_EMBED_CONCURRENCY", "embed_concurrency"),
    )
    embed_timeout: float = Field(
        60.0, gt=0, validation_alias=AliasChoices("CODEBASE_EMBED_TIMEOUT", "embed_timeout")
    )
    embed_retries: int = Field(
        4, ge=0, le=20, validation_alias=AliasChoices("CODEBASE_EMBED_RETRIES", "embed_retries")
    )
    # Files per database transaction: the unit of atomic progress and of cancellation.
    file_batch_size: int = Field(
        32, ge=1, validation_alias=AliasChoices("CODEBASE_FILE_BATCH_SIZE", "file_batch_size")
    )
    # Chunking processes; 0 means one per CPU core.
    index_workers: int = Field(
        0, ge=0, le=256, validation_alias=AliasChoices("CODEBASE_INDEX_WORKERS", "index_workers")
    )
    # A job that brings at least this many files to embed, and at least half as many as
    # the database holds embedded, loads without the HNSW index and builds it once at the
    # end (codebase_mcp/store/vector_index.py); 0: never.
    bulk_index_min_files: int = Field(
        500,
        ge=0,
        validation_alias=AliasChoices("CODEBASE_BULK_INDEX_MIN_FILES", "bulk_index_min_files"),
    )
    db_pool_size: int = Field(
        8, ge=2, le=200, validation_alias=AliasChoices("CODEBASE_DB_POOL_SIZE", "db_pool_size")
    )
    # A running index job's lease (codebase_mcp/store/lease.py): renewed every third of it; a
    # job whose replica stops renewing it for this long is taken over by another.
    job_lease_seconds: float = Field(
        30.0,
        ge=3,
        le=3600,
        validation_alias=AliasChoices("CODEBASE_JOB_LEASE_SECONDS", "job_lease_seconds"),
    )
    # How often a server looks for jobs to take from the queue (handed back, or whose
    # lease expired).
    job_poll_seconds: float = Field(
        2.0,
        gt=0,
        le=60,
        validation_alias=AliasChoices("CODEBASE_JOB_POLL_SECONDS", "job_poll_seconds"),
    )
    # The cheap change check: a stored file whose (size, mtime_ns, inode) still match is
    # not read again (its content hash still decides for every other one). Off: every
    # stored file is read and hashed on every run (for file systems or tools that keep a
    # file's size and mtime across a change of its content).
    stat_check: bool = Field(
        True, validation_alias=AliasChoices("CODEBASE_STAT_CHECK", "stat_check")
    )
    # Watch every indexed repository (index_repository(watch=...) decides per repository).
    watch: bool = Field(False, validation_alias=AliasChoices("CODEBASE_WATCH", "watch"))
    # A watcher starts its index job once no change came for this long (seconds)...
    watch_debounce: float = Field(
        0.3,
        ge=0.01,
        le=60,
        validation_alias=AliasChoices("CODEBASE_WATCH_DEBOUNCE", "watch_debounce"),
    )
    # ... or this long after the first change it has not applied, when changes keep coming.
    watch_max_delay: float = Field(
        5.0,
        ge=0.01,
        le=600,
        validation_alias=AliasChoices("CODEBASE_WATCH_MAX_DELAY", "watch_max_delay"),
    )
    # 0: file system events (inotify); N > 0: look at the watched directories every N ms
    # instead (network file systems, where inotify sees only this machine's writes).
    watch_poll_ms: int = Field(
        0,
        ge=0,
        le=3_600_000,
        validation_alias=AliasChoices("CODEBASE_WATCH_POLL_MS", "watch_poll_ms"),
    )

    @field_validator("embedding_provider", mode="before")
    @classmethod
    def _lower_provider(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("embedding_provider")
    @classmethod
    def _local_needs_its_extra(cls, value: str) -> str:
        if value == "local" and not local_embed.available():
            raise ValueError(
                f"local needs the local-embed extra, which is not installed: "
                f"{local_embed.INSTALL_HINT}"
            )
        return value

    @field_validator("embedding_dimensions", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `EMBEDDING_DIMENSIONS=` (as a .env copied from .env.example has it): unset.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("embedding_dimensions")
    @classmethod
    def _dimensions_fit_the_local_model(cls, value: int | None, info: ValidationInfo) -> int | None:
        if (
            value is not None
            and value != local_embed.DIMENSIONS
            and info.data.get("embedding_provider") == "local"
        ):
            raise ValueError(
                f"the local model ({local_embed.MODEL_NAME}) gives {local_embed.DIMENSIONS}-"
                f"dimensional vectors; unset EMBEDDING_DIMENSIONS or set {local_embed.DIMENSIONS}"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in _PG_SCHEMES or not parts.hostname:
            raise ValueError(
                "must be a PostgreSQL URL like postgresql://user:password@host:5432/db "
                "(postgresql+asyncpg:// is accepted too)"
            )
        return value.strip()

    @field_validator("ollama_base_url", "openai_base_url")
    @classmethod
    def _check_http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value.strip().rstrip("/")

    @field_validator("roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            items = [p.strip() for p in text.replace(os.pathsep, ",").split(",")]
            return [p for p in items if p]
        return value

    @field_validator("roots")
    @classmethod
    def _resolve_roots(cls, value: list[Path]) -> list[Path]:
        if not value:
            raise ValueError("needs at least one directory")
        return [Path(p).expanduser().resolve() for p in value]

    # --- derived values -------------------------------------------------------------

    @property
    def asyncpg_dsn(self) -> str:
        """The URL in the form asyncpg understands (postgresql://)."""
        return normalize_database_url(self.database_url, driver=None)

    @property
    def sqlalchemy_url(self) -> str:
        return normalize_database_url(self.database_url, driver="asyncpg")

    @property
    def database_url_masked(self) -> str:
        return mask_url(self.database_url)

    @property
    def provider(self) -> Provider | None:
        """The embedder to use (None: none, full-text search only)."""
        return choose_provider(
            self.embedding_provider, self.model_fields_set, local_embed.available()
        )

    @property
    def model_name(self) -> str | None:
        """The embedding model of the chosen provider."""
        provider = self.provider
        if provider == "local":
            return local_embed.MODEL_NAME
        if provider == "openai":
            return self.embedding_model or self.ollama_embedding_model
        if provider == "ollama":
            return self.ollama_embedding_model
        return None

    @property
    def dimensions(self) -> int | None:
        """The vector size expected: the local model's, else EMBEDDING_DIMENSIONS, else
        None (an embedding server's model tells with its first answer)."""
        if self.provider == "local":
            return local_embed.DIMENSIONS
        return self.embedding_dimensions

    @property
    def embedder_url(self) -> str | None:
        provider = self.provider
        if provider == "openai":
            return self.openai_base_url
        return self.ollama_base_url if provider == "ollama" else None

    @property
    def workers(self) -> int:
        return self.index_workers or max(1, os.cpu_count() or 1)


class GivenValuesOnly:
    """Put first among a settings class's bases: its values come from the arguments only
    (no process environment, no .env file), for settings read from a given mapping."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class _ExplicitSettings(GivenValuesOnly, Settings):
    """Settings from the given values only."""


def choose_provider(
    requested: str, explicit: AbstractSet[str], local_available: bool
) -> Provider | None:
    """The embedder for EMBEDDING_PROVIDER=`requested`; `explicit` names the settings
    given explicitly (field names). `auto` takes a server only when asked for one (its
    URL set: Ollama first, as before `auto` existed), then the local model when its extra
    is installed, then none: nothing waits for a server nobody runs."""
    if requested in ("ollama", "openai", "local"):
        return cast(Provider, requested)
    if "ollama_base_url" in explicit:
        return "ollama"
    if "openai_base_url" in explicit:
        return "openai"
    return "local" if local_available else None


def normalize_database_url(url: str, driver: str | None) -> str:
    """postgresql[+driver]://... from any accepted spelling."""
    parts = urlsplit(url.strip())
    scheme = "postgresql" if driver is None else f"postgresql+{driver}"
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def _describe(error: Mapping[str, Any]) -> str:
    names = {
        name: alias.choices[0]
        for name, info in Settings.model_fields.items()
        if isinstance((alias := info.validation_alias), AliasChoices)
        and isinstance(alias.choices[0], str)
    }
    loc = error.get("loc") or ("?",)
    field = str(loc[0])
    env_name = names.get(field, field.upper())
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "missing":
        message = "is required but not set"
    message = message.removeprefix("Value error, ")
    return f"{env_name}: {message}"


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the process environment (or `env`), with keyword overrides.

    Raises ConfigError naming every bad setting; the message never contains a password.
    """
    try:
        if env is None:
            return Settings(**overrides)
        lowered = {k.lower(): v for k, v in env.items()}
        values: dict[str, Any] = {}
        for name, info in Settings.model_fields.items():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                key = str(alias.choices[0]).lower()
                if key in lowered:
                    values[name] = lowered[key]
        values.update(overrides)
        return _ExplicitSettings(**values)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors(include_input=False, include_url=False)]
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def find_alembic_ini() -> Path:
    """alembic.ini: $CODEBASE_MCP_ALEMBIC_INI, then ./alembic.ini, then the source
    checkout, then /app (where the container image keeps it)."""
    candidates: list[Path] = []
    explicit = os.environ.get("CODEBASE_MCP_ALEMBIC_INI")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"CODEBASE_MCP_ALEMBIC_INI: {path} does not exist")
        return path
    candidates.append(Path.cwd() / "alembic.ini")
    candidates.append(Path(__file__).resolve().parents[2] / "alembic.ini")
    candidates.append(Path("/app/alembic.ini"))
    for path in candidates:
        if path.is_file() and (path.parent / "migrations" / "env.py").is_file():
            return path
    raise ConfigError(
        "alembic.ini not found (looked in "
        + ", ".join(str(p) for p in candidates)
        + "); set CODEBASE_MCP_ALEMBIC_INI"
    )
