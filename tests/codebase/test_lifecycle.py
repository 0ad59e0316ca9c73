"""The serve lifecycle: the stdio wire, signals, sd_notify, teardown.

Most tests run a real subprocess: a small FastMCP server on `lifecycle.serve_stdio` (no
database needed), spoken to over real pipes with real signals. The last ones run the real
`codebase-mcp serve` against PostgreSQL to check that a running job is handed back to the
queue.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from codebase_mcp.serve import lifecycle, notify
from tests.codebase.fixtures_engine import migrate as _migrate
from tests.support.fake_ollama import FakeOllama
from tests.support.pg import PASSWORD, PostgresCluster

# --- pure parts -------------------------------------------------------------------------


def test_split_lines_keeps_the_partial_tail() -> None:
    buf = bytearray(b'{"a":1}\n{"b":2}\n{"c"')
    assert lifecycle.split_lines(buf) == [b'{"a":1}', b'{"b":2}']
    assert buf == bytearray(b'{"c"')
    assert lifecycle.split_lines(buf) == []


def test_notify_address_and_watchdog_period() -> None:
    assert notify.socket_address("@supervisor/notify") == b"\0supervisor/notify"
    assert notify.socket_address("/run/notify.sock") == "/run/notify.sock"
    assert notify.socket_address("") is None
    assert notify.socket_address("vsock:2:1") is None
    assert notify.watchdog_period({"WATCHDOG_USEC": "2000000"}, pid=5) == 1.0
    assert notify.watchdog_period({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "5"}, 5) == 1.0
    assert notify.watchdog_period({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "6"}, 5) is None
    assert notify.watchdog_period({"WATCHDOG_USEC": "junk"}, 5) is None
    assert notify.watchdog_period({"WATCHDOG_USEC": "0"}, 5) is None
    assert notify.watchdog_period({}, 5) is None
    assert notify.message(ready=1, status="a\nb") == b"READY=1\nSTATUS=a b"


def test_notifier_without_socket_is_a_no_op() -> None:
    n = notify.Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False
    assert n.ping() is False


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_sends_datagrams(tmp_path: Path, abstract: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        if abstract:
            name = f"cbmcp-test-{uuid.uuid4().hex}"
            server.bind("\0" + name)
            env = {"NOTIFY_SOCKET": "@" + name}
        else:
            path = str(tmp_path / "notify.sock")
            server.bind(path)
            env = {"NOTIFY_SOCKET": path}
        server.settimeout(2)
        n = notify.Notifier.from_env(env)
        assert n.ready("serving")
        assert server.recv(4096) == b"READY=1\nSTATUS=serving"
        assert n.ping()
        assert server.recv(4096) == b"WATCHDOG=1"
        assert n.stopping()
        assert server.recv(4096).startswith(b"STOPPING=1")
        n.close()


def test_notifier_survives_a_vanished_socket(tmp_path: Path) -> None:
    n = notify.Notifier(str(tmp_path / "gone.sock"))
    assert n.ready() is False  # logged at debug level, never raised


@pytest.mark.anyio
async def test_line_reader_over_a_pipe() -> None:
    r, w = os.pipe()
    try:
        reader = lifecycle.LineReader(r)
        os.write(w, b'{"a":1}\n\n  \n{"b"')
        assert await reader.__anext__() == '{"a":1}'
        os.write(w, b':2}\n{"tail":true}')
        assert await reader.__anext__() == '{"b":2}'
        os.close(w)
        w = -1
        assert await reader.__anext__() == '{"tail":true}'
        with pytest.raises(StopAsyncIteration):
            await reader.__anext__()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@pytest.mark.anyio
async def test_line_reader_wait_is_cancellable() -> None:
    """The reason the wire is ours: a pending stdin read must not hold up a stop."""
    r, w = os.pipe()
    try:
        reader = lifecycle.LineReader(r)
        with anyio.move_on_after(0.2) as scope:
            await reader.__anext__()
        assert scope.cancelled_caught
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.anyio
async def test_line_reader_over_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":2}\n')
    fd = os.open(path, os.O_RDONLY)
    try:
        lines = [line async for line in lifecycle.LineReader(fd)]
    finally:
        os.close(fd)
    assert lines == ['{"a":1}', '{"b":2}']


# --- a real server process over real pipes ----------------------------------------------

HELPER = textwrap.dedent(
    """
    import os, sys
    from contextlib import asynccontextmanager
    from pathlib import Path

    import anyio
    from codebase_mcp.serve import lifecycle, server as _server_module  # sets FASTMCP_* first
    from codebase_mcp.logs import configure_logging
    from codebase_mcp.serve.notify import Notifier
    from fastmcp import FastMCP

    marker = Path(os.environ["MARKER"])

    @asynccontextmanager
    async def lifespan(_):
        marker.write_text("started\\n")
        try:
            yield {}
        finally:
            await anyio.sleep(0.2)  # an async teardown step, as the engine's shutdown
            with marker.open("a") as f:
                f.write("teardown\\n")

    mcp = FastMCP("helper", lifespan=lifespan)

    @mcp.tool
    async def shout(text: str) -> str:
        print("stray print from a tool")  # must land on stderr, not the wire
        os.write(1, b"stray write to fd 1\\n")
        return text.upper()

    @mcp.tool
    async def slow() -> str:
        await anyio.sleep(60)
        return "done"

    @mcp.custom_route("/health", methods=["GET"])
    async def health(_):
        from starlette.responses import JSONResponse
        return JSONResponse({"status": "ok"})

    configure_logging("info", "json")
    if os.environ.get("PORT"):
        anyio.run(
            lifecycle.serve_http, mcp, Notifier.from_env(), "127.0.0.1", int(os.environ["PORT"])
        )
    else:
        anyio.run(lifecycle.serve_stdio, mcp, Notifier.from_env())
    print("after serve", file=sys.stderr)
    """
)


class Wire:
    """A JSON-RPC client over a subprocess's pipes, with timeouts."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[bytes] = []  # every line read from stdout, for the purity check
        self._buf = b""
        self._next_id = 1
        self._sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        self._sel.register(proc.stdout, selectors.EVENT_READ)

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any] | None = None) -> int:
        rid = self._next_id
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})
        return rid

    def read_line(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                return None
            chunk = self.proc.stdout.read(65536)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        self.lines.append(line)
        return line

    def response(self, rid: int, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.read_line(deadline - time.monotonic())
            if line is None:
                break
            msg = json.loads(line)
            if msg.get("id") == rid:
                return dict(msg)
        raise AssertionError(f"no response to request {rid}")

    def initialize(self) -> dict[str, Any]:
        rid = self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "lifecycle-test", "version": "0"},
            },
        )
        resp = self.response(rid)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return resp

    def drain(self, timeout: float = 5.0) -> None:
        """Read stdout to its end (after the process exited)."""
        while self.read_line(timeout) is not None:
            pass
        if self._buf:
            self.lines.append(self._buf)
            self._buf = b""


def assert_only_jsonrpc(lines: list[bytes]) -> None:
    for line in lines:
        msg = json.loads(line)  # raises on anything that is not JSON
        assert msg.get("jsonrpc") == "2.0", line


@pytest.fixture
def helper_script(tmp_path: Path) -> Path:
    path = tmp_path / "helper_server.py"
    path.write_text(HELPER)
    return path


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def helper(helper_script: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Wire]]:
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, str(helper_script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr.log", "wb"),  # noqa: SIM115 - closed with the process
        env=_subprocess_env(MARKER=str(marker)),
        cwd=tmp_path,
    )
    try:
        yield proc, Wire(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> tuple[int, float]:
    start = time.monotonic()
    code = proc.wait(timeout=timeout)
    return code, time.monotonic() - start


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_with_stdin_open_exits_0_after_teardown(
    helper: tuple[subprocess.Popen[bytes], Wire], tmp_path: Path, signum: signal.Signals
) -> None:
    proc, wire = helper
    assert "serverInfo" in wire.initialize()["result"]
    # A tool call in flight must not hold the stop up either.
    wire.request("tools/call", {"name": "slow", "arguments": {}})
    time.sleep(0.3)
    proc.send_signal(signum)
    code, took = _wait_exit(proc)
    assert code == 0
    assert took < 5.0
    assert (tmp_path / "marker").read_text() == "started\nteardown\n"
    assert "after serve" in (tmp_path / "stderr.log").read_text()
    wire.drain()
    assert_only_jsonrpc(wire.lines)


def test_a_second_signal_does_not_cut_the_teardown_short(
    helper: tuple[subprocess.Popen[bytes], Wire], tmp_path: Path
) -> None:
    """Ctrl-C in a terminal reaches the supervisor and the server alike: the forwarded
    SIGTERM lands while the server already stops on its own SIGINT."""
    proc, wire = helper
    wire.initialize()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, _ = _wait_exit(proc)
    assert code == 0
    assert (tmp_path / "marker").read_text() == "started\nteardown\n"


def test_stdin_closed_exits_0_after_teardown_and_stray_output_misses_the_wire(
    helper: tuple[subprocess.Popen[bytes], Wire], tmp_path: Path
) -> None:
    proc, wire = helper
    wire.initialize()
    rid = wire.request("tools/call", {"name": "shout", "arguments": {"text": "hi"}})
    assert wire.response(rid)["result"]["content"][0]["text"] == "HI"
    assert proc.stdin is not None
    proc.stdin.close()  # the client is gone
    code, took = _wait_exit(proc)
    assert code == 0
    assert took < 5.0
    assert (tmp_path / "marker").read_text() == "started\nteardown\n"
    wire.drain()
    assert_only_jsonrpc(wire.lines)
    err = (tmp_path / "stderr.log").read_text()
    assert "stray print from a tool" in err
    assert "stray write to fd 1" in err


def test_sd_notify_ready_watchdog_and_stopping(helper_script: Path, tmp_path: Path) -> None:
    sock_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(sock_path)
        sock.settimeout(10)
        proc = subprocess.Popen(
            [sys.executable, str(helper_script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_subprocess_env(
                MARKER=str(tmp_path / "marker"),
                NOTIFY_SOCKET=sock_path,
                WATCHDOG_USEC="200000",  # a ping every 0.1 s
            ),
        )
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                got.append(sock.recv(4096))
                if any(m.startswith(b"READY=1") for m in got) and got.count(b"WATCHDOG=1") >= 3:
                    break
            assert any(m.startswith(b"READY=1") for m in got), got
            assert got.count(b"WATCHDOG=1") >= 3, got
            proc.send_signal(signal.SIGTERM)
            while not (msg := sock.recv(4096)).startswith(b"STOPPING=1"):
                pass
            assert b"SIGTERM" in msg
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_http_stop_signal_runs_teardown_and_exits_0(helper_script: Path, tmp_path: Path) -> None:
    """uvicorn re-raises the signal after its shutdown, which skipped FastMCP's lifespan
    teardown (PrefectHQ/fastmcp#4927); ours must not."""
    import httpx

    from tests.support.pg import free_port

    port = free_port()
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, str(helper_script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_subprocess_env(MARKER=str(marker), PORT=str(port)),
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, "the http server exited"
                assert time.monotonic() < deadline, "the http server did not come up"
                time.sleep(0.1)
        assert resp.json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        code, took = _wait_exit(proc)
        assert code == 0
        assert took < 5.0
        assert marker.read_text() == "started\nteardown\n"
        assert proc.stdout is not None
        assert proc.stdout.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# --- the real server: a running job is handed back to the queue ------------------------


def _tool_result(wire: Wire, name: str, **arguments: Any) -> dict[str, Any]:
    rid = wire.request("tools/call", {"name": name, "arguments": arguments})
    resp = wire.response(rid)
    assert not resp["result"].get("isError"), resp
    return dict(resp["result"]["structuredContent"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_during_a_job_hands_it_back_and_a_later_index_resumes_it(
    pg_cluster: PostgresCluster,
    pg_url: str,
    fake_ollama: FakeOllama,
    tmp_path: Path,
    signum: signal.Signals,
) -> None:
    _migrate(pg_url)
    repo = tmp_path / "repo"
    repo.mkdir()
    for i in range(40):
        (repo / f"mod{i}.py").write_text(f"def function_{i}(x):\n    return x * {i}\n")
    fake_ollama.embed_delay = 0.3  # each embedding batch is slow: the job is mid-way
    env = _subprocess_env(
        REGISTRY_DATABASE_URL=pg_url,
        OLLAMA_BASE_URL=fake_ollama.url,
        CODEBASE_ROOTS=str(tmp_path),
        # Chunking worker processes for one run: none may outlive the server.
        CODEBASE_INDEX_WORKERS="2" if signum == signal.SIGTERM else "1",
        CODEBASE_EMBED_BATCH_SIZE="2",
        CODEBASE_EMBED_CONCURRENCY="1",
        CODEBASE_FILE_BATCH_SIZE="4",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "codebase_mcp", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr.log", "wb"),  # noqa: SIM115 - closed with the process
        env=env,
        cwd=tmp_path,
    )
    try:
        wire = Wire(proc)
        wire.initialize()
        job = _tool_result(wire, "index_repository", path=str(repo))
        deadline = time.monotonic() + 30
        while True:
            status = _tool_result(wire, "get_indexing_status", job_id=job["job_id"])
            if status["state"] == "running" and status["files_total"] > 0:
                break
            assert not status["finished"], status
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signum)
        code, took = _wait_exit(proc)
        assert code == 0
        assert took < 8.0  # inside the supervisor's grace window
        _, alive = psutil.wait_procs(children, timeout=5)
        leftover = [" ".join(c.cmdline()) for c in alive]
        for child in alive:  # never leak them into the rest of the run
            child.kill()
        assert leftover == []
        wire.drain()
        assert_only_jsonrpc(wire.lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    database = pg_url.rsplit("/", 1)[1]
    row = pg_cluster.psql(
        f"SELECT state, files_done < files_total, owner IS NULL FROM jobs "
        f"WHERE id = '{job['job_id']}'",
        database,
    )
    assert row == "queued|t|t"  # handed back: stopped at a safe point, anyone may resume it
    log = (tmp_path / "stderr.log").read_text()
    assert "Traceback" not in log
    assert PASSWORD not in log

    if signum != signal.SIGTERM:
        return  # resuming is the same after either signal; one run proves it
    fake_ollama.embed_delay = 0.0
    done = subprocess.run(
        [sys.executable, "-m", "codebase_mcp", "index", str(repo), "--no-progress"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"completed: {repo}")
    indexed = pg_cluster.psql("SELECT count(*) FROM files", database)
    assert indexed == "40"


def test_real_server_over_http_health_tools_and_stop(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    import httpx
    from fastmcp import Client

    from tests.support.pg import free_port

    _migrate(pg_url)
    port = free_port()
    env = _subprocess_env(
        REGISTRY_DATABASE_URL=pg_url,
        OLLAMA_BASE_URL=fake_ollama.url,
        CODEBASE_ROOTS=str(tmp_path),
        MCP_TRANSPORT="http",
        MCP_PORT=str(port),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "codebase_mcp", "serve"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr.log", "wb"),  # noqa: SIM115 - closed with the process
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert resp.status_code == 200
        health = resp.json()
        assert health["status"] == "ok", health
        assert {"database", "embedder", "jobs"} <= set(health)

        async def list_tools() -> set[str]:
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                return {t.name for t in await client.list_tools()}

        assert "search_code" in anyio.run(list_tools)
        proc.send_signal(signal.SIGTERM)
        code, took = _wait_exit(proc)
        assert code == 0
        assert took < 8.0
        assert proc.stdout is not None
        assert proc.stdout.read() == b""
        assert "engine stopped" in (tmp_path / "stderr.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
