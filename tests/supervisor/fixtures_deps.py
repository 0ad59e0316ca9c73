"""Helpers for the dependency, migration and embedded-PostgreSQL tests: run the real
`mcp-supervisor wait|migrate` as a subprocess with a clean environment and read its
JSON log lines from stderr."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
SUPERVISOR = str(VENV_BIN / "mcp-supervisor")
REPO = Path(__file__).resolve().parents[2]


def dep_env(**extra: str) -> dict[str, str]:
    """The parent's environment without any setting of ours, JSON logs, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                "MCP_SUPERVISOR_",
                "REGISTRY_DATABASE_URL",
                "OLLAMA_",
                "OPENAI_",
                "EMBEDDING_",
                "LOG_",
                "CODEBASE_",
            )
        )
    }
    env.update(LOG_FORMAT="json", LOG_LEVEL="info")
    # No test may use the default data directory (~/.local/share/codebase-mcp, the
    # developer's own): one that forgets MCP_SUPERVISOR_DATA_DIR fails (no directory can
    # be made under /dev/null, not even by root) instead of initialising a cluster there.
    env["XDG_DATA_HOME"] = "/dev/null/no-default-data-dir-in-tests"
    env.update(extra)
    return env


def start_cli(subcommand: str, env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    # cwd: a scratch directory, so no developer's .env is read.
    return subprocess.Popen(
        [SUPERVISOR, subcommand, *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_supervisor(env: dict[str, str], cwd: Path, *command: str) -> subprocess.Popen[str]:
    """`mcp-supervisor -- COMMAND`: the preparing steps, then COMMAND as its child."""
    return subprocess.Popen(
        [SUPERVISOR, "--", *command],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(
    subcommand: str, env: dict[str, str], cwd: Path, *args: str, timeout: float = 60
) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of one `mcp-supervisor SUBCOMMAND` run."""
    started = time.monotonic()
    proc = start_cli(subcommand, env, cwd, *args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err, time.monotonic() - started


def log_lines(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a run (other stderr lines, e.g. PostgreSQL's, skipped)."""
    lines = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                lines.append(json.loads(line))
    return lines


def events(stderr: str, name: str) -> list[dict[str, Any]]:
    return [e for e in log_lines(stderr) if e.get("event") == name]
