"""Search filters: repository, language and path glob, as SQL conditions on chunks.

Every retrieval applies them inside its own query, so each stays a one-table index scan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from codebase_mcp.languages import detect_language


def glob_to_regex(glob: str) -> str:
    """A PostgreSQL regular expression (ARE) for a path glob, anchored at both ends.

    `*` stays within a path segment, `**` crosses segments (`**/` also matches nothing),
    `?` is one character, `[...]` a class. A glob without `/` matches the file name at any
    depth (as in .gitignore). Every other character is literal: escaped with `\\`, which
    in an ARE makes any non-alphanumeric character literal.
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
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append("\\[")
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith(("!", "^"))
                body = body[1:] if negate else body
                safe = "".join(c if c.isalnum() or c == "-" else "\\" + c for c in body)
                out.append("[" + ("^" if negate else "") + safe + "]")
                i = end + 1
                continue
        elif ch.isalnum():
            out.append(ch)
        else:
            out.append("\\" + ch)
        i += 1
    prefix = "(.*/)?" if anchored_anywhere else ""
    return "^" + prefix + "".join(out) + "$"


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
    repository: str | None = None
    language: str | None = None
    path_glob: str | None = None

    def repository_condition(self, column: str, first_param: int) -> tuple[str, list[Any]]:
        """A condition on a repository id column for the repository filter ("true" with
        none)."""
        if not self.repository:
            return "true", []
        repo = self.repository.rstrip("/") or "/"
        params: list[Any]
        if "/" in repo:
            candidates = list(dict.fromkeys([repo, os.path.realpath(repo)]))
            match, params = f"path = ANY(${first_param}::text[])", [candidates]
        else:  # a bare name: the repository directory's name
            match = f"(path = ${first_param} OR path LIKE ${first_param + 1})"
            params = [repo, "%/" + repo]
        # only $n placeholders are interpolated; values travel as parameters
        return f"{column} IN (SELECT id FROM repositories WHERE {match})", params  # noqa: S608

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
