"""A full MCP session with the container over `podman run -i` stdio, driven by FastMCP's
client: list the tools, index a repository mounted read-only under /workspace, search it.

  python scripts/container/mcp_session.py IMAGE PG_URL OLLAMA_URL PASSWORD
  python scripts/container/mcp_session.py --http BASE_URL
      the http transport of a running container (after the stdio session indexed the
      repository into the same database): GET /health, tools, the repository, a search.

Prints one PASS/FAIL line per check; exits non-zero when any fails.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

REPO_FILES = {
    "billing/invoice.py": (
        "class Invoice:\n"
        "    def total_with_tax(self, rate):\n"
        '        """The invoice total including sales tax."""\n'
        "        return sum(self.lines) * (1 + rate)\n"
    ),
    "billing/refund.go": (
        "package billing\n\nfunc IssueRefund(amount uint64) error {\n\treturn nil\n}\n"
    ),
}


def write_repo(root: Path) -> Path:
    repo = root / "shop"
    for rel, text in REPO_FILES.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # The container runs as uid 1000: everything must be world-readable.
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return repo


class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, ok: bool, what: str, detail: object = "") -> bool:
        print(f"{'PASS' if ok else 'FAIL'}: {what}" + (f" ({detail})" if detail else ""))
        sys.stdout.flush()
        self.failed += not ok
        return ok


async def session(image: str, pg_url: str, ollama_url: str, password: str, work: Path) -> int:
    checks = Checks()
    repo = write_repo(work / "repo")
    args = [
        "--runtime", "runc", "run", "-i", "--rm", "--network", "host",
        "--name", os.environ.get("CBMCP_CT_NAME", f"cbmcp-ct-session-{os.getpid()}"),
        "-e", f"REGISTRY_DATABASE_URL={pg_url}",
        "-e", f"OLLAMA_BASE_URL={ollama_url}",
        "-e", "CODEBASE_INDEX_WORKERS=1",
        "-e", "LOG_FORMAT=json",
        "-v", f"{repo}:/workspace/shop:ro",
        image,
    ]  # fmt: skip
    stderr_log = work / "session-stderr.log"
    transport = StdioTransport("podman", args, log_file=stderr_log)
    stray: list[Exception] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            stray.append(message)

    started = time.monotonic()
    async with Client(transport, mode="legacy", message_handler=on_message, timeout=120) as client:
        checks.check(
            True, "MCP session over `podman run -i` opened", f"{time.monotonic() - started:.1f} s"
        )
        names = {t.name for t in await client.list_tools()}
        want = {"index_repository", "get_indexing_status", "search_code", "list_repositories"}
        checks.check(want <= names, "tools listed", ", ".join(sorted(names)))

        job = (await client.call_tool("index_repository", {"path": "/workspace/shop"})).data
        deadline = time.monotonic() + 120
        while True:
            status = (await client.call_tool("get_indexing_status", {"job_id": job["job_id"]})).data
            if status["finished"] or time.monotonic() > deadline:
                break
            await anyio.sleep(0.2)
        checks.check(
            status["state"] == "completed" and status["files_done"] == len(REPO_FILES),
            "mounted repository indexed",
            f"{status['state']}, {status['files_done']} files, {status.get('chunks_done')} chunks",
        )

        found = (await client.call_tool("search_code", {"query": "total with tax"})).data
        top = found["results"][0] if found["results"] else {}
        checks.check(
            top.get("path") == "billing/invoice.py" and "total_with_tax" in str(top.get("symbol")),
            "search finds the definition",
            f"{top.get('path')}:{top.get('start_line')} {top.get('symbol')}",
        )
        found = (await client.call_tool("search_code", {"query": "IssueRefund"})).data
        paths = [r["path"] for r in found["results"]]
        checks.check(
            bool(paths) and paths[0] == "billing/refund.go", "search finds Go code", paths[:3]
        )

        refused = await client.call_tool("index_repository", {"path": "/etc"}, raise_on_error=False)
        checks.check(refused.is_error, "a path outside /workspace is refused")

    checks.check(not stray, "nothing but MCP messages on stdout", stray[:3])
    log = stderr_log.read_text(errors="replace")
    checks.check(password not in log, "the database password appears in no log line")
    checks.check("Traceback" not in log, "no traceback on stderr")
    if checks.failed:
        print("--- container stderr (last 40 lines) ---", file=sys.stderr)
        print("\n".join(log.splitlines()[-40:]), file=sys.stderr)
    return checks.failed


async def http_session(base_url: str) -> int:
    import httpx

    checks = Checks()
    async with httpx.AsyncClient(timeout=10) as http:
        health = await http.get(base_url + "/health")
    checks.check(health.status_code == 200, "http: GET /health", health.status_code)
    async with Client(base_url + "/mcp", mode="legacy", timeout=60) as client:
        names = {t.name for t in await client.list_tools()}
        checks.check("search_code" in names, "http: tools listed over streamable HTTP")
        repos = (await client.call_tool("list_repositories", {})).data
        paths = [r["path"] for r in (repos["repositories"] if isinstance(repos, dict) else repos)]
        checks.check("/workspace/shop" in paths, "http: shares the database", paths)
        found = (await client.call_tool("search_code", {"query": "total with tax"})).data
        top = found["results"][0] if found["results"] else {}
        checks.check(top.get("path") == "billing/invoice.py", "http: search", top.get("path"))
    return checks.failed


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--http":
        try:
            return 1 if anyio.run(http_session, argv[1]) else 0
        except Exception as exc:
            print(f"FAIL: MCP over http ({type(exc).__name__}: {exc})")
            return 1
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cbmcp-ct-repo-") as work:
        try:
            failed = anyio.run(session, *argv, Path(work))
        except Exception as exc:  # the session itself broke: one clear FAIL line
            print(f"FAIL: MCP session over podman stdio ({type(exc).__name__}: {exc})")
            log = Path(work) / "session-stderr.log"
            if log.exists():
                print(
                    "\n".join(log.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr
                )
            return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
