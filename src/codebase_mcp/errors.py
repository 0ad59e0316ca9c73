"""Errors the engine raises for callers to show to users (no tracebacks as messages)."""

from __future__ import annotations


class EngineError(Exception):
    """Base of the errors whose message is meant for a user."""


class ConfigError(EngineError):
    """Invalid settings; the message names every bad setting (the CLI exits 78)."""


class RepositoryNotFoundError(EngineError):
    pass


class JobNotFoundError(EngineError):
    pass


class EmbedderError(EngineError):
    """The embedder failed; search falls back to lexical, indexing records the error."""


class EmbedderUnavailableError(EmbedderError):
    """The embedder cannot be reached (refused, DNS, timeout) or keeps failing."""


class ModelMissingError(EmbedderError):
    """The configured embedding model is not present on the embedding server."""


class DatabaseConnectError(EngineError):
    """PostgreSQL could not be reached, or refused the connection. `sqlstate` is the
    server's error code when it answered (e.g. 28P01: wrong password), else None."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class SchemaError(EngineError):
    """The database schema is missing or not at head (run migrations)."""


def first_cause(exc: BaseException) -> BaseException:
    """The first leaf of (nested) exception groups: what actually went wrong."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
