"""What a hostile user throws at the engine, against a real PostgreSQL and the local
Ollama-API server: file and directory names that are not UTF-8 (or hold backslashes,
newlines, emoji)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from codebase_mcp import paths
from codebase_mcp.engine import JobState
from tests.codebase.fixtures_engine import (
    index_and_wait,
    migrate_async,
    open_engine,
    settings_for,
)
from tests.support.fake_ollama import FakeOllama

pytestmark = pytest.mark.anyio

# Raw name (bytes, relative to the repository) -> (its text form, the function inside).
WEIRD: dict[bytes, tuple[str, str]] = {
    b"caf\xe9.py": ("caf\\xe9.py", "latin_name"),
    b"a\\b.py": ("a\\\\b.py", "backslash_name"),
    b"new\nline.py": ("new\\x0aline.py", "newline_name"),
    b"with space.py": ("with space.py", "space_name"),
    "📦 pkg/☃.py".encode(): ("📦 pkg/☃.py", "emoji_name"),
    b"d\xff\x01ir/m\\x41\xc2\x9b\x1b[31m.py": (
        "d\\xff\\x01ir/m\\\\x41\\xc2\\x9b\\x1b[31m.py",
        "mixed_name",
    ),
}


def write_weird_repo(base: Path) -> bytes:
    """A repository whose own directory name is not UTF-8, holding the WEIRD files."""
    repo = os.fsencode(base) + b"/r\xe9po"
    for raw, (_, function) in WEIRD.items():
        path = repo + b"/" + raw
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(f"def {function}():\n    return 1\n".encode())
    return repo


async def test_any_file_name_is_indexed_shown_as_text_and_maps_back_to_its_file(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_weird_repo(tmp_path)
    repo_text = paths.to_text(repo)
    assert repo_text == f"{tmp_path}/r\\xe9po"
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        job = await index_and_wait(engine, repo_text)
        assert job.state is JobState.COMPLETED, job
        assert job.repository == repo_text
        assert job.errors == ()
        assert job.files_done == job.files_total == len(WEIRD)
        (info,) = await engine.list_repositories()
        assert (info.path, info.files) == (repo_text, len(WEIRD))

        for raw, (text, function) in WEIRD.items():
            response = await engine.search(function, mode="lexical", limit=1)
            (top,) = response.results
            assert (top.path, top.symbol, top.repository) == (text, function, repo_text)
            # the text form leads back to the very file
            file = paths.to_bytes(top.repository) + b"/" + paths.to_bytes(top.path)
            assert function.encode() in await anyio.Path(os.fsdecode(file)).read_bytes()
            assert paths.to_bytes(top.path) == raw
            # globs match the text form ([[] is a literal [)
            glob = text.replace("[", "[[]")
            globbed = await engine.search(function, path_glob=glob, mode="lexical")
            assert [r.path for r in globbed.results] == [text]

        # the repository by its path
        for given in (repo_text, repo_text + "/"):
            found = await engine.search("latin_name", repository=given, mode="lexical")
            assert [r.path for r in found.results] == ["caf\\xe9.py"], given

        again = await index_and_wait(engine, repo_text)
        assert (again.files_skipped, again.files_deleted) == (len(WEIRD), 0)

        os.unlink(repo + b"/caf\xe9.py")
        os.unlink(repo + b"/a\\b.py")
        third = await index_and_wait(engine, repo_text)
        assert third.state is JobState.COMPLETED, third
        assert (third.files_skipped, third.files_deleted) == (len(WEIRD) - 2, 2)
        for function in ("latin_name", "backslash_name"):
            found = await engine.search(function, mode="lexical")
            assert all(r.symbol != function for r in found.results)

        removed = await engine.remove_repository(repo_text)
        assert removed.path == repo_text
        assert await engine.list_repositories() == []
