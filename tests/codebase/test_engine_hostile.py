"""What a hostile user throws at the engine, against a real PostgreSQL and the local
Ollama-API server: file and directory names that are not UTF-8 (or hold backslashes,
newlines, emoji), sources in legacy encodings, files skipped for every reason, repository
filters that look like patterns, overlapping repositories, an embedder that is down, and
`force` while a job runs."""

from __future__ import annotations

import os
import random
from pathlib import Path

import anyio
import pytest

from codebase_mcp import paths
from codebase_mcp.engine import EngineError, JobState, RepositoryNotFoundError
from codebase_mcp.validate import InvalidArgumentError
from tests.codebase.fixtures_engine import (
    index_and_wait,
    migrate_async,
    open_engine,
    settings_for,
    wait_for_progress,
    write_modules,
    write_repo,
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

        # the repository by its name (text form) and by its path
        for given in ("r\\xe9po", "r\\xE9po", repo_text, repo_text + "/"):
            found = await engine.search("latin_name", repository=given, mode="lexical")
            # any word matches (other *_name functions follow); the named one comes first
            assert found.results[0].path == "caf\\xe9.py", given
            assert {r.repository for r in found.results} == {repo_text}, given

        again = await index_and_wait(engine, repo_text)
        assert (again.files_unchanged, again.files_deleted) == (len(WEIRD), 0)

        os.unlink(repo + b"/caf\xe9.py")
        os.unlink(repo + b"/a\\b.py")
        third = await index_and_wait(engine, repo_text)
        assert third.state is JobState.COMPLETED, third
        assert (third.files_unchanged, third.files_deleted) == (len(WEIRD) - 2, 2)
        for function in ("latin_name", "backslash_name"):
            found = await engine.search(function, mode="lexical")
            assert all(r.symbol != function for r in found.results)

        removed = await engine.remove_repository(repo_text)
        assert removed.path == repo_text
        assert await engine.list_repositories() == []


LEGACY_PY = ('# -*- coding: latin-1 -*-\ndef legacy_greeting():\n    return "Grüße, été"\n').encode(
    "latin-1"
)
CP1252_C = (
    "/* “smart” quotes \u2013 5 €, dernière mise à jour */\n"
    "int cp1252_function(void) { return 0; }\n"
).encode("cp1252")


def write_skips_repo(base: Path) -> Path:
    repo = base / "skips"
    repo.mkdir()
    (repo / "legacy.py").write_bytes(LEGACY_PY)
    (repo / "quotes.c").write_bytes(CP1252_C)
    (repo / "wide.py").write_bytes("def utf16_function():\n    return 'é'\n".encode("utf-16"))
    (repo / "plain.py").write_text("def plain_function():\n    return 1\n")
    (repo / "huge.txt").write_text("word " * 5000)  # over CODEBASE_MAX_FILE_SIZE below
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n")  # binary by name
    (repo / "blob.py").write_bytes(b"def x():\x00\x01\x02")  # binary by content
    noise = random.Random(7).randbytes(4000).replace(b"\x00", b"\x01")
    (repo / "noise.txt").write_bytes(noise)  # no encoding makes text of it
    (repo / "dangling.py").symlink_to(repo / "nowhere.py")
    os.mkfifo(repo / "pipe.py")
    (repo / ".gitignore").write_text("ignored.py\n")
    (repo / "ignored.py").write_text("def ignored_function():\n    pass\n")
    return repo


async def test_legacy_encodings_are_indexed_and_skips_are_counted_by_reason(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_skips_repo(tmp_path)
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_MAX_FILE_SIZE="10000")
    async with open_engine(settings) as engine:
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED, job
        expected = {
            "too_large": 1,
            "binary": 2,
            "undecodable": 1,
            "broken_symlink": 1,
            "not_regular": 1,
        }
        assert dict(job.skipped) == expected  # ignore rules are a choice, not a skip
        assert job.errors == ()

        legacy = (await engine.search("legacy_greeting", mode="lexical")).results[0]
        assert (legacy.path, legacy.symbol) == ("legacy.py", "legacy_greeting")
        assert "Grüße, été" in legacy.snippet  # the cookie's encoding, not a guess
        c_file = (await engine.search("cp1252_function", mode="lexical")).results[0]
        assert c_file.path == "quotes.c"
        assert "“smart” quotes \u2013 5 €, dernière mise à jour" in c_file.snippet
        wide = (await engine.search("utf16_function", mode="lexical")).results[0]
        assert wide.path == "wide.py"

        # the same counts on every run: skipped files are looked at again, never stored
        again = await index_and_wait(engine, repo)
        assert dict(again.skipped) == expected
        assert again.files_unchanged == 5  # the four sources and .gitignore
        status = await engine.job_status(again.id)  # as the jobs table has it
        assert dict(status.skipped) == expected


async def test_repository_filter_matches_exactly_a_path_or_an_unambiguous_name(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    first = write_repo(tmp_path / "a", "flask")
    second = write_repo(tmp_path / "b", "flask")
    httpx = write_repo(tmp_path, "httpx")
    (tmp_path / "link").symlink_to(first)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        for repo in (first, second, httpx):
            assert (await index_and_wait(engine, repo)).state is JobState.COMPLETED

        by_name = await engine.search("checksum", repository="httpx", limit=50)
        assert {r.repository for r in by_name.results} == {str(httpx)}
        for given in (str(first), f"{first}/", str(tmp_path / "link")):
            found = await engine.search("checksum", repository=given, limit=50)
            assert {r.repository for r in found.results} == {str(first)}, given

        with pytest.raises(InvalidArgumentError, match="2 indexed repositories are named") as e:
            await engine.search("checksum", repository="flask")
        assert str(first) in str(e.value) and str(second) in str(e.value)
        # no pattern matching: SQL wildcards, a part of a name, a path's tail
        for given in ("%", "_ttpx", "ttpx", "%/httpx", "b/flask"):
            with pytest.raises(RepositoryNotFoundError, match="no indexed repository") as e:
                await engine.search("checksum", repository=given)
            assert str(httpx) in str(e.value)  # names what is indexed
        with pytest.raises(InvalidArgumentError, match="named"):
            await engine.remove_repository("flask")
        assert len(await engine.list_repositories()) == 3


async def test_overlapping_repositories_are_refused_with_the_overlap_named(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    one, two = write_repo(tmp_path, "one"), write_repo(tmp_path, "two")
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        for repo in (one, two):
            assert (await index_and_wait(engine, repo)).state is JobState.COMPLETED
        with pytest.raises(EngineError, match="contains 2 indexed repositories") as e:
            await engine.start_index(str(tmp_path))
        assert str(one) in str(e.value) and str(two) in str(e.value)
        with pytest.raises(EngineError, match=f"inside the indexed repository {one}") as e:
            await engine.start_index(str(one / "app"))
        assert "path_glob 'app/**'" in str(e.value)
        assert [r.path for r in await engine.list_repositories()] == [str(one), str(two)]
        # every hit once
        hits = (await engine.search("parse_date", limit=50)).results
        assert len({(r.repository, r.path, r.start_line) for r in hits}) == len(hits)
        # the same repository again is no overlap
        assert (await index_and_wait(engine, one)).state is JobState.COMPLETED


async def test_an_embedder_outage_is_a_job_notice_and_no_model_is_claimed(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_repo(tmp_path)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        fake_ollama.fail_embed = True
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED
        assert job.errors == ()  # no file is at fault
        assert job.message is not None and job.message.startswith("embedder unavailable")
        (info,) = await engine.list_repositories()
        assert (info.embedding_model, info.embedding_dimensions) == (None, None)

        fake_ollama.fail_embed = False
        assert (await index_and_wait(engine, repo)).message is None
        # the chunks stored without vectors get them in the background
        await engine.catch_up_now()
        (info,) = await engine.list_repositories()
        assert (info.embedding_model, info.embedding_dimensions) == ("nomic-embed-text", 768)
        assert info.chunks_embedded == info.chunks

    other = write_modules(tmp_path, "lexical", 3)
    copy = write_repo(tmp_path, "copy")  # the same files as `repo`, at the same paths
    settings = settings_for(pg_url, fake_ollama, tmp_path)
    async with open_engine(settings, embedder=None, use_embedder=False) as engine:
        job = await index_and_wait(engine, other)
        assert job.errors == () and job.message is None
        await index_and_wait(engine, copy)
        infos = {i.path: i for i in await engine.list_repositories()}
        assert infos[str(other)].embedding_model is None
        # the store has a vector for each text already: the copy holds them too
        assert infos[str(copy)].embedding_model == "nomic-embed-text"
        # unchanged files keep their vectors: the model stays named
        await index_and_wait(engine, repo)
        infos = {i.path: i for i in await engine.list_repositories()}
        assert infos[str(repo)].embedding_model == "nomic-embed-text"


@pytest.mark.parametrize("bad", [1e6, float("nan")])
async def test_an_embedder_returning_a_value_the_store_cannot_hold_is_a_job_notice(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path, bad: float
) -> None:
    """Vectors are kept in half precision: a value beyond +-65504, or NaN (which Python's
    JSON reader accepts from a server), is the embedder's fault. The files are still
    stored for full-text search, no file is blamed, and the message names the model."""
    await migrate_async(pg_url)
    repo = write_repo(tmp_path)
    fake_ollama.embed_fn = lambda texts: [[0.5] * 767 + [bad] for _ in texts]
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED
        assert job.errors == ()
        assert job.message is not None
        assert "nomic-embed-text" in job.message and "65504" in job.message
        (info,) = await engine.list_repositories()
        assert info.chunks > 0 and info.chunks_embedded == 0
        found = await engine.search("open a socket connection")  # the query's vector too
        assert found.results[0].path == "app/net.py"
        assert found.notice is not None and "65504" in found.notice


async def test_force_while_a_job_runs_queues_a_forced_job_after_it(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "mods", 40)
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="4")
    async with open_engine(settings) as engine:
        fake_ollama.embed_delay = 0.2
        first = await engine.start_index(str(repo))
        await wait_for_progress(engine, first.id)
        forced = await engine.start_index(str(repo), force=True)
        assert forced.id != first.id
        assert (forced.state, forced.force) == (JobState.QUEUED, True)
        assert forced.message is not None and "starts when it ends" in forced.message
        assert (await engine.start_index(str(repo), force=True)).id == forced.id
        assert (await engine.start_index(str(repo))).id == first.id
        fake_ollama.embed_delay = 0.0

        with anyio.fail_after(60):
            done_first = await engine.wait_job(first.id)
            done_forced = await engine.wait_job(forced.id)
        assert done_first.state is JobState.COMPLETED
        assert done_forced.state is JobState.COMPLETED, done_forced
        assert done_forced.message is None
        assert done_forced.files_unchanged == 0  # everything again
        assert done_first.finished_at is not None and done_forced.started_at is not None
        assert done_forced.started_at >= done_first.finished_at

        # a queued job cancelled before its turn never runs; the running one goes on
        more = write_modules(tmp_path, "more", 40)
        fake_ollama.embed_delay = 0.2
        third = await engine.start_index(str(more))
        await wait_for_progress(engine, third.id)
        queued = await engine.start_index(str(more), force=True)
        cancelled = await engine.cancel_job(queued.id)
        assert cancelled.state is JobState.CANCELLED and cancelled.started_at is None
        fake_ollama.embed_delay = 0.0
        with anyio.fail_after(60):
            assert (await engine.wait_job(third.id)).state is JobState.COMPLETED
