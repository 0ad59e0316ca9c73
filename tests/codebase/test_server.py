"""The MCP surface through FastMCP's in-memory client, against a real PostgreSQL and the
local Ollama-API server: tools, progress, errors users can read, the health resource."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastmcp import Client, FastMCP

from codebase_mcp.config import load_settings
from codebase_mcp.models import JobInfo, JobState
from codebase_mcp.serve.server import AppState, build_server, progress_message
from tests.codebase.fixtures_engine import migrate
from tests.support.fake_ollama import FakeOllama

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {
    "index_repository",
    "get_indexing_status",
    "search_code",
    "list_repositories",
    "remove_repository",
    "sync_repository",
}


def write_repo(root: Path) -> Path:
    """A small repository in three languages, with a gitignored file."""
    repo = root / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "dates.py").write_text(
        "import datetime\n\n\n"
        "def parse_iso_date(text):\n"
        '    """Parse an ISO 8601 date string into a date object."""\n'
        "    return datetime.date.fromisoformat(text)\n\n\n"
        "class Calendar:\n"
        "    def add_holiday(self, day):\n"
        "        self.holidays.append(day)\n"
    )
    (repo / "cart.ts").write_text(
        "export function renderShoppingCart(items: string[]): string {\n"
        "  return items.join(', ');\n"
        "}\n"
    )
    (repo / "main.go").write_text(
        "package main\n\nfunc ComputeChecksum(data []byte) uint32 {\n\treturn 0\n}\n"
    )
    (repo / ".gitignore").write_text("secret_notes.py\n")
    (repo / "secret_notes.py").write_text("def hidden_gitignored_function():\n    pass\n")
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_repo(tmp_path)


@pytest.fixture
async def served(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> AsyncIterator[tuple[Client[Any], FastMCP[AppState], AppState]]:
    await anyio.to_thread.run_sync(migrate, pg_url)  # alembic's env runs its own loop
    settings = load_settings(
        env={
            "REGISTRY_DATABASE_URL": pg_url,
            "OLLAMA_BASE_URL": fake_ollama.url,
            "CODEBASE_ROOTS": str(tmp_path),
            "CODEBASE_INDEX_WORKERS": "1",
        }
    )
    mcp, state = build_server(settings)
    async with Client(mcp) as client:
        yield client, mcp, state


async def call(client: Client[Any], tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert result.structured_content is not None
    return result.structured_content


async def error_of(client: Client[Any], tool: str, **args: Any) -> str:
    result = await client.call_tool(tool, args, raise_on_error=False)
    assert result.is_error, result
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert "Traceback" not in text
    return text


async def wait_done(client: Client[Any], job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = await call(client, "get_indexing_status", job_id=job_id)
        if status["finished"]:
            return status
        await anyio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {status}")


@pytest.mark.anyio
async def test_lists_the_tools_and_the_health_resource(
    served: tuple[Client[Any], FastMCP[AppState], AppState],
) -> None:
    client, _, _ = served
    tools = {t.name: t for t in await client.list_tools()}
    assert set(tools) == TOOLS
    index_props = tools["index_repository"].input_schema["properties"]
    assert {"path", "force", "wait", "watch"} <= set(index_props)
    search_props = tools["search_code"].input_schema["properties"]
    assert {"query", "repository", "language", "path_glob", "limit"} <= set(search_props)
    resources = [str(r.uri) for r in await client.list_resources()]
    assert "health://status" in resources

    contents = await client.read_resource("health://status")
    health = json.loads(getattr(contents[0], "text", ""))
    assert {"database", "embedder", "jobs"} <= set(health)
    assert health["status"] == "ok", health


@pytest.mark.anyio
async def test_index_poll_search_list_remove(
    served: tuple[Client[Any], FastMCP[AppState], AppState], repo: Path
) -> None:
    client, _, _ = served
    started = await call(client, "index_repository", path=str(repo))
    assert started["job_id"]
    assert started["repository"] == str(repo)

    done = await wait_done(client, started["job_id"])
    assert done["state"] == "completed", done
    assert done["files_done"] == done["files_total"] >= 3
    assert done["chunks_done"] > 0

    found = await call(client, "search_code", query="parse_iso_date", limit=3)
    top = found["results"][0]
    assert top["path"] == "pkg/dates.py"
    assert top["symbol"] == "parse_iso_date"
    assert top["repository"] == str(repo)
    assert top["language"] == "python"
    assert top["start_line"] == 4
    assert top["end_line"] >= 6
    assert "def parse_iso_date" in top["snippet"]
    assert top["mode"] in ("hybrid", "vector", "lexical")
    assert isinstance(top["score"], float)

    by_meaning = await call(client, "search_code", query="shopping cart", language="typescript")
    assert [r["path"] for r in by_meaning["results"]][:1] == ["cart.ts"]

    hidden = await call(client, "search_code", query="hidden_gitignored_function")
    assert all(r["path"] != "secret_notes.py" for r in hidden["results"])

    repos = (await call(client, "list_repositories"))["repositories"]
    assert [r["path"] for r in repos] == [str(repo)]
    assert repos[0]["chunks"] > 0
    assert repos[0]["embedding_model"]
    # not watched: nobody counts pending changes
    assert (repos[0]["watched"], repos[0]["watcher"], repos[0]["pending_changes"]) == (
        False,
        None,
        None,
    )
    assert repos[0]["synced_at"] is not None

    removed = await call(client, "remove_repository", path=str(repo))
    assert removed["removed"]["path"] == str(repo)
    assert (await call(client, "list_repositories"))["repositories"] == []
    assert "repo" in await error_of(client, "remove_repository", path=str(repo))


@pytest.mark.anyio
async def test_sync_repository_applies_an_edit_that_search_flagged_stale(
    served: tuple[Client[Any], FastMCP[AppState], AppState], repo: Path
) -> None:
    client, _, _ = served
    first = await call(client, "sync_repository", path=str(repo))  # not indexed yet: indexed
    assert (first["state"], first["in_sync"]) == ("completed", True)
    before = first["repository"]["synced_at"]
    found = await call(client, "search_code", query="parse_iso_date", limit=3)
    assert found["results"][0]["stale"] is False

    (repo / "pkg" / "dates.py").write_text("def parse_calendar_day(text):\n    return text\n")
    found = await call(client, "search_code", query="parse_iso_date", limit=3)
    assert (found["results"][0]["path"], found["results"][0]["stale"]) == ("pkg/dates.py", True)

    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    result = await client.call_tool(
        "sync_repository", {"path": str(repo)}, progress_handler=on_progress
    )
    synced = result.structured_content
    assert synced is not None and synced["in_sync"] is True, synced
    assert synced["files_unchanged"] == synced["files_done"] - 1
    assert synced["repository"]["synced_at"] > before
    assert seen
    found = await call(client, "search_code", query="parse_calendar_day", limit=3)
    assert (found["results"][0]["path"], found["results"][0]["stale"]) == ("pkg/dates.py", False)

    health = json.loads(getattr((await client.read_resource("health://status"))[0], "text", ""))
    (fresh,) = health["repositories"]
    assert fresh["path"] == str(repo) and fresh["watched"] is False


@pytest.mark.anyio
async def test_index_with_wait_reports_progress(
    served: tuple[Client[Any], FastMCP[AppState], AppState], repo: Path
) -> None:
    client, _, _ = served
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    result = await client.call_tool(
        "index_repository", {"path": str(repo), "wait": True}, progress_handler=on_progress
    )
    final = result.structured_content
    assert final is not None
    assert final["state"] == "completed"
    assert seen, "no progress notification"
    assert seen[-1][0] == seen[-1][1] == final["files_total"]
    assert "completed" in (seen[-1][2] or "")


@pytest.mark.anyio
async def test_a_second_index_call_returns_the_running_job(
    served: tuple[Client[Any], FastMCP[AppState], AppState],
    repo: Path,
    fake_ollama: FakeOllama,
) -> None:
    client, _, _ = served
    fake_ollama.embed_delay = 0.5  # keep the first job running
    first = await call(client, "index_repository", path=str(repo))
    second = await call(client, "index_repository", path=str(repo))
    assert second["job_id"] == first["job_id"]
    fake_ollama.embed_delay = 0.0
    assert (await wait_done(client, first["job_id"]))["state"] == "completed"


@pytest.mark.anyio
async def test_bad_input_gets_clear_errors(
    served: tuple[Client[Any], FastMCP[AppState], AppState], tmp_path: Path
) -> None:
    client, _, _ = served
    outside = await error_of(client, "index_repository", path="/etc")
    assert "not under an allowed root" in outside
    assert str(tmp_path) in outside  # names the allowed roots

    missing = await error_of(client, "get_indexing_status", job_id="no-such-job")
    assert "no-such-job" in missing

    assert "query must not be empty" in await error_of(client, "search_code", query="   ")
    assert "limit" in await error_of(client, "search_code", query="x", limit=0)


def test_progress_messages_say_what_a_running_job_does() -> None:
    running = JobInfo(
        id="j",
        repository="/r",
        state=JobState.RUNNING,
        files_total=10,
        files_done=10,
        chunks_total=40,
        chunks_done=40,
        message="building the vector index (40 vectors)",
    )
    assert progress_message(running) == (
        "running: 10/10 files, 40/40 chunks; building the vector index (40 vectors)"
    )
    failed = replace(running, state=JobState.FAILED, message="boom")
    assert progress_message(failed) == "failed: 10/10 files, 40/40 chunks"


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("search_code", {"query": "x", "path_glob": "[z-a]"}, "path_glob: the range z-a"),
    ("search_code", {"query": "x", "path_glob": "[!]"}, "path_glob: the character class"),
    ("search_code", {"query": "x", "path_glob": "src/["}, "is never closed"),
    ("search_code", {"query": "x", "path_glob": "a\x00b"}, "path_glob: contains a NUL"),
    ("search_code", {"query": "x", "path_glob": "*" * 5000}, "path_glob: too long"),
    ("search_code", {"query": "x\x00y"}, "query: contains a NUL"),
    ("search_code", {"query": "x", "repository": "%"}, "no indexed repository named '%'"),
    ("search_code", {"query": "x", "repository": "/r\x00"}, "repository: contains a NUL"),
    ("search_code", {"query": "x", "repository": "\udce9"}, "unpaired surrogate (U+DCE9)"),
    ("search_code", {"query": "x", "language": "py\x00"}, "language: contains a NUL"),
    ("search_code", {"query": "x", "language": "x" * 5000}, "language: too long"),
    ("search_code", {"query": "x", "limit": 10**30}, "limit"),
    ("index_repository", {"path": "{root}/missing"}, "/missing does not exist"),
    ("index_repository", {"path": "{root}/re\x00po"}, "path: contains a NUL"),
    ("index_repository", {"path": "{root}/repo/cart.ts"}, "is not a directory"),
    ("index_repository", {"path": "\ud800"}, "path: contains an unpaired surrogate"),
    ("index_repository", {"path": "{root}\\repo"}, "path: a backslash at position"),
    ("index_repository", {"path": "x" * 100_000}, "path: too long"),
    ("index_repository", {"path": "{root}"}, "contains 1 indexed repository"),
    ("index_repository", {"path": "{root}/repo/pkg"}, "inside the indexed repository"),
    ("get_indexing_status", {"job_id": "\x00"}, "job_id: contains a NUL"),
    ("get_indexing_status", {"job_id": "j" * 100_000}, "job_id: too long"),
    ("remove_repository", {"path": "{root}/r\x00"}, "path: contains a NUL"),
    ("remove_repository", {"path": "_epo"}, "no indexed repository named '_epo'"),
]


@pytest.mark.anyio
async def test_hostile_arguments_get_validation_errors_never_a_crash(
    served: tuple[Client[Any], FastMCP[AppState], AppState],
    repo: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    client, _, _ = served
    await wait_done(client, (await call(client, "index_repository", path=str(repo)))["job_id"])
    for tool, args, expected in HOSTILE:
        args = {
            k: v.replace("{root}", str(tmp_path)) if isinstance(v, str) else v
            for k, v in args.items()
        }
        text = await error_of(client, tool, **args)
        assert expected in text, (tool, args, text)
        assert "unexpectedly" not in text, (tool, args, text)
    logged = capfd.readouterr().err
    assert "tool failed" not in logged  # _tool_error logs only what it did not expect
    assert "Traceback" not in logged


@pytest.mark.anyio
async def test_status_counts_unchanged_files_and_skips_by_reason(
    served: tuple[Client[Any], FastMCP[AppState], AppState], repo: Path
) -> None:
    client, _, _ = served
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n")
    (repo / "legacy.py").write_bytes("def legacy():\n    return 'été'\n".encode("latin-1"))
    first = await wait_done(
        client, (await call(client, "index_repository", path=str(repo)))["job_id"]
    )
    assert first["files_skipped"] == {"binary": 1}
    assert first["files_unchanged"] == 0
    assert first["errors"] == []
    again = await wait_done(
        client, (await call(client, "index_repository", path=str(repo)))["job_id"]
    )
    assert again["files_unchanged"] == again["files_total"] == 5
    assert again["files_skipped"] == {"binary": 1}
    found = await call(client, "search_code", query="legacy")
    assert found["results"][0]["path"] == "legacy.py"
