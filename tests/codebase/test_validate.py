"""Checks of user-typed arguments (codebase_mcp.validate): pure decisions."""

from __future__ import annotations

import pytest

from codebase_mcp import validate
from codebase_mcp.errors import RepositoryNotFoundError

KNOWN = ["/w/a/flask", "/w/b/flask", "/w/httpx", "/w/r\\xe9po"]


def test_a_repository_is_a_path_or_an_unambiguous_name() -> None:
    assert validate.pick_repository("/w/httpx", KNOWN) == "/w/httpx"
    assert validate.pick_repository("/link/httpx", KNOWN, real="/w/httpx") == "/w/httpx"
    assert validate.pick_repository("httpx", KNOWN) == "/w/httpx"
    assert validate.pick_repository("r\\xe9po", KNOWN) == "/w/r\\xe9po"
    with pytest.raises(validate.InvalidArgumentError, match="2 indexed repositories") as e:
        validate.pick_repository("flask", KNOWN)
    assert "/w/a/flask, /w/b/flask" in str(e.value)
    for given in ("%", "_ttpx", "ttpx", "a/flask", "/w/%", "/w"):
        with pytest.raises(RepositoryNotFoundError, match="indexed: /w/a/flask"):
            validate.pick_repository(given, KNOWN)
    with pytest.raises(RepositoryNotFoundError, match="none is indexed"):
        validate.pick_repository("x", [])


def test_repository_names_are_canonical_text() -> None:
    assert validate.repository_name("repository", " /w/httpx/ ") == "/w/httpx"
    assert validate.repository_name("repository", "/") == "/"
    assert validate.repository_name("repository", "r\\xE9po") == "r\\xe9po"
    with pytest.raises(validate.InvalidArgumentError, match="repository: must not be empty"):
        validate.repository_name("repository", "  ")
    with pytest.raises(validate.InvalidArgumentError, match="path: a backslash"):
        validate.repository_name("path", "C:\\x")


def test_overlaps_are_by_whole_components() -> None:
    others = ["/w/one", "/w/one-two", "/w/two/sub", "/x"]
    assert validate.overlaps("/w", others) == ([], ["/w/one", "/w/one-two", "/w/two/sub"])
    assert validate.overlaps("/w/one/app", others) == (["/w/one"], [])
    assert validate.overlaps("/w/one", others) == ([], [])  # itself, and not /w/one-two
    assert validate.overlaps("/", ["/w"]) == ([], ["/w"])
    message = str(validate.overlap_error("/w/one/app", ["/w/one"], []))
    assert "repository '/w/one' and path_glob 'app/**'" in message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a\x00b", "q: contains a NUL character"),
        ("a\ud800", "q: contains an unpaired surrogate (U+D800) at position 1"),
        ("x" * 11, "q: too long (11 characters; at most 10)"),
    ],
)
def test_text_arguments(value: str, message: str) -> None:
    with pytest.raises(validate.InvalidArgumentError) as e:
        validate.text("q", value, 10)
    assert str(e.value).startswith(message)


def test_limits() -> None:
    assert validate.limit(1) == 1
    for bad in (0, 101, -5, True):
        with pytest.raises(validate.InvalidArgumentError, match="limit: must be between"):
            validate.limit(bad)
