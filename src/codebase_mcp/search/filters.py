"""Search filters: repository, language and path glob, as SQL conditions on chunks.

Every retrieval applies them inside its own query, so each stays a one-table index scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from codebase_mcp.source.languages import detect_language


class GlobError(ValueError):
    """A path glob that is not well formed; the message says where and why."""


def glob_to_regex(glob: str) -> str:
    """A PostgreSQL regular expression (ARE) for a path glob, anchored at both ends.

    `*` stays within a path segment, `**` crosses segments (`**/` also matches nothing),
    `?` is one character, `[...]` a class (`[!...]` or `[^...]` negated; a `]` right
    after the opening `[` or `[!` is a member; `a-z` a range). A glob without `/`
    matches the file name at any depth (as in .gitignore). Every other character is
    literal: escaped with `\\`, which in an ARE makes any non-alphanumeric character
    literal. Raises GlobError for a class that is never closed or a reversed range
    (PostgreSQL would reject the expression).
    """
    pattern = glob.strip().lstrip("/")
    anchored_anywhere = "/" not in pattern
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "[":
            regex, i = _glob_class(pattern, i)
            out.append(regex)
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch.isalnum():
            out.append(ch)
        else:
            out.append("\\" + ch)
        i += 1
    prefix = "(.*/)?" if anchored_anywhere else ""
    return "^" + prefix + "".join(out) + "$"


def _glob_class(pattern: str, start: int) -> tuple[str, int]:
    """The ARE bracket expression for the class opening at `start`, and the index after
    it. Members are escaped; a negated class never matches `/` (as `*` does not)."""
    i = start + 1
    negate = pattern.startswith(("!", "^"), i)
    if negate:
        i += 1
    close = pattern.find("]", i + 1)  # a `]` in first place is a member
    if close == -1:
        raise GlobError(
            f"the character class {pattern[start : start + 20]!r} is never closed (a ] right "
            "after [ or [! is a member; write [[] for a literal [)"
        )
    body = pattern[i:close]
    members: list[str] = []
    j = 0
    while j < len(body):
        if j + 2 < len(body) and body[j + 1] == "-":
            low, high = body[j], body[j + 2]
            if low > high:
                raise GlobError(
                    f"the range {low}-{high} in {pattern[start : close + 1]} is reversed "
                    f"(write {high}-{low})"
                )
            members.append(_class_member(low) + "-" + _class_member(high))
            j += 3
        else:
            members.append(_class_member(body[j]))
            j += 1
    return "[" + ("^/" if negate else "") + "".join(members) + "]", close + 1


def _class_member(ch: str) -> str:
    return ch if ch.isalnum() else "\\" + ch


_LANGUAGE_ALIASES = {"c#": "csharp", "cs": "csharp", "golang": "go", "shell": "bash", "sh": "bash"}


def normalize_language(name: str) -> str:
    """The stored language name for what a user typed: `Python`, `py`, `ts`, `c#`."""
    lowered = name.strip().lower()
    if lowered in _LANGUAGE_ALIASES:
        return _LANGUAGE_ALIASES[lowered]
    # An extension names its language (py, ts, rs); a full name is not an extension.
    return detect_language(f"file.{lowered}") or lowered


@dataclass(frozen=True)
class Filters:
    """`repository`: an indexed repository's exact path (the engine resolves what users
    type); `path_glob`: see glob_to_regex."""

    repository: str | None = None
    language: str | None = None
    path_glob: str | None = None

    def repository_condition(self, column: str, first_param: int) -> tuple[str, list[Any]]:
        """A condition on a repository id column for the repository filter ("true" with
        none)."""
        if not self.repository:
            return "true", []
        # only $n placeholders are interpolated; values travel as parameters
        sql = f"{column} IN (SELECT id FROM repositories WHERE path = ${first_param})"  # noqa: S608
        return sql, [self.repository]

    def sql(self, first_param: int) -> tuple[str, list[Any]]:
        """` AND ...` conditions on chunks c alone (path and repository_id live there
        too), so each retrieval stays a one-table index scan."""
        parts: list[str] = []
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${first_param + len(params) - 1}"

        if self.repository:
            in_repo, repo_params = self.repository_condition("c.repository_id", first_param)
            params += repo_params
            parts.append(in_repo)
        if self.language:
            parts.append(f"c.language = {param(normalize_language(self.language))}")
        if self.path_glob:
            parts.append(f"c.path ~ {param(glob_to_regex(self.path_glob))}")
        return "".join(" AND " + p for p in parts), params
