"""The container test's dependencies on the host network: a real PostgreSQL with pgvector
(tests.support.pg, on 127.0.0.1) and the local Ollama-API server (tests.support.fake_ollama).

  python scripts/container/stack.py STATE_FILE

Writes {"pg_url", "ollama_url", "password"} to STATE_FILE once both answer, then serves until
SIGTERM/SIGINT, and stops both (no process left behind).
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.fake_ollama import FakeOllama  # noqa: E402
from tests.support.pg import PASSWORD, running_cluster  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    state = Path(argv[0])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    base = Path(tempfile.mkdtemp(prefix="cbmcp-ct-pg-", dir="/tmp"))
    with running_cluster(base) as cluster, FakeOllama() as ollama:
        url = cluster.create_database("codebase_mcp")
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pg_url": url, "ollama_url": ollama.url, "password": PASSWORD}))
        tmp.replace(state)
        print(f"stack: postgres {cluster.port}, ollama {ollama.url}", file=sys.stderr)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
