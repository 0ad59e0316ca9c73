"""The cheap change check: a stored file whose (size, mtime_ns, inode) still match is not
read again; the content hash decides for every other one; a stat taken too soon after a
write is not trusted (git's racily clean entries). Pure rules first, then real files
and a real PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import pytest

from codebase_mcp.engine import JobState
from codebase_mcp.index import changes, pipeline
from codebase_mcp.source.discover import SkipReason, SourceFile
from codebase_mcp.store import db
from tests.codebase.fixtures_engine import (
    index_and_wait,
    migrate_async,
    open_engine,
    settings_for,
    write_modules,
)
from tests.support.fake_ollama import FakeOllama

S = 1_000_000_000
NOW = 1_700_000_000 * S


def source(path: str = "a.py", size: int = 10, mtime_ns: int = NOW - 60 * S, inode: int = 7):
    return SourceFile(path, "/x/" + path, size, mtime_ns, "python", inode)


def stored(stat: db.FileStat | None, digest: str = "h") -> db.StoredFile:
    return db.StoredFile(1, digest, stat)


# --- the rules -------------------------------------------------------------------------


def test_a_stat_taken_within_the_racy_window_of_a_write_is_not_trusted() -> None:
    assert changes.racily_clean(NOW, NOW)
    assert changes.racily_clean(NOW - changes.RACY_NS + 1, NOW)
    assert changes.racily_clean(NOW + 5 * S, NOW)  # written during the scan
    assert not changes.racily_clean(NOW - changes.RACY_NS - 1, NOW)
    assert changes.stat_of(source(mtime_ns=NOW), NOW) == db.FileStat(10, NOW, 7, False)
    assert changes.stat_of(source(), NOW) == db.FileStat(10, NOW - 60 * S, 7, True)


def test_only_a_trusted_stat_that_matches_in_size_mtime_and_inode_vouches() -> None:
    good = db.FileStat(10, NOW - 60 * S, 7, True)
    assert changes.stat_unchanged(good, source())
    assert not changes.stat_unchanged(None, source())
    assert not changes.stat_unchanged(db.FileStat(10, NOW - 60 * S, 7, False), source())
    assert not changes.stat_unchanged(good, source(size=11))
    assert not changes.stat_unchanged(good, source(mtime_ns=NOW - 59 * S))
    assert not changes.stat_unchanged(good, source(inode=8))  # replaced by a rename
    assert not changes.stat_unchanged(db.FileStat(10, None, None, False), source())


def test_known_hashes_reads_only_what_the_stat_cannot_vouch_for() -> None:
    trusted = db.FileStat(10, NOW - 60 * S, 7, True)
    files = [source("same.py"), source("touched.py", mtime_ns=NOW), source("new.py")]
    rows = {"same.py": stored(trusted, "h1"), "touched.py": stored(trusted, "h2")}
    digests, to_hash = changes.known_hashes(files, rows, stat_check=True)
    assert digests == {"same.py": "h1"}
    assert [s.rel_path for s in to_hash] == ["touched.py"]  # new.py: indexed anyway
    digests, to_hash = changes.known_hashes(files, rows, stat_check=False)
    assert digests == {}
    assert [s.rel_path for s in to_hash] == ["same.py", "touched.py"]


def test_stats_to_store_updates_unchanged_files_whose_stat_moved() -> None:
    trusted = db.FileStat(10, NOW - 60 * S, 7, True)
    files: Sequence[SourceFile] = [
        source("same.py"),
        source("touched.py", mtime_ns=NOW - 30 * S),
        source("old-row.py"),
        source("changed.py", size=12),
        source("new.py"),
    ]
    rows = {
        "same.py": stored(trusted),
        "touched.py": stored(trusted),
        "old-row.py": stored(db.FileStat(10, None, None, False)),  # before revision 0008
        "changed.py": stored(trusted),
    }
    found = changes.stats_to_store(files, rows, [files[3]], NOW)
    assert found == [
        ("touched.py", db.FileStat(10, NOW - 30 * S, 7, True)),
        ("old-row.py", db.FileStat(10, NOW - 60 * S, 7, True)),
    ]


# --- real files ------------------------------------------------------------------------

pytestmark_anyio = pytest.mark.anyio


class HashCounter:
    """Counts the files the indexer reads to hash (stored files only)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = pipeline.hash_batch

        def counting(sources: Sequence[SourceFile]) -> list[str | None]:
            self.paths.extend(s.rel_path for s in sources)
            return real(sources)

        monkeypatch.setattr(pipeline, "hash_batch", counting)

    def take(self) -> list[str]:
        taken, self.paths = sorted(self.paths), []
        return taken


def age(path: Path, seconds: float = 60.0) -> None:
    """Date the file back, as if it had been written a while ago."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * S)))


async def stored_stat(pg_url: str, path: str) -> tuple[int, int | None, int | None, bool]:
    conn = await asyncpg.connect(pg_url)
    try:
        row = await conn.fetchrow(
            "SELECT size, mtime_ns, inode, stat_trusted FROM files WHERE path = $1", path
        )
    finally:
        await conn.close()
    assert row is not None
    return (row["size"], row["mtime_ns"], row["inode"], row["stat_trusted"])


@pytestmark_anyio
async def test_an_unchanged_reindex_reads_no_file_and_a_touched_one_once(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "mods", 20)
    for f in repo.iterdir():
        age(f)
    hashed = HashCounter(monkeypatch)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        first = await index_and_wait(engine, repo)
        assert (first.state, first.files_done) == (JobState.COMPLETED, 20)
        st = (repo / "mods_003.py").stat()
        assert await stored_stat(pg_url, "mods_003.py") == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            True,
        )
        hashed.take()

        again = await index_and_wait(engine, repo)
        assert again.files_unchanged == 20
        assert hashed.take() == []  # no stored file was read

        # touched: same bytes, new mtime -> read once, unchanged, its new stat stored
        touched = repo / "mods_005.py"
        touched.write_text(touched.read_text())
        age(touched, 30)
        fake_ollama.embedded_texts.clear()
        job = await index_and_wait(engine, repo)
        assert (job.files_unchanged, fake_ollama.embedded_texts) == (20, [])
        assert hashed.take() == ["mods_005.py"]
        assert (await stored_stat(pg_url, "mods_005.py"))[1] == touched.stat().st_mtime_ns
        await index_and_wait(engine, repo)
        assert hashed.take() == []


@pytestmark_anyio
async def test_a_racily_clean_file_is_hashed_again_and_its_change_found(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file indexed right after a write, then changed within the same timestamp tick
    (same size, same mtime, same inode): only the racy rule finds the change."""
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "mods", 3)
    hashed = HashCounter(monkeypatch)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await index_and_wait(engine, repo)  # every file written moments ago
        assert (await stored_stat(pg_url, "mods_001.py"))[3] is False
        target = repo / "mods_001.py"
        before = target.stat()
        text = target.read_text()
        target.write_text(text.replace("mods_lookup_1", "mods_lookUP_1"))  # same size
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same tick
        assert target.stat().st_ino == before.st_ino
        hashed.take()
        job = await index_and_wait(engine, repo)
        assert "mods_001.py" in hashed.take()
        assert job.files_unchanged == 2  # the changed file was re-indexed
        response = await engine.search("mods_lookUP_1", mode="lexical")
        assert response.results[0].path == "mods_001.py"


@pytestmark_anyio
async def test_a_change_that_keeps_size_mtime_and_inode_needs_stat_check_off(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    """The limit of the stat check, as git's: a trusted file changed in place with its
    size and mtime put back (`cp -p`, some restore tools) is not read again;
    CODEBASE_STAT_CHECK=false reads every file."""
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "mods", 3)
    for f in repo.iterdir():
        age(f)
    target = repo / "mods_002.py"
    before = target.stat()

    def sneak_in() -> None:
        target.write_text(target.read_text().replace("mods_store_2", "mods_stash_2"))
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))

    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await index_and_wait(engine, repo)
        sneak_in()
        job = await index_and_wait(engine, repo)
        assert job.files_unchanged == 3
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_STAT_CHECK="false")
    async with open_engine(settings) as engine:
        job = await index_and_wait(engine, repo)
        assert job.files_unchanged == 2
        response = await engine.search("mods_stash_2", mode="lexical")
        assert response.results[0].path == "mods_002.py"


def test_a_known_skip_with_the_same_stat_is_counted_unread() -> None:
    trusted = db.FileStat(10, NOW - 60 * S, 7, True)
    known: changes.KnownSkips = {
        "blob.py": (trusted, SkipReason.BINARY, None),
        "grown.py": (trusted, SkipReason.TOO_LARGE, None),
    }
    files = [source("blob.py"), source("grown.py", size=99), source("new.py")]
    to_read, skipped = changes.split_known_skips(files, known)
    assert [s.rel_path for s in to_read] == ["grown.py", "new.py"]
    assert skipped == [changes.SkippedFile("blob.py", SkipReason.BINARY, None)]


@pytestmark_anyio
async def test_files_found_binary_are_counted_again_without_being_read(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "mods", 2)
    (repo / "blob.py").write_bytes(b"def x():\x00\x01" * 20)
    for f in repo.iterdir():
        age(f)
    read: list[str] = []
    real = pipeline.prepare_batch

    def counting(sources: Sequence[SourceFile], max_bytes: int) -> list[object]:
        read.extend(s.rel_path for s in sources)
        return real(sources, max_bytes)  # type: ignore[return-value]

    monkeypatch.setattr(pipeline, "prepare_batch", counting)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        first = await index_and_wait(engine, repo)
        assert dict(first.skipped) == {"binary": 1}
        assert sorted(read) == ["blob.py", "mods_000.py", "mods_001.py"]
        read.clear()
        again = await index_and_wait(engine, repo)
        assert (dict(again.skipped), again.files_done, again.files_total) == ({"binary": 1}, 3, 3)
        assert read == []
        (repo / "blob.py").write_text("def no_longer_binary():\n    return 1\n")
        fixed = await index_and_wait(engine, repo)
        assert (dict(fixed.skipped), read) == ({}, ["blob.py"])
