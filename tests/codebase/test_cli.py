"""The human CLI: help, exit codes, and index/search as real subprocesses against a real
PostgreSQL and the local Ollama-API server."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from codebase_mcp import cli
from codebase_mcp.errors import ConfigError, DatabaseConnectError, EngineError, SchemaError
from codebase_mcp.models import (
    FileError,
    JobInfo,
    JobState,
    Progress,
    SearchResponse,
    SearchResult,
)
from codebase_mcp.source.discover import PathNotAllowedError
from tests.codebase.fixtures_engine import migrate
from tests.support.fake_ollama import FakeOllama
from tests.support.pg import PASSWORD, free_port

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "codebase_mcp"]


# --- pure parts -------------------------------------------------------------------------


def test_exit_codes_for_errors() -> None:
    assert cli.exit_code_for(ConfigError("bad")) == cli.CONFIG
    assert cli.exit_code_for(SchemaError("not migrated")) == cli.UNAVAILABLE
    assert cli.exit_code_for(ConnectionRefusedError()) == cli.UNAVAILABLE
    assert cli.exit_code_for(PathNotAllowedError("/etc", [Path("/work")])) == cli.USAGE
    assert cli.exit_code_for(EngineError("boom")) == cli.FAILURE
    # Connection failures: unreachable is 69; a server that refused our password, 78.
    assert cli.exit_code_for(DatabaseConnectError("cannot connect")) == cli.UNAVAILABLE
    assert cli.exit_code_for(DatabaseConnectError("cannot connect", "28P01")) == cli.CONFIG
    assert cli.exit_code_for(DatabaseConnectError("cannot connect", "57P03")) == cli.UNAVAILABLE
    assert cli.exit_code_for(RuntimeError("boom")) == cli.FAILURE
    assert cli.exit_code_for(ExceptionGroup("g", [ConfigError("x")])) == cli.CONFIG
    assert cli.exit_code_for_sqlstate("28P01") == cli.CONFIG  # wrong password
    assert cli.exit_code_for_sqlstate("08006") == cli.UNAVAILABLE
    assert cli.exit_code_for_sqlstate("57P03") == cli.UNAVAILABLE  # starting up
    assert cli.exit_code_for_sqlstate("42P01") == cli.FAILURE


def test_error_message_is_one_line_without_traceback() -> None:
    assert cli.error_message(ConfigError("invalid configuration: X")) == (
        "invalid configuration: X"
    )
    assert cli.error_message(ExceptionGroup("g", [RuntimeError("boom")])) == ("RuntimeError: boom")


def test_resolve_transport_and_port() -> None:
    assert cli.resolve_transport(None, {}) == "stdio"
    assert cli.resolve_transport(None, {"MCP_TRANSPORT": "HTTP"}) == "http"
    assert cli.resolve_transport(None, {"MCP_TRANSPORT": "streamable-http"}) == "http"
    assert cli.resolve_transport("stdio", {"MCP_TRANSPORT": "http"}) == "stdio"
    with pytest.raises(ConfigError, match="MCP_TRANSPORT"):
        cli.resolve_transport(None, {"MCP_TRANSPORT": "carrier-pigeon"})
    assert cli.resolve_port(None, {}) == cli.DEFAULT_PORT
    assert cli.resolve_port(None, {"MCP_PORT": "9000"}) == 9000
    assert cli.resolve_port(7000, {"MCP_PORT": "9000"}) == 7000
    with pytest.raises(ConfigError, match="MCP_PORT"):
        cli.resolve_port(None, {"MCP_PORT": "http"})
    with pytest.raises(ConfigError, match="MCP_PORT"):
        cli.resolve_port(None, {"MCP_PORT": "70000"})


def test_render_bar() -> None:
    assert cli.render_bar(5, 10, width=10) == "[#####.....]  50% 5/10"
    assert cli.render_bar(12, 10, width=4) == "[####] 100% 12/10"
    assert cli.render_bar(3, 0, width=3) == "[???] 3"


def test_format_results_and_summary() -> None:
    result = SearchResult(
        repository="/work/repo",
        path="pkg/dates.py",
        start_line=10,
        end_line=14,
        language="python",
        symbol="parse_date",
        kind="function",
        snippet="def parse_date(text):\n    ...\n",
        score=0.0327,
        mode="hybrid",
    )
    text = cli.format_results(SearchResponse("parse date", "hybrid", (result,), None, 3.2))
    assert " 1. pkg/dates.py:10-14  [python] parse_date  (score 0.0327, hybrid)" in text
    assert "    | def parse_date(text):" in text
    empty = cli.format_results(SearchResponse("zz", "lexical", (), "embedder unreachable", 1))
    assert "no results" in empty
    assert "embedder unreachable" in empty

    job = JobInfo(
        id="j1",
        repository="/work/repo",
        state=JobState.COMPLETED,
        files_total=3,
        files_done=3,
        chunks_done=7,
        files_unchanged=1,
        errors=(FileError("a.bin", "unreadable"),),
        finished_at=datetime.now(UTC),
    )
    summary = cli.format_summary(job, 2.0)
    assert summary.splitlines()[0] == "completed: /work/repo"
    assert "3/3 processed, 1 unchanged" in summary
    assert "a.bin: unreadable" in summary


# --- the command line -------------------------------------------------------------------


def test_help_documents_defaults_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for needle in (
        "serve",
        "index",
        "sync",
        "search",
        "REGISTRY_DATABASE_URL",
        "CODEBASE_ROOTS",
        "78",
    ):
        assert needle in out
    with pytest.raises(SystemExit):
        cli.main(["search", "--help"])
    out = capsys.readouterr().out
    assert "(default: 10)" in out
    assert "--path-glob" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["search"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["search", "q", "--limit", "0"])
    assert exc.value.code == 2


def _env(**extra: str) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        CLI + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_bad_config_exits_78_with_one_clear_line(tmp_path: Path) -> None:
    proc = _run(["serve"], _env(REGISTRY_DATABASE_URL="mysql://u:hunter2@h/db"), tmp_path)
    assert proc.returncode == 78
    assert "REGISTRY_DATABASE_URL" in proc.stderr
    assert "hunter2" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    proc = _run(["serve"], _env(MCP_TRANSPORT="carrier-pigeon"), tmp_path)
    assert proc.returncode == 78
    assert "MCP_TRANSPORT" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [["search", "anything"], ["serve"], ["serve", "--transport", "http", "--port", "0"]],
)
def test_database_down_exits_69(tmp_path: Path, args: list[str]) -> None:
    url = f"postgresql://u:hunter2@127.0.0.1:{free_port()}/db"
    proc = _run(args, _env(REGISTRY_DATABASE_URL=url), tmp_path)
    assert proc.returncode == 69, proc.stderr
    assert "cannot connect to PostgreSQL" in proc.stderr
    assert "hunter2" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_http_port_in_use_exits_1_in_one_line(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    import socket

    migrate(pg_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _env(REGISTRY_DATABASE_URL=pg_url, OLLAMA_BASE_URL=fake_ollama.url)
        proc = _run(["serve", "--transport", "http", "--port", str(port)], env, tmp_path)
    assert proc.returncode == 1
    assert f"codebase-mcp serve: cannot serve on http://127.0.0.1:{port}/mcp" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def _write_repo(root: Path) -> Path:
    repo = root / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "dates.py").write_text(
        "def parse_iso_date(text):\n"
        '    """Parse an ISO 8601 date string into a date."""\n'
        "    year, month, day = text.split('-')\n"
        "    return int(year), int(month), int(day)\n"
    )
    (repo / "web.js").write_text(
        "function renderShoppingCart(items) {\n  return items.map(String).join(',');\n}\n"
    )
    return repo


def test_index_then_search(pg_url: str, fake_ollama: FakeOllama, tmp_path: Path) -> None:
    migrate(pg_url)
    repo = _write_repo(tmp_path)
    env = _env(
        REGISTRY_DATABASE_URL=pg_url,
        OLLAMA_BASE_URL=fake_ollama.url,
        CODEBASE_ROOTS=str(tmp_path),
        CODEBASE_INDEX_WORKERS="1",
    )
    proc = _run(["index", str(repo)], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"completed: {repo}")
    assert "2/2 processed" in proc.stdout
    assert PASSWORD not in proc.stderr

    proc = _run(["search", "parse_iso_date", "--limit", "3"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith(" 1. pkg/dates.py:1-4"), proc.stdout
    assert "parse_iso_date" in first

    proc = _run(["search", "shopping cart", "--language", "javascript"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "web.js:1-3" in proc.stdout
    assert "dates.py" not in proc.stdout

    (repo / "web.js").write_text("function emptyTheBasket() {\n  return [];\n}\n")
    proc = _run(["search", "shopping cart", "--language", "javascript"], env, tmp_path)
    assert "web.js:1-3" in proc.stdout and "changed on disk since indexed" in proc.stdout
    proc = _run(["sync", "--no-progress", str(repo)], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"completed: {repo}")
    assert "1 unchanged" in proc.stdout
    proc = _run(["search", "emptyTheBasket"], env, tmp_path)
    assert "web.js:1-3" in proc.stdout.splitlines()[0], proc.stdout
    assert "changed on disk" not in proc.stdout

    proc = _run(["index", "/etc"], env, tmp_path)
    assert proc.returncode == 2
    assert "not under an allowed root" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.anyio
async def test_the_progress_line_shows_what_the_job_does_at_once() -> None:
    """After the last file, the vector index build must not look like a hang at 100 %."""
    import io

    out = io.StringIO()
    printer = cli.ProgressPrinter(out, enabled=True)
    await printer(Progress("j", 10, 10, 40, 40))
    await printer(Progress("j", 10, 10, 40, 40))  # within the rate limit: dropped
    await printer(Progress("j", 10, 10, 40, 40, "building the vector index (40 vectors)"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[1].endswith("chunks 40  building the vector index (40 vectors)")


def test_names_from_the_terminal_skips_and_usage_errors(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    migrate(pg_url)
    repo = os.fsdecode(os.fsencode(tmp_path) + b"/r\xe9po")  # as a shell hands it over
    os.mkdir(repo)
    Path(repo, os.fsdecode(b"caf\xe9.py")).write_text("def cafe_latin():\n    return 1\n")
    Path(repo, "logo.png").write_bytes(b"\x89PNG\r\n")
    env = _env(
        REGISTRY_DATABASE_URL=pg_url,
        OLLAMA_BASE_URL=fake_ollama.url,
        CODEBASE_ROOTS=str(tmp_path),
        CODEBASE_INDEX_WORKERS="1",
    )
    proc = _run(["index", "--no-progress", repo], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"completed: {tmp_path}/r\\xe9po\n"), proc.stdout
    assert "skipped: 1 file(s): 1 binary" in proc.stdout
    assert "could not be indexed" not in proc.stdout

    for given in (repo, "r\\xe9po"):  # the terminal's bytes, or the text results show
        proc = _run(["search", "cafe_latin", "-r", given], env, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(" 1. caf\\xe9.py:1-2"), proc.stdout
        assert f"in {tmp_path}/r\\xe9po" in proc.stdout

    for args, code, message in [
        (["search", os.fsdecode(b"caf\xe9")], 2, "QUERY is not valid UTF-8 (byte 0xe9"),
        (["search", "x", "-g", "[z-a]"], 2, "path_glob: the range z-a"),
        (["search", "x", "-r", "%"], 1, "no indexed repository named '%'"),
        (["index", str(tmp_path / "missing")], 2, "does not exist"),
        (["index", str(tmp_path)], 1, "contains 1 indexed repository"),
    ]:
        proc = _run(args, env, tmp_path)
        assert proc.returncode == code, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr
