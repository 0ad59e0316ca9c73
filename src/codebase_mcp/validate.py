"""Checks of what users type (tool arguments, command-line arguments) before it reaches
the operating system, PostgreSQL or the embedder, each failing with a message that names
the argument and says what is wrong.

What they catch would otherwise surface as a crash: a NUL byte (PostgreSQL text and
file-system paths cannot hold one), an unpaired surrogate (JSON can carry `\\udce9`;
it is not text and cannot be encoded for PostgreSQL or HTTP), text too long to be a
query or a path, a malformed glob or path. Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from codebase_mcp import paths
from codebase_mcp.errors import EngineError, RepositoryNotFoundError
from codebase_mcp.search.filters import GlobError, glob_to_regex

MAX_QUERY_CHARS = 2000
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux; escapes make the text form longer
MAX_GLOB_CHARS = 1000
MAX_NAME_CHARS = 100  # a language, a job id
MAX_LIMIT = 100


class InvalidArgumentError(EngineError):
    """An argument a user gave is not acceptable; the message names it."""


def text(name: str, value: str, max_chars: int) -> str:
    """`value` if it is text PostgreSQL can store and not longer than `max_chars`."""
    if len(value) > max_chars:
        raise InvalidArgumentError(
            f"{name}: too long ({len(value):,} characters; at most {max_chars:,})"
        )
    if "\x00" in value:
        raise InvalidArgumentError(f"{name}: contains a NUL character, which text cannot hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(value[exc.start])
        raise InvalidArgumentError(
            f"{name}: contains an unpaired surrogate (U+{bad:04X}) at position {exc.start}, "
            "which is not text"
        ) from None
    return value


def query(value: str) -> str:
    value = text("query", value, MAX_QUERY_CHARS).strip()
    if not value:
        raise InvalidArgumentError("query: must not be empty")
    return value


def path(name: str, value: str) -> str:
    """The operating-system path for a path in the text form of codebase_mcp.paths."""
    value = text(name, value, MAX_PATH_CHARS)
    if not value.strip():
        raise InvalidArgumentError(f"{name}: must not be empty")
    try:
        return paths.to_os(value)
    except paths.PathTextError as exc:
        raise InvalidArgumentError(f"{name}: {exc}") from None


def path_glob(value: str) -> str:
    """The glob, checked: it translates to a regular expression PostgreSQL accepts."""
    value = text("path_glob", value, MAX_GLOB_CHARS)
    try:
        glob_to_regex(value)
    except GlobError as exc:
        raise InvalidArgumentError(f"path_glob: {exc}") from None
    return value


def name(argument: str, value: str) -> str:
    return text(argument, value, MAX_NAME_CHARS).strip()


def limit(value: int) -> int:
    if isinstance(value, bool) or not 1 <= value <= MAX_LIMIT:
        raise InvalidArgumentError(f"limit: must be between 1 and {MAX_LIMIT}, not {value!r}")
    return value


# --- repositories ---------------------------------------------------------------------


def repository_name(argument: str, value: str) -> str:
    """A repository as given (a path or a directory name), canonical text form, without a
    trailing slash."""
    value = text(argument, value, MAX_PATH_CHARS).strip()
    if not value:
        raise InvalidArgumentError(f"{argument}: must not be empty")
    try:
        value = paths.canonical(value)
    except paths.PathTextError as exc:
        raise InvalidArgumentError(f"{argument}: {exc}") from None
    return value.rstrip("/") or "/"


def pick_repository(given: str, known: Sequence[str], real: str | None = None) -> str:
    """The indexed repository `given` names, exactly: a path (with a `/`: the path itself
    or `real`, its resolved form) or the name of a repository's directory, which must be
    unambiguous. Raises RepositoryNotFoundError or InvalidArgumentError (ambiguous)."""
    if "/" in given:
        for candidate in (given, real):
            if candidate is not None and candidate in known:
                return candidate
        raise RepositoryNotFoundError(f"no indexed repository at {given}{_listing(known)}")
    named = [k for k in known if k.rsplit("/", 1)[-1] == given]
    if len(named) == 1:
        return named[0]
    if not named:
        raise RepositoryNotFoundError(f"no indexed repository named '{given}'{_listing(known)}")
    raise InvalidArgumentError(
        f"repository: {len(named)} indexed repositories are named '{given}': "
        f"{', '.join(sorted(named))}; give the full path"
    )


def _listing(known: Sequence[str], most: int = 10) -> str:
    if not known:
        return " (none is indexed)"
    shown = ", ".join(sorted(known)[:most])
    more = f" and {len(known) - most} more" if len(known) > most else ""
    return f"; indexed: {shown}{more}"


def overlaps(path: str, others: Iterable[str]) -> tuple[list[str], list[str]]:
    """(the repositories among `others` that contain `path`, those inside it); all in the
    text form. Containment is by whole path components."""

    def under(inner: str, outer: str) -> bool:
        return inner.startswith(outer.rstrip("/") + "/")

    containing = sorted(o for o in others if o != path and under(path, o))
    inside = sorted(o for o in others if o != path and under(o, path))
    return containing, inside


def overlap_error(path: str, containing: Sequence[str], inside: Sequence[str]) -> EngineError:
    """Why `path` is not indexed beside repositories it overlaps."""
    if containing:
        outer = containing[0]
        sub = path[len(outer.rstrip("/")) + 1 :]
        return EngineError(
            f"{path} is inside the indexed repository {outer}: its files are indexed "
            f"there already (search them with repository '{outer}' and path_glob "
            f"'{sub}/**'), or remove that repository first"
        )
    shown = ", ".join(inside[:10]) + (f" and {len(inside) - 10} more" if len(inside) > 10 else "")
    return EngineError(
        f"{path} contains {len(inside)} indexed repositor{'y' if len(inside) == 1 else 'ies'} "
        f"({shown}): their files would be stored and found twice; remove them first "
        "(remove_repository) or index the repositories one by one"
    )
