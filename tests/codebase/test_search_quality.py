"""Search that finds the right code (issue 10), against a real PostgreSQL: each defect the
issue found is pinned here, and the BM25 statistics the indexer keeps are checked against
a full recount after indexing, edits, deletions and concurrent writers."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from codebase_mcp.engine import Engine, JobState
from codebase_mcp.search.filters import Filters
from codebase_mcp.search.hybrid import lexical_hits, vector_hits
from tests.codebase.fixtures_engine import index_and_wait, migrate_async, open_engine, settings_for
from tests.support.fake_ollama import FakeOllama

pytestmark = pytest.mark.anyio


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


async def indexed(engine: Engine, repo: Path) -> None:
    job = await index_and_wait(engine, repo)
    assert job.state is JobState.COMPLETED, job


def getters(count: int) -> dict[str, str]:
    """Many modules full of a common word ('get')."""
    return {
        f"pkg/mod_{i:04}.py": "".join(
            f"def get_item_{i}_{j}(d, key):\n    return d.get(key) or d.get(key.lower())\n\n\n"
            for j in range(3)
        )
        for i in range(count)
    }


async def test_a_rare_word_beside_a_common_one_finds_its_definition(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    # 1,800 chunks say 'get' (more than the old engine ranked: it took an arbitrary 1,000
    # matching rows); one defines the rare word. BM25's idf puts it first.
    files = getters(600)
    files["pkg/zzz_rare.py"] = "def frobnicate(widget):\n    return widget.spin()\n"
    repo = write(tmp_path / "repo", files)
    await migrate_async(pg_url)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await indexed(engine, repo)
        response = await engine.search("get frobnicate", mode="lexical", limit=5)
        assert response.results[0].symbol == "frobnicate"
        # a common word alone still answers, from its best chunks
        common = await engine.search("get", mode="lexical", limit=5)
        assert len(common.results) == 5
        assert all("get" in r.snippet for r in common.results)


async def test_stems_and_derived_forms_match_and_the_exact_form_ranks_first(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    repo = write(
        tmp_path / "repo",
        {
            "net/client.py": (
                "def send(request, retries=3):\n"
                '    """Send, trying again up to `retries` times."""\n'
                "    return request\n"
            ),
            "net/policy.py": "def retry(call):\n    return call()\n",
            "db/wal.py": (
                "class Recovery:\n"
                '    """Replays the log after a crash."""\n'
                "    def replay(self):\n        return None\n"
            ),
            "misc/other.py": "def unrelated(x):\n    return x\n",
        },
    )
    await migrate_async(pg_url)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await indexed(engine, repo)
        retry = await engine.search("retry", mode="lexical")
        paths = [r.path for r in retry.results]
        assert paths[0] == "net/policy.py"  # the exact form first
        assert "net/client.py" in paths  # retries: the same stem
        recover = await engine.search("recover after a crash", mode="lexical")
        assert recover.results[0].symbol == "Recovery"  # recovery: a derived form


async def test_non_ascii_words_are_found(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    repo = write(
        tmp_path / "repo",
        {
            "i18n/names.py": "def 名前を返す():\n    # 名前を返す関数\n    return '名前'\n",
            "i18n/dessert.py": "def crème_brûlée(sucre):\n    return sucre\n",
            "i18n/strasse.py": 'STRASSE = "Große Straße"\n',
            "plain.py": "def plain():\n    return 1\n",
        },
    )
    await migrate_async(pg_url)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await indexed(engine, repo)
        for query, path in (
            ("名前", "i18n/names.py"),
            ("crème", "i18n/dessert.py"),
            ("Crème brûlée", "i18n/dessert.py"),
            ("straße", "i18n/strasse.py"),
        ):
            response = await engine.search(query, mode="lexical")
            assert [r.path for r in response.results][:1] == [path], query


async def test_the_definition_ranks_above_tests_and_docs_that_mention_it(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    tests = "".join(
        f"def test_url_for_{i}(app):\n    assert url_for('index') == url_for('index')\n\n\n"
        for i in range(6)
    )
    files = getters(30)  # the name is rare in the repository, as names are
    files |= {
        "src/app/helpers.py": (
            "def url_for(endpoint, **values):\n"
            '    """Build the URL of an endpoint."""\n'
            "    return '/' + endpoint\n"
        ),
        "tests/test_helpers.py": tests,
        "docs/api.md": "# url_for\n\nCall `url_for` to build a URL: url_for('index').\n",
    }
    repo = write(tmp_path / "repo", files)
    await migrate_async(pg_url)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await indexed(engine, repo)
        for mode in ("lexical", "hybrid"):
            response = await engine.search("url_for", mode=mode)  # type: ignore[arg-type]
            assert response.results[0].path == "src/app/helpers.py", mode
        # unless the query asks for tests
        asked = await engine.search("tests of url_for", mode="lexical")
        assert asked.results[0].path == "tests/test_helpers.py"


async def test_adjacent_pieces_of_one_definition_are_one_result(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    # A function far over the chunk size is split at statement boundaries; every piece
    # mentions the query's words.
    body = "".join(f"    handle_payload_step(payload, {i})\n" for i in range(400))
    repo = write(
        tmp_path / "repo",
        {"big.py": f"def process_payload(payload):\n{body}    return payload\n"},
    )
    await migrate_async(pg_url)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await indexed(engine, repo)
        async with engine.pool.acquire() as conn:
            pieces = await conn.fetch(
                "SELECT start_line, end_line FROM chunks WHERE symbol = 'process_payload' "
                "ORDER BY start_line"
            )
        assert len(pieces) >= 3
        response = await engine.search("handle payload step", mode="lexical")
        merged = [r for r in response.results if r.symbol == "process_payload"]
        assert len(merged) == 1
        (result,) = merged
        assert (result.start_line, result.end_line) == (
            pieces[0]["start_line"],
            pieces[-1]["end_line"],
        )
        # the snippet keeps the file's lines: line n of the file is line n of the snippet
        lines = (repo / "big.py").read_text().splitlines()
        assert result.snippet.splitlines() == lines[result.start_line - 1 : result.end_line]


async def test_scores_fall_as_the_rank_grows_even_on_a_hash_join_plan(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    files = getters(40)
    files["auth/basic.py"] = (
        "class BasicAuth:\n    def auth_flow(self, request):\n        return request\n"
    )
    files["auth/tests/test_basic.py"] = "".join(
        f"def test_basic_auth_{i}():\n    assert BasicAuth() is not None\n\n\n" for i in range(5)
    )
    repo = write(tmp_path / "repo", files)
    await migrate_async(pg_url)
    # The planner's choice on a fresh database that returned rows in ascending score
    # order through the final join: no nested loops at all.
    conn = await asyncpg.connect(pg_url)
    try:
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{database}" SET enable_nestloop = off')
    finally:
        await conn.close()
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await indexed(engine, repo)
        async with engine.pool.acquire() as conn:
            assert await conn.fetchval("SHOW enable_nestloop") == "off"
            lexical = await lexical_hits(conn, "BasicAuth get", Filters(), 30)
            assert engine.model is not None
            vector = await vector_hits(
                conn, engine.model, fake_ollama.embed(["BasicAuth"])[0], Filters(), 30
            )
        for hits in (lexical, vector):
            scores = [h.score for h in hits]
            assert len(scores) > 5
            assert scores == sorted(scores, reverse=True)
        for mode in ("lexical", "vector", "hybrid"):
            response = await engine.search("BasicAuth", mode=mode, limit=10)  # type: ignore[arg-type]
            scores = [r.score for r in response.results]
            assert len(scores) >= 4, mode
            assert scores == sorted(scores, reverse=True), mode
            if mode != "vector":  # the test embedder is a bag of words: no judge of meaning
                assert response.results[0].symbol == "BasicAuth", mode


# --- the statistics -------------------------------------------------------------------------


async def statistics_match_a_recount(url: str, *, compacted: bool = True) -> None:
    """The statistics search reads (compacted plus deltas) equal a recount; `compacted`:
    no delta is left (every job folded its own in)."""
    conn = await asyncpg.connect(url)
    try:
        kept = {
            (r["lexeme"], r["repository_id"]): r["df"]
            for r in await conn.fetch(
                "SELECT lexeme, repository_id, sum(df) AS df FROM ("
                " SELECT lexeme, repository_id, df FROM lexeme_stats"
                " UNION ALL SELECT lexeme, repository_id, delta FROM lexeme_deltas"
                ") s GROUP BY 1, 2"
            )
            if r["df"] != 0
        }
        recount = {
            (r["l"], r["repository_id"]): r["n"]
            for r in await conn.fetch(
                "SELECT l, repository_id, count(*) AS n "
                "FROM chunks, unnest(tsvector_to_array(tsv)) AS l GROUP BY 1, 2"
            )
        }
        assert kept == recount
        repos = await conn.fetch(
            "SELECT r.id, r.chunk_count + coalesce(d.chunks, 0) AS chunk_count, "
            "r.body_length_sum + coalesce(d.body, 0) AS body_length_sum, "
            "(SELECT count(*) FROM chunks c WHERE c.repository_id = r.id) AS n, "
            "(SELECT coalesce(sum(body_length), 0) FROM chunks c "
            " WHERE c.repository_id = r.id) AS total FROM repositories r "
            "LEFT JOIN (SELECT repository_id, sum(chunks) AS chunks, sum(body_length) AS body "
            " FROM corpus_deltas GROUP BY 1) d ON d.repository_id = r.id"
        )
        for r in repos:
            assert (r["chunk_count"], r["body_length_sum"]) == (r["n"], r["total"])
        if compacted:
            assert await conn.fetchval("SELECT count(*) FROM lexeme_deltas") == 0
            assert await conn.fetchval("SELECT count(*) FROM corpus_deltas") == 0
            assert await conn.fetchval("SELECT count(*) FROM lexeme_stats WHERE df <= 0") == 0
    finally:
        await conn.close()


async def test_statistics_follow_indexing_edits_deletions_and_removal(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    files = getters(120)
    repo = write(tmp_path / "repo", files)
    other = write(tmp_path / "other", {"x.py": "def get_other(d):\n    return d.get(1)\n"})
    await migrate_async(pg_url)
    # Small batches and two writers: the batches of one job commit concurrently.
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="4")
    async with open_engine(settings) as engine:
        await indexed(engine, repo)
        await indexed(engine, other)
        await statistics_match_a_recount(pg_url)
        # edits, a deletion, a new file, a file that becomes binary
        (repo / "pkg/mod_0000.py").write_text("def renamed_entirely(a):\n    return a\n")
        (repo / "pkg/mod_0001.py").unlink()
        (repo / "pkg/new.py").write_text("def brand_new(b):\n    return b.get(2)\n")
        (repo / "pkg/mod_0002.py").write_bytes(b"\x00\x01binary")
        await indexed(engine, repo)
        await statistics_match_a_recount(pg_url)
        await engine.remove_repository(str(repo))
        await statistics_match_a_recount(pg_url)
        conn = await asyncpg.connect(pg_url)
        try:
            assert (
                await conn.fetchval("SELECT count(DISTINCT repository_id) FROM lexeme_stats") == 1
            )
        finally:
            await conn.close()


async def test_deltas_count_at_once_and_a_crashed_jobs_are_folded_in_at_start(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    from codebase_mcp.store import db, stats

    repo = write(tmp_path / "repo", getters(20))
    await migrate_async(pg_url)
    settings = settings_for(pg_url, fake_ollama, tmp_path)
    async with open_engine(settings) as engine:
        await indexed(engine, repo)
        # A batch committed by a job that then died: its deltas, never folded in.
        async with engine.pool.acquire() as conn, conn.transaction():
            repository_id = await conn.fetchval("SELECT id FROM repositories")
            (repo / "pkg/extra.py").write_text("def zanzibar_quux(x):\n    return x\n")
            await db.delete_files(conn, repository_id, ["pkg/mod_0000.py"])
        await statistics_match_a_recount(pg_url, compacted=False)
        async with engine.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM lexeme_deltas") > 0
            assert await stats.repositories_with_deltas(conn) == [repository_id]
        # search counts the deltas at once: the deleted module's words are gone
        gone = await engine.search("get_item_0_0", mode="lexical")
        assert all(r.path != "pkg/mod_0000.py" for r in gone.results)
    async with open_engine(settings) as engine:  # the next start folds them in
        with anyio.fail_after(10):
            while True:
                async with engine.pool.acquire() as conn:
                    if not await stats.repositories_with_deltas(conn):
                        break
                await anyio.sleep(0.05)
    await statistics_match_a_recount(pg_url)


async def test_a_first_fold_meeting_words_already_counted_adds_to_them(pg_url: str) -> None:
    """A repository that counts no chunk has its words inserted without a look for each;
    should one be counted after all, the fold still adds to it rather than failing."""
    from codebase_mcp.store import stats

    await migrate_async(pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        repository_id = await conn.fetchval(
            "INSERT INTO repositories (path) VALUES ('/r') RETURNING id"
        )
        fresh = stats.share({"alpha": 2, "beta": 1}, chunks=2, body_length=10)
        async with conn.transaction():
            await stats.record(conn, repository_id, fresh)
        await stats.compact(conn, repository_id)  # the fast way
        assert dict(await conn.fetch("SELECT lexeme, df FROM lexeme_stats")) == {
            "alpha": 2,
            "beta": 1,
        }
        # Counted words, yet no chunks counted: the fast way meets "alpha" and backs off.
        await conn.execute("UPDATE repositories SET chunk_count = 0")
        async with conn.transaction():
            await stats.record(conn, repository_id, stats.share({"alpha": 1, "gamma": 1}, 1, 5))
        await stats.compact(conn, repository_id)
        assert dict(await conn.fetch("SELECT lexeme, df FROM lexeme_stats")) == {
            "alpha": 3,
            "beta": 1,
            "gamma": 1,
        }
        assert await conn.fetchval("SELECT count(*) FROM lexeme_deltas") == 0
        assert await conn.fetchval("SELECT chunk_count FROM repositories") == 1
    finally:
        await conn.close()
