"""`mcp-supervisor --check`: the probe against real files and real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.health import check, runtime


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(check.ENV_FILE, raising=False)
    monkeypatch.delenv(check.ENV_MAX_AGE, raising=False)


def write(path: Path, **over: Any) -> Path:
    data: dict[str, Any] = {
        "version": 1,
        "status": "ready",
        "phase": "running",
        "status_text": None,
        "supervisor_pid": os.getpid(),
        "pid_namespace": check.pid_namespace(),
        "child_pid": os.getpid(),  # alive, whoever plays the child
        "restarts": 0,
        "watchdog_missed": False,
        "watchdog_sec": 30.0,
        "interval": 5.0,
        "max_age": 15.0,
        "updated_at": time.time(),
    }
    data.update(over)
    path.write_text(json.dumps(data))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = check.main(list(argv))
    out, err = capsys.readouterr()
    assert err == ""
    assert out.count("\n") == 1  # exactly one line
    return code, out.strip()


def test_fresh_heartbeat_and_live_child(
    tmp_path: Path, child: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    hb = write(tmp_path / "hb.json", child_pid=child.pid)
    code, line = run(capsys, "--check", "--heartbeat-file", str(hb))
    assert code == 0
    assert line.startswith(f"healthy: ready, child pid {child.pid}")
    assert run(capsys, "--check", "--ready", f"--heartbeat-file={hb}")[0] == 0


def test_killed_child_is_dead_as_zombie_and_once_reaped(
    tmp_path: Path, child: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    hb = write(tmp_path / "hb.json", child_pid=child.pid)
    os.kill(child.pid, signal.SIGKILL)
    # Not reaped yet: a zombie, and a zombie counts as dead.
    deadline = time.monotonic() + 5
    while check.pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Path(f"/proc/{child.pid}/stat").read_bytes().split(b") ")[1][:1] == b"Z"
    code, line = run(capsys, "--check", "--heartbeat-file", str(hb))
    assert (code, line) == (1, f"child not alive: pid {child.pid} has exited or is a zombie")
    child.wait()
    assert run(capsys, "--check", "--heartbeat-file", str(hb))[0] == 1


def test_missing_heartbeat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, line = run(capsys, "--check", "--heartbeat-file", str(tmp_path / "none.json"))
    assert code == 1
    assert line == f"no heartbeat at {tmp_path / 'none.json'}: the supervisor is not running (yet)"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "Expecting value"),
        (b"{", "Expecting property name"),
        (b'{"status": "ready"} {}', "Extra data"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"status": NaN}', "NaN is not valid JSON"),
        (b"\xff\xfe", "codec can't decode"),
        (b'{"status": "ready"}', "missing or invalid updated_at/status"),
    ],
)
def test_corrupt_heartbeat(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, reason: str
) -> None:
    hb = tmp_path / "hb.json"
    hb.write_bytes(content)
    code, line = run(capsys, "--heartbeat-file", str(hb))
    assert code == 1
    assert line.startswith("corrupt heartbeat")
    assert reason in line


def test_stale_heartbeat_and_the_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hb = write(tmp_path / "hb.json", updated_at=time.time() - 20)
    code, line = run(capsys, "--heartbeat-file", str(hb))
    assert code == 1
    assert line.startswith("stale heartbeat: last written 20.")
    assert line.endswith("(max age 15 s)")
    monkeypatch.setenv(check.ENV_MAX_AGE, "60")
    assert run(capsys, "--heartbeat-file", str(hb))[0] == 0
    monkeypatch.setenv(check.ENV_MAX_AGE, "soon")
    code, line = run(capsys, "--heartbeat-file", str(hb))
    assert code == 1
    assert (
        line == "MCP_SUPERVISOR_HEARTBEAT_MAX_AGE must be a positive number of seconds, got 'soon'"
    )


def test_path_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hb = write(tmp_path / "hb.json", status="starting", phase="preparing")
    monkeypatch.setenv(check.ENV_FILE, str(hb))
    assert run(capsys, "--check")[0] == 0
    code, line = run(capsys, "--check", "--ready")
    assert (code, line) == (1, "not ready: starting, phase preparing")


def test_other_pid_namespace_skips_pid_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Pids from another namespace mean nothing here: the heartbeat's age decides.
    hb = write(tmp_path / "hb.json", child_pid=999_999_9, pid_namespace="pid:[1]")
    assert run(capsys, "--heartbeat-file", str(hb))[0] == 0
    write(hb, child_pid=999_999_9)
    assert run(capsys, "--heartbeat-file", str(hb))[0] == 1


def test_bad_usage_is_a_reason_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, line = run(capsys, "--check", "--heartbeat-file")
    assert (code, line) == (1, "--heartbeat-file needs a PATH")
    code, line = run(capsys, "--check", "--verbose")
    assert code == 1
    assert line.startswith("unknown option '--verbose'")
    assert run(capsys, "--check", "--help") == (0, check.USAGE)


def test_unreadable_path_is_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, line = run(capsys, "--heartbeat-file", str(tmp_path))  # a directory
    assert code == 1
    assert line.startswith(f"cannot read heartbeat {tmp_path}:")


@pytest.mark.parametrize(
    "text",
    ['{"a": 1, "b": [1.5, -2e3, true, false, null], "c": {"d": "\\u00e9\\n"}}', " [] ", '"x"'],
)
def test_loads_matches_json(text: str) -> None:
    assert check.loads(text) == json.loads(text)


@pytest.mark.parametrize("found", [False, True], ids=["given-path", "found"])
@pytest.mark.parametrize("entry", ["mcp_supervisor.health.check", "mcp_supervisor.cli"])
def test_probe_process_imports_nothing_heavy_and_prints_one_line(
    tmp_path: Path, entry: str, found: bool
) -> None:
    """Through the CLI too: everything it imports before dispatching --check counts; and
    finding the heartbeat with no path given (a live runtime directory) costs no import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SUPERVISOR_")}
    env.pop("XDG_RUNTIME_DIR", None)
    env["TMPDIR"] = str(tmp_path)
    claim = runtime.claim(None, env=env)  # this process plays the live supervisor
    try:
        hb = write(Path(claim.heartbeat_file))
        args = [] if found else ["--heartbeat-file", str(hb)]
        code = (
            "import sys\n"
            f"from {entry} import main\n"
            "rc = main(sys.argv[1:])\n"
            "heavy = sorted({'json', 're', 'enum', 'typing', 'anyio', 'structlog', 'pydantic',\n"
            "                'psutil', 'pathlib', 'argparse', 'collections', 'contextlib'}\n"
            "               & set(sys.modules))\n"
            "print('imported:', heavy, file=sys.stderr)\n"
            "sys.exit(rc)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, "--check", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    finally:
        claim.release()
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.startswith("healthy: ready")
    assert proc.stdout.count("\n") == 1
    assert proc.stderr.strip() == "imported: []"
