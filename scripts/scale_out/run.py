"""Jobs survive their replica, through the balancer (scripts/scale-out-test).

1. A real PostgreSQL with pgvector (tests.support.pg) and the Ollama-API server
   (tests.support.fake_ollama, slowed down so that the job takes a while), on 127.0.0.1.
2. The repository: a copy of part of the running interpreter's standard library.
3. The reference: `codebase-mcp index` of the same tree into a database of its own, with
   a fast embedder: one process, no takeover.
4. Three `codebase-mcp serve --transport http` replicas on one database (plain processes:
   a SIGKILL then ends exactly one replica; under mcp-supervisor the supervisor would
   restart the child, which is a different test) behind haproxy, with the shipped
   deploy/haproxy/haproxy.cfg (only the server lines and the bind address differ).
5. A FastMCP client through the balancer starts the index and polls its status; haproxy's
   log shows which replicas answered. Once the job is past its middle, the replica that
   runs it (its pid is in the job's `replica`) gets SIGKILL.
6. Another replica takes the job over once its lease expires and finishes it; then the
   database is checked: the same files and chunk counts per file as the reference, no
   duplicate rows, statistics that match a recount, the vector index built.

Prints PASS/FAIL per check and the figures; exits 1 when any check fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from tests.codebase.fixtures_engine import migrate  # noqa: E402
from tests.support.fake_ollama import FakeOllama  # noqa: E402
from tests.support.http_servers import (  # noqa: E402
    HttpServer,
    server_env,
    start_server,
    stop_server,
    wait_healthy,
)
from tests.support.integrity import integrity, problems  # noqa: E402
from tests.support.pg import PASSWORD, free_port, running_cluster  # noqa: E402

REPLICAS = 3
LEASE = 6.0  # CODEBASE_JOB_LEASE_SECONDS for the replicas
POLL = 1.0  # CODEBASE_JOB_POLL_SECONDS
EMBED_DELAY = 0.02  # seconds per embedding call of 16 texts: the job takes ~15 s here
KILL_AT = 0.75  # share of the files done when the replica running the job is killed
STDLIB_PARTS = (
    "asyncio",
    "concurrent",
    "email",
    "html",
    "http",
    "importlib",
    "json",
    "logging",
    "multiprocessing",
    "urllib",
    "wsgiref",
    "xml",
    "xmlrpc",
)
TOKEN = "scale-" + uuid.uuid4().hex

failures: list[str] = []


def check(ok: bool, what: str, detail: object = "") -> bool:
    print(f"{'PASS' if ok else 'FAIL'}: {what}" + (f" ({detail})" if detail != "" else ""))
    if not ok:
        failures.append(what)
    return ok


def note(text: str) -> None:
    print(f"== {text}", file=sys.stderr, flush=True)


def copy_repository(dest: Path) -> Path:
    lib = Path(sysconfig.get_paths()["stdlib"])
    repo = dest / "stdlib"
    for part in STDLIB_PARTS:
        shutil.copytree(
            lib / part, repo / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return repo


def replica_env(url: str, ollama: FakeOllama, roots: Path) -> dict[str, str]:
    return server_env(
        REGISTRY_DATABASE_URL=url,
        OLLAMA_BASE_URL=ollama.url,
        CODEBASE_ROOTS=str(roots),
        CODEBASE_INDEX_WORKERS="1",  # three replicas on two cores
        CODEBASE_EMBED_BATCH_SIZE="16",
        CODEBASE_EMBED_CONCURRENCY="1",
        CODEBASE_FILE_BATCH_SIZE="8",
        CODEBASE_BULK_INDEX_MIN_FILES="50",  # a bulk load: the takeover must build the index
        CODEBASE_JOB_LEASE_SECONDS=str(LEASE),
        CODEBASE_JOB_POLL_SECONDS=str(POLL),
        MCP_AUTH_TOKENS=TOKEN,
    )


def haproxy_config(ports: list[int], listen: int) -> str:
    text = (ROOT / "deploy/haproxy/haproxy.cfg").read_text()
    template = re.compile(r"^(\s*)server-template .*$", re.M)
    found = template.search(text)
    assert found is not None, "no server-template line in haproxy.cfg"
    servers = "\n".join(
        f"{found[1]}server replica{i} 127.0.0.1:{p}" for i, p in enumerate(ports, 1)
    )
    return template.sub(servers, text).replace("bind :8080", f"bind 127.0.0.1:{listen}")


def start_haproxy(binary: str, ports: list[int], work: Path) -> tuple[subprocess.Popen[bytes], int]:
    listen = free_port()
    cfg = work / "haproxy.cfg"
    cfg.write_text(haproxy_config(ports, listen))
    log = (work / "haproxy.log").open("wb")
    proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{listen}/health", timeout=2).status_code == 200:
                return proc, listen
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("haproxy did not start:\n" + (work / "haproxy.log").read_text())
        time.sleep(0.1)


async def per_file(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT path, chunk_count FROM files")
    finally:
        await conn.close()
    return {r["path"]: r["chunk_count"] for r in rows}


class Balanced:
    """MCP calls through the balancer, each on a fresh stateless request sequence: a call
    that fails (the killed replica had it) is counted and tried again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.errors = 0

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        from fastmcp import Client

        for _ in range(5):
            try:
                async with Client(self.url, auth=TOKEN) as client:
                    result = await client.call_tool(tool, arguments)
                assert result.structured_content is not None
                return result.structured_content
            except Exception as exc:
                self.errors += 1
                note(f"{tool} through the balancer failed, trying again: {exc!r}")
                await asyncio.sleep(0.5)
        raise RuntimeError(f"{tool} failed 5 times through the balancer")


def owner_pid(status: dict[str, Any]) -> int | None:
    parts = (status.get("replica") or "").split(":")
    return int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else None


async def scenario(
    servers: list[HttpServer], mcp_url: str, repo: Path, ollama: FakeOllama
) -> dict[str, Any]:
    lb = Balanced(mcp_url)
    started = await lb.call("index_repository", path=str(repo))
    job_id = started["job_id"]
    t0 = time.monotonic()
    by_pid = {s.proc.pid: s for s in servers}
    # Poll through the balancer until the job is past KILL_AT; ask each replica directly
    # too: all give the same answer (from the table).
    status = started
    same_answer = True
    while True:
        status = await lb.call("get_indexing_status", job_id=job_id)
        total = status["files_total"] or 1
        if status["state"] == "running" and status["files_done"] >= KILL_AT * total:
            break
        if status["finished"]:
            raise RuntimeError(f"the job ended before the kill: {status}")
        await asyncio.sleep(0.3)
    direct = []
    for server in servers:
        direct.append(await Balanced(server.url).call("get_indexing_status", job_id=job_id))
    same_answer = len({(d["state"], d["replica"]) for d in direct}) == 1
    running_on = owner_pid(status)
    victim = by_pid.get(running_on or -1)
    if victim is None:
        raise RuntimeError(f"the job runs on no replica of ours: {status}")
    bystander = next(s for s in servers if s is not victim)
    health_during = httpx.get(f"http://127.0.0.1:{bystander.port}/health", timeout=10).json()
    before_kill = status
    os.kill(victim.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    note(f"SIGKILL to replica pid {victim.proc.pid} at {status['files_done']}/{total} files")
    taken_over_after: float | None = None
    while True:
        status = await lb.call("get_indexing_status", job_id=job_id)
        pid = owner_pid(status)
        if taken_over_after is None and pid not in (None, victim.proc.pid):
            taken_over_after = time.monotonic() - killed_at
        if status["finished"]:
            break
        if time.monotonic() - killed_at > 120:
            raise RuntimeError(f"the job did not finish within 120 s of the kill: {status}")
        await asyncio.sleep(0.3)
    finished_after = time.monotonic() - killed_at
    job_seconds = time.monotonic() - t0
    found = await lb.call("search_code", query="parse an email message header", limit=5)
    await asyncio.sleep(6)  # past the health report's 5 s cache
    return {
        "job_id": job_id,
        "before_kill": before_kill,
        "final": status,
        "victim": victim,
        "same_answer": same_answer,
        "taken_over_after": taken_over_after,
        "finished_after": finished_after,
        "job_seconds": job_seconds,
        "errors": lb.errors,
        "search": found,
        "health_during": health_during,
        "health": httpx.get(mcp_url.replace("/mcp", "/health"), timeout=10).json(),
    }


def main() -> int:
    binary = shutil.which("haproxy")
    if binary is None:
        print("FAIL: haproxy is not installed (scripts/test installs Debian's package as root)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="cbmcp-scale-", dir="/tmp"))
    pg_base = work / "pg"
    servers: list[HttpServer] = []
    balancer: subprocess.Popen[bytes] | None = None
    try:
        repo = copy_repository(work)
        files_on_disk = sum(1 for p in repo.rglob("*") if p.is_file())
        note(f"repository: {files_on_disk} files of the standard library in {repo}")
        # A directory of its own: PostgreSQL runs as nobody when we are root.
        pg_base = Path(tempfile.mkdtemp(prefix="cbmcp-scale-pg-", dir="/tmp"))
        with running_cluster(pg_base) as cluster:
            url = cluster.create_database("scale")
            reference_url = cluster.create_database("reference")
            migrate(url)
            migrate(reference_url)
            with FakeOllama() as fast:
                env = replica_env(reference_url, fast, work)
                started = time.monotonic()
                done = subprocess.run(
                    [sys.executable, "-m", "codebase_mcp", "index", str(repo), "--no-progress"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
                reference_s = time.monotonic() - started
            if not check(
                done.returncode == 0,
                "a clean single-process index",
                done.stderr[-2000:] if done.returncode else "",
            ):
                return 1
            reference = asyncio.run(integrity(reference_url))
            note(
                f"reference: {reference['files']} files, {reference['chunks']} chunks in "
                f"{reference_s:.1f} s"
            )

            with FakeOllama(embed_delay=EMBED_DELAY) as slow:
                env = replica_env(url, slow, work)
                logs = work / "logs"
                logs.mkdir()
                servers = [start_server(env, logs / f"replica-{i}.log") for i in range(REPLICAS)]
                for server in servers:
                    wait_healthy(server, timeout=90)
                balancer, listen = start_haproxy(binary, [s.port for s in servers], work)
                mcp_url = f"http://127.0.0.1:{listen}/mcp"
                note(f"{REPLICAS} replicas behind haproxy at {mcp_url}")
                seen = asyncio.run(scenario(servers, mcp_url, repo, slow))
            scaled = asyncio.run(integrity(url))
            files_ref, files_scaled = (
                asyncio.run(per_file(reference_url)),
                asyncio.run(per_file(url)),
            )

        final, victim = seen["final"], seen["victim"]
        answered = set()
        time.sleep(0.5)  # haproxy writes a request's line when it ends
        for line in (work / "haproxy.log").read_text(errors="replace").splitlines():
            if "/mcp" in line and (m := re.search(r"codebase-mcp/(replica\d+) ", line)):
                answered.add(m[1])
        print(
            f"figures: job {seen['job_seconds']:.1f} s; killed at "
            f"{seen['before_kill']['files_done']}/{seen['before_kill']['files_total']} files; "
            f"taken over {seen['taken_over_after']:.1f} s and finished "
            f"{seen['finished_after']:.1f} s after the SIGKILL (lease {LEASE:g} s, poll "
            f"{POLL:g} s); {seen['errors']} client calls retried; "
            f"{scaled['chunks']} chunks (reference {reference['chunks']})"
        )
        check(final["state"] == "completed", "the job completed", final["message"])
        check(
            owner_pid(final) not in (None, victim.proc.pid),
            "another replica finished it",
            final["replica"],
        )
        check("taken over" in (final["message"] or ""), "its status says it was taken over")
        check(
            seen["taken_over_after"] is not None and seen["taken_over_after"] <= LEASE + POLL + 3,
            f"taken over within the lease + a poll (+3 s) ({LEASE + POLL + 3:g} s)",
            f"{seen['taken_over_after']:.1f} s",
        )
        check(
            seen["finished_after"] <= LEASE + 10,
            f"finished within lease + 10 s ({LEASE + 10:g} s) of the kill",
            f"{seen['finished_after']:.1f} s",
        )
        check(len(answered) >= 2, "status polled through several replicas", sorted(answered))
        check(seen["same_answer"], "every replica answers the same status (from the table)")
        check(
            scaled["chunks"] == reference["chunks"] and scaled["files"] == reference["files"],
            "chunks and files equal a clean single-replica index",
            f"{scaled['files']}/{scaled['chunks']} vs {reference['files']}/{reference['chunks']}",
        )
        diff = {
            p
            for p in files_ref.keys() | files_scaled.keys()
            if files_ref.get(p) != files_scaled.get(p)
        }
        check(not diff, "every file has the reference's chunk count", sorted(diff)[:5])
        bad = problems(scaled)
        check(not bad, "nothing duplicated, statistics match a recount, vector index built", bad)
        check(bool(seen["search"]["results"]), "search through the balancer answers")
        during = seen["health_during"].get("jobs", {})
        check(
            (during.get("running"), during.get("here")) == (1, 0),
            "a replica that does not run the job counts it running (health, from the table)",
            during,
        )
        jobs = seen["health"].get("jobs", {})
        check(
            jobs.get("running") == 0 and jobs.get("by_state", {}).get("completed") == 1,
            "health counts no running job once it completed",
            jobs,
        )
        logs_text = "".join(s.log_text() for s in servers if s is not victim)
        check(PASSWORD not in logs_text and TOKEN not in logs_text, "no secret in the logs")
    except Exception as exc:
        check(False, "the scenario ran", repr(exc))
        for server in servers:
            print(f"--- {server.log}\n{server.log_text()[-3000:]}", file=sys.stderr)
    finally:
        for server in servers:
            stop_server(server)
        if balancer is not None:
            balancer.terminate()
            try:
                balancer.wait(10)
            except subprocess.TimeoutExpired:
                balancer.kill()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(pg_base, ignore_errors=True)
    print(f"scale-out test: {'FAILED' if failures else 'all passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
