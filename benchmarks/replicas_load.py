"""Search latency under load through the balancer: one replica, then three, side by side.

A bounded load on 127.0.0.1 only: `--workers` clients send `search_code` calls (raw MCP
JSON-RPC over streamable HTTP, stateless, with a bearer token) through haproxy (the shipped
deploy/haproxy/haproxy.cfg, local server lines) for `--seconds` each run, at most
`--max-requests` calls, then stop. The index holds part of the running interpreter's
standard library; the embedder is the local Ollama-API server answering at once, in a
process of its own (scripts/container/stack.py, which also runs PostgreSQL), so the
figures are the servers', the balancer's and PostgreSQL's.

    .venv/bin/python benchmarks/replicas_load.py [--workers 8] [--seconds 20]

On a machine with few cores the replicas, PostgreSQL, haproxy and the clients share them:
three replicas cannot beat one there. The load average before and after is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.codebase.fixtures_engine import migrate  # noqa: E402
from tests.support.http_servers import (  # noqa: E402
    HttpServer,
    server_env,
    start_server,
    stop_server,
    wait_healthy,
)
from tests.support.pg import free_port  # noqa: E402

STDLIB_PARTS = ("asyncio", "email", "http", "json", "logging", "urllib", "xml")
QUERIES = (
    "parse the headers of an email message",
    "read an HTTP response body in chunks",
    "decode a JSON document into Python objects",
    "schedule a callback on the event loop",
    "rotate log files when they grow too large",
    "quote a string for use in a URL",
    "build an XML element tree from text",
    "open a TCP connection with a timeout",
    "HTTPConnection",
    "JSONDecodeError",
    "getLogger",
    "urlencode",
)
TOKEN = "bench-" + uuid.uuid4().hex


def start_stack(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    state = work / "stack.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts/container/stack.py"), str(state)],
        stdout=subprocess.DEVNULL,
        stderr=(work / "stack.log").open("wb"),
    )
    deadline = time.monotonic() + 60
    while not state.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the stack did not start:\n" + (work / "stack.log").read_text())
        time.sleep(0.1)
    return proc, json.loads(state.read_text())


def haproxy_config(ports: list[int], listen: int) -> str:
    text = (ROOT / "deploy/haproxy/haproxy.cfg").read_text()
    template = re.compile(r"^(\s*)server-template .*$", re.M)
    found = template.search(text)
    assert found is not None
    servers = "\n".join(f"{found[1]}server replica{i} 127.0.0.1:{p}" for i, p in enumerate(ports))
    text = template.sub(servers, text).replace("bind :8080", f"bind 127.0.0.1:{listen}")
    # Request logs would cost the balancer a write per call: not what is measured.
    return text.replace("    log global\n", "")


def start_haproxy(ports: list[int], work: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("haproxy")
    if binary is None:
        raise SystemExit("haproxy is not installed (apt-get install haproxy)")
    listen = free_port()
    cfg = work / f"haproxy-{len(ports)}.cfg"
    cfg.write_text(haproxy_config(ports, listen))
    proc = subprocess.Popen(
        [binary, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{listen}/health", timeout=2).status_code == 200:
                return proc, listen
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("haproxy did not start")
        time.sleep(0.1)


def parse_mcp(response: httpx.Response) -> dict[str, Any]:
    """A JSON-RPC answer, sent as JSON or as one server-sent event."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:"):
                data: dict[str, Any] = json.loads(line[5:])
                return data
        raise ValueError("no data in the event stream")
    parsed: dict[str, Any] = response.json()
    return parsed


async def load(url: str, workers: int, seconds: float, max_requests: int) -> dict[str, Any]:
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2025-06-18",
    }
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    sent = 0

    async def worker(n: int) -> None:
        nonlocal sent
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            i = n
            while time.monotonic() < deadline and sent < max_requests:
                sent += 1
                i += workers
                body = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "tools/call",
                    "params": {
                        "name": "search_code",
                        "arguments": {"query": QUERIES[i % len(QUERIES)], "limit": 10},
                    },
                }
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=body)
                    answer = parse_mcp(response) if response.status_code == 200 else None
                    if answer is None:
                        errors.append(f"HTTP {response.status_code}")
                    elif "error" in answer or answer["result"].get("isError"):
                        errors.append(str(answer.get("error") or answer["result"])[:200])
                    else:
                        latencies.append(time.perf_counter() - started)
                except (httpx.HTTPError, ValueError) as exc:
                    errors.append(type(exc).__name__)

    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(workers)))
    elapsed = time.monotonic() - started
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(replicas: int, env: dict[str, str], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    logs = work / f"logs-{replicas}"
    logs.mkdir()
    servers: list[HttpServer] = [
        start_server(env, logs / f"replica-{i}.log") for i in range(replicas)
    ]
    balancer: subprocess.Popen[bytes] | None = None
    try:
        for server in servers:
            wait_healthy(server, timeout=90)
        balancer, listen = start_haproxy([s.port for s in servers], work)
        url = f"http://127.0.0.1:{listen}/mcp"
        asyncio.run(load(url, args.workers, 3.0, 200))  # warm-up: pools, caches, imports
        load_before = os.getloadavg()[0]
        result = asyncio.run(load(url, args.workers, args.seconds, args.max_requests))
        result["load"] = (load_before, os.getloadavg()[0])
        return result
    finally:
        if balancer is not None:
            balancer.send_signal(signal.SIGTERM)
            balancer.wait(10)
        for server in servers:
            stop_server(server)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=8, help="concurrent clients")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    ap.add_argument("--max-requests", type=int, default=20000, help="cap on calls per run")
    ap.add_argument("--replicas", default="1,3", help="replica counts to compare")
    args = ap.parse_args()
    counts = [int(c) for c in args.replicas.split(",")]

    work = Path(tempfile.mkdtemp(prefix="cbmcp-load-", dir="/tmp"))
    stack, urls = start_stack(work)
    try:
        migrate(urls["pg_url"])
        repo = work / "stdlib"
        lib = Path(sysconfig.get_paths()["stdlib"])
        for part in STDLIB_PARTS:
            shutil.copytree(lib / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
        env = server_env(
            REGISTRY_DATABASE_URL=urls["pg_url"],
            OLLAMA_BASE_URL=urls["ollama_url"],
            CODEBASE_ROOTS=str(work),
            CODEBASE_INDEX_WORKERS="1",
            MCP_AUTH_TOKENS=TOKEN,
            CODEBASE_LOG_LEVEL="warning",
        )
        indexed = subprocess.run(
            [sys.executable, "-m", "codebase_mcp", "index", str(repo), "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if indexed.returncode != 0:
            print(indexed.stderr[-3000:], file=sys.stderr)
            return 1
        print(f"index: {indexed.stdout.strip().splitlines()[0]}")
        results = {n: run(n, env, work, args) for n in counts}
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(30)
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nsearch_code through haproxy: {args.workers} clients, {args.seconds:g} s per run, "
        f"{os.cpu_count()} cores shared by the replicas, PostgreSQL, haproxy, the embedder "
        "and the clients"
    )
    print(
        f"{'replicas':>8} {'calls':>7} {'errors':>6} {'calls/s':>8} {'p50 ms':>7} "
        f"{'p95 ms':>7} {'p99 ms':>7} {'load avg':>13}"
    )
    for n, r in results.items():
        lat = [x * 1000 for x in r["latencies"]]
        print(
            f"{n:>8} {len(lat) + len(r['errors']):>7} {len(r['errors']):>6} "
            f"{len(lat) / r['elapsed']:>8.1f} {percentile(lat, 50):>7.1f} "
            f"{percentile(lat, 95):>7.1f} {percentile(lat, 99):>7.1f} "
            f"{r['load'][0]:>6.2f}->{r['load'][1]:<5.2f}"
        )
        if r["errors"]:
            print(f"         first errors: {sorted(set(r['errors']))[:3]}")
        if lat:
            print(f"         mean {statistics.mean(lat):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
