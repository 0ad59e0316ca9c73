"""`scripts/run --setup` and the first `scripts/run` (scripts/run_setup.py).

The decisions are plain functions. The rest runs for real, in a copy of the checkout's
scripts and build inputs, through bash: its `.venv` is a thin one whose `bin/python` and
`bin/mcp-supervisor` hand over to this test run's interpreter and supervisor (so the
database step is the real `mcp-supervisor migrate` on the bundled PostgreSQL, and the
model check loads the real model), except that `python -m pip` and `uv` are stand-ins that
record what they were asked and exit as told. A real install (a minute of downloads) is
benchmarks/first_use.py's part: it sets up a fresh clone end to end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import psutil
import pytest

from codebase_mcp.embed import local_embed
from codebase_mcp.store.db import SCHEMA_HEAD
from tests.supervisor.test_embedded_pg import wait_until_gone

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_setup", REPO / "scripts" / "run_setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_setup"] = module
    spec.loader.exec_module(module)
    return module


rs = _load()


# --- the decisions ------------------------------------------------------------------------


def test_install_reason() -> None:
    inputs = {"pyproject.toml": 100, "setup.py": 100, "src/codebase_mcp/_tsvector.c": None}
    assert rs.install_reason(200, inputs, True) is None
    assert rs.install_reason(None, inputs, False) == "first use"
    assert rs.install_reason(200, inputs, False) == "first use"  # a half-made .venv
    # Made by hand, by scripts/test or by an older scripts/run; or an install was killed.
    assert rs.install_reason(None, inputs, True) == "no finished set-up is recorded in .venv"
    assert rs.install_reason(200, inputs, True, extra_missing=True) == (
        "the local-embed extra did not install last time"
    )
    changed = {**inputs, "pyproject.toml": 300}
    assert rs.install_reason(200, changed, True) == "pyproject.toml changed since .venv was set up"
    # The same instant is not "older": bash's `-nt` says stale too.
    assert rs.install_reason(100, inputs, True) is not None


def test_the_fast_path_in_bash_tests_the_same_inputs() -> None:
    script = (REPO / "scripts" / "run").read_text()
    tested = re.findall(r'"\$marker" -nt "\$here/([^"]+)"', script)
    assert sorted(tested) == sorted(rs.INPUTS)


def test_installers_and_their_commands(tmp_path: Path) -> None:
    layout = rs.Layout(tmp_path)
    assert rs.installers("/bin/uv") == ["uv", "pip"]
    assert rs.installers(None) == ["pip"]
    assert rs.install_argv("uv", "/bin/uv", layout, True) == [
        "/bin/uv",
        "pip",
        "install",
        "--quiet",
        "--python",
        str(tmp_path / ".venv" / "bin" / "python"),
        "-e",
        f"{tmp_path}[local-embed]",
    ]
    pip = rs.install_argv("pip", None, layout, False)
    assert pip[:4] == [str(tmp_path / ".venv" / "bin" / "python"), "-m", "pip", "install"]
    assert pip[-2:] == ["-e", str(tmp_path)]
    assert "--no-compile" in pip
    assert rs.venv_argv("/bin/uv", "/usr/bin/python3", tmp_path / ".venv") == [
        "/bin/uv",
        "venv",
        "--quiet",
        "--seed",
        "--python",
        "/usr/bin/python3",
        str(tmp_path / ".venv"),
    ]
    assert rs.venv_argv(None, "/usr/bin/python3", tmp_path / "v") == [
        "/usr/bin/python3",
        "-m",
        "venv",
        str(tmp_path / "v"),
    ]


def test_supervisor_events_become_short_lines() -> None:
    def line(**event: object) -> str | None:
        return rs.render_supervisor_line(json.dumps(event))

    assert (
        line(event="initialising embedded PostgreSQL", level="info", data_dir="/d")
        == "initialising PostgreSQL in /d..."
    )
    assert line(event="migrated", level="info", to_revision="0008") == (
        "database migrated to revision 0008"
    )
    assert line(event="schema already at head", level="info", revision="0008") == (
        "database up to date (revision 0008)"
    )
    assert line(event="step started", level="info", step="postgres") is None
    assert line(event="step started", level="info", step="ollama", url="x").startswith(
        "checking Ollama"
    )
    assert line(event="postgres unreachable at 127.0.0.1:5", level="error") == (
        "error: postgres unreachable at 127.0.0.1:5"
    )
    assert line(event="slow", level="warning") == "warning: slow"
    assert rs.render_supervisor_line("FATAL: something of PostgreSQL's\n") == (
        "FATAL: something of PostgreSQL's"
    )
    assert rs.render_supervisor_line("  \n") is None


def test_model_check_lines() -> None:
    ok = rs.model_check_line({"ok": True, "model": "m", "seconds": 1.5})
    assert ok == "local model ok: m (loaded in 1.5 s)"
    assert "full text" in rs.model_check_line({"ok": False, "missing": True})
    assert rs.model_check_line({"ok": False, "error": "bad hash"}) == (
        "warning: the local model does not load: bad hash"
    )


def test_an_old_python_is_named_with_what_to_do() -> None:
    with pytest.raises(rs.SetupError, match=r"Python >= 3\.11.*3\.10.*PYTHON="):
        rs.check_python((3, 10))
    rs.check_python((3, 11))


# --- for real, in a copy ----------------------------------------------------------------

# `.venv/bin/python`: this test run's interpreter, except `-m pip`, a stand-in.
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    shift 2
    echo "pip $*" >> "$FAKES_LOG"
    echo "pip noise on stdout"
    case "$*" in *"[local-embed]"*) exit "${{FAKE_PIP_EXTRA_EXIT:-0}}";; esac
    exit "${{FAKE_PIP_EXIT:-0}}"
fi
exec {python} "$@"
"""
FAKE_SUPERVISOR = """#!/bin/sh
exec {supervisor} "$@"
"""
# `uv` on PATH: records, writes to stdout (which must never reach MCP's), may be slow.
FAKE_UV = """#!/bin/sh
echo "uv $*" >> "$FAKES_LOG"
echo "uv noise on stdout"
sleep "${FAKE_UV_SLEEP:-0}"
exit "${FAKE_UV_EXIT:-0}"
"""


def _script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    """scripts/run, its set-up and build inputs, and a set-up `.venv` (marker newer
    than the inputs) that delegates to this test run's interpreter."""
    root = tmp_path / "checkout"
    for name in ("scripts/run", "scripts/run_setup.py", *rs.INPUTS):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
        os.utime(root / name, (time.time() - 60, time.time() - 60))
    venv = root / ".venv"
    _script(venv / "bin" / "python", FAKE_PYTHON.format(python=sys.executable))
    _script(
        venv / "bin" / "mcp-supervisor",
        FAKE_SUPERVISOR.format(supervisor=VENV_BIN / "mcp-supervisor"),
    )
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / rs.MARKER).write_text('{"installer": "pip", "local_embed": true}\n')
    _script(tmp_path / "fake-bin" / "uv", FAKE_UV)
    yield root
    wait_until_gone(tmp_path / "data" / "postgres")


def user_env(checkout: Path, *, uv: bool = False, **extra: str) -> dict[str, str]:
    base = checkout.parent
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "uv").exists()]
    if uv:
        path.insert(0, str(base / "fake-bin"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MCP_", "REGISTRY_", "OLLAMA_", "EMBEDDING_", "CODEBASE_", "LOG_"))
    }
    env.update(
        PATH=os.pathsep.join(path),
        MCP_SUPERVISOR_DATA_DIR=str(base / "data"),
        XDG_DATA_HOME="/dev/null/no-default-data-dir-in-tests",
        CODEBASE_MCP_ALEMBIC_INI=str(REPO / "alembic.ini"),
        FAKES_LOG=str(base / "fakes.log"),
    )
    env.update(extra)
    return env


def run(
    checkout: Path, *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(checkout / "scripts" / "run"), *args],
        env=env,
        cwd=checkout.parent,  # no .env of a developer's
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fakes(checkout: Path) -> list[str]:
    log = checkout.parent / "fakes.log"
    return log.read_text().splitlines() if log.exists() else []


# A server stand-in for the first-run tests: no database, exits 7 at once.
SERVER = ("--", "sh", "-c", "exit 7")
NO_DB = {"MCP_SUPERVISOR_WAIT_FOR": "none", "MCP_SUPERVISOR_MIGRATE": "false"}


@pytest.mark.slow
def test_setup_prepares_the_database_and_model_and_again_is_a_no_op(checkout: Path) -> None:
    marker = checkout / ".venv" / rs.MARKER
    marked = marker.stat().st_mtime_ns
    env = user_env(checkout)
    done = run(checkout, "--setup", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    data = checkout.parent / "data"
    assert lines[0] == ".venv is up to date (installed with pip, with the local model)"
    assert f"initialising PostgreSQL in {data}..." in lines
    assert f"database migrated to revision {SCHEMA_HEAD}" in lines
    if local_embed.available():
        assert any(line.startswith("local model ok: all-MiniLM-L6-v2-int8") for line in lines)
    assert lines[-2] == f"ready: add this command to your MCP client: {checkout}/scripts/run"
    # Nothing installed, nothing left running.
    assert fakes(checkout) == []
    assert marker.stat().st_mtime_ns == marked
    wait_until_gone(data / "postgres", timeout=2)
    password = (data / "postgres.password").read_text().strip()
    assert password not in done.stderr

    started = time.monotonic()
    again = run(checkout, "--setup", env=env)
    print(f"second --setup: {time.monotonic() - started:.1f} s")
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    assert not any("initialising" in line for line in again.stderr.splitlines())
    assert f"database up to date (revision {SCHEMA_HEAD})" in again.stderr.splitlines()
    assert fakes(checkout) == []
    assert marker.stat().st_mtime_ns == marked
    wait_until_gone(data / "postgres", timeout=2)


@pytest.mark.slow
def test_setup_retries_the_model_passes_options_and_names_a_broken_database(
    checkout: Path,
) -> None:
    marker = checkout / ".venv" / rs.MARKER
    marker.write_text('{"installer": "pip", "local_embed": false}\n')
    env = user_env(checkout)
    (checkout.parent / "elsewhere").write_text("a file, not a directory")
    failed = run(checkout, "--setup", "--data-dir", str(checkout.parent / "elsewhere"), env=env)
    assert failed.returncode == 69, failed.stderr
    assert failed.stdout == ""
    # Asked for a set-up, the extra that failed before is tried again (a start does not).
    assert [line.split(" -e ")[-1] for line in fakes(checkout)] == [f"{checkout}[local-embed]"]
    assert json.loads(marker.read_text())["local_embed"] is True
    assert any(
        line.startswith("error: ") and str(checkout.parent / "elsewhere") in line
        for line in failed.stderr.splitlines()
    ), failed.stderr
    assert "the database is not ready (mcp-supervisor migrate exited 69)" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert "ready:" not in failed.stderr


def test_first_run_with_a_set_up_venv_goes_straight_to_the_supervisor(checkout: Path) -> None:
    # Even without the local model: a start never pays for another try at it.
    (checkout / ".venv" / rs.MARKER).write_text('{"installer": "pip", "local_embed": false}\n')
    done = run(checkout, *SERVER, env=user_env(checkout, uv=True, **NO_DB))
    assert done.returncode == 7, done.stderr
    assert done.stdout == ""
    assert "scripts/run:" not in done.stderr
    assert fakes(checkout) == []


def test_a_changed_pyproject_reinstalls_with_uv_before_the_server_starts(checkout: Path) -> None:
    (checkout / "pyproject.toml").touch()
    env = user_env(checkout, uv=True, **NO_DB)
    done = run(checkout, *SERVER, env=env)
    assert done.returncode == 7, done.stderr
    assert done.stdout == ""  # not even the installer's (its output is kept for failures)
    assert (
        "scripts/run: setting up .venv (pyproject.toml changed since .venv was set up) before "
        "the server starts; an MCP client may give up waiting meanwhile: `scripts/run --setup` "
        "does this ahead" in done.stderr
    )
    assert "scripts/run: installing codebase-mcp with the local model (~10 s with uv)..." in (
        done.stderr
    )
    venv_python = checkout / ".venv" / "bin" / "python"
    assert fakes(checkout) == [
        f"uv pip install --quiet --python {venv_python} -e {checkout}[local-embed]"
    ]
    marker = checkout / ".venv" / rs.MARKER
    assert json.loads(marker.read_text())["installer"] == "uv"
    assert marker.stat().st_mtime_ns > (checkout / "pyproject.toml").stat().st_mtime_ns

    # Set up now: the next start installs nothing.
    again = run(checkout, *SERVER, env=env)
    assert again.returncode == 7
    assert len(fakes(checkout)) == 1


def test_uv_failing_falls_back_to_pip_and_to_no_extra(checkout: Path) -> None:
    (checkout / "setup.py").touch()
    env = user_env(checkout, uv=True, FAKE_UV_EXIT="1", FAKE_PIP_EXTRA_EXIT="1", **NO_DB)
    done = run(checkout, *SERVER, env=env)
    assert done.returncode == 7, done.stderr
    assert done.stdout == ""
    root = str(checkout)
    assert [line.split(" -e ")[-1] for line in fakes(checkout)] == [
        f"{root}[local-embed]",  # uv
        f"{root}[local-embed]",  # pip
        root,  # uv, without the extra
        root,  # pip: works
    ]
    assert "scripts/run: uv failed (uv noise on stdout): trying pip" in done.stderr
    assert "the local-embed extra did not install" in done.stderr
    assert "search answers by full text unless OLLAMA_BASE_URL" in done.stderr
    marker = json.loads((checkout / ".venv" / rs.MARKER).read_text())
    assert (marker["installer"], marker["local_embed"]) == ("pip", False)


def test_an_install_that_fails_shows_why_and_does_not_start_the_server(checkout: Path) -> None:
    (checkout / ".venv" / rs.MARKER).unlink()
    env = user_env(checkout, FAKE_PIP_EXIT="1", FAKE_PIP_EXTRA_EXIT="1", **NO_DB)
    done = run(checkout, *SERVER, env=env)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "  pip noise on stdout" in done.stderr  # the installer's output, shown
    assert "scripts/run: set-up failed: installing codebase-mcp into .venv failed" in done.stderr
    assert not (checkout / ".venv" / rs.MARKER).exists()


def test_two_first_runs_at_once_install_once(checkout: Path) -> None:
    (checkout / ".venv" / rs.MARKER).unlink()
    env = user_env(checkout, uv=True, FAKE_UV_SLEEP="2", **NO_DB)
    procs = [
        subprocess.Popen(
            [str(checkout / "scripts" / "run"), *SERVER],
            env=env,
            cwd=checkout.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [7, 7], results
    assert [out for out, _ in results] == ["", ""]
    assert len(fakes(checkout)) == 1  # one install; the other waited and found it done
    assert any("waiting for the set-up under way in another process" in e for _, e in results)


def test_a_killed_first_run_leaves_its_install_finishing_under_the_lock(checkout: Path) -> None:
    """An MCP client that gives up kills scripts/run, not the installer: the next start
    waits for that install instead of running a second one beside it."""
    (checkout / ".venv" / rs.MARKER).unlink()
    env = user_env(checkout, uv=True, FAKE_UV_SLEEP="3", **NO_DB)
    first = subprocess.Popen(
        [str(checkout / "scripts" / "run"), *SERVER],
        env=env,
        cwd=checkout.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not fakes(checkout):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # scripts/run and its set-up die; the installer (uv, and its sleep) is left running.
    setup = [
        p
        for p in psutil.Process(first.pid).children(recursive=True)
        if "run_setup.py" in " ".join(p.cmdline())
    ]
    assert len(setup) == 1
    setup[0].send_signal(signal.SIGKILL)
    first.kill()
    first.wait()
    second = run(checkout, *SERVER, env={**env, "FAKE_UV_SLEEP": "0"})
    assert second.returncode == 7, second.stderr
    assert "waiting for the set-up under way in another process" in second.stderr
    # The killed one left no marker (its install may be incomplete): installed again, after.
    assert len(fakes(checkout)) == 2


def test_a_client_killing_the_process_group_leaves_the_install_finishing(
    checkout: Path,
) -> None:
    """The Python MCP SDK starts its server in a new session and, giving up, SIGKILLs that
    whole process group: the set-up, in a session of its own, finishes the install and
    marks it, so the client's next start goes straight to the server."""
    (checkout / ".venv" / rs.MARKER).unlink()
    env = user_env(checkout, uv=True, FAKE_UV_SLEEP="2", **NO_DB)
    client = subprocess.Popen(
        [str(checkout / "scripts" / "run"), *SERVER],
        env=env,
        cwd=checkout.parent,
        stdin=subprocess.PIPE,  # an MCP client's pipe, no terminal
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not fakes(checkout):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(client.pid, signal.SIGKILL)
    client.communicate()
    marker = checkout / ".venv" / rs.MARKER
    while not marker.exists():
        assert time.monotonic() < deadline, "the install did not finish"
        time.sleep(0.05)
    again = run(checkout, *SERVER, env=env)
    assert again.returncode == 7, again.stderr
    assert "scripts/run:" not in again.stderr
    assert len(fakes(checkout)) == 1


def test_setup_help_goes_to_stderr_and_sets_nothing_up(checkout: Path) -> None:
    (checkout / ".venv" / rs.MARKER).unlink()
    done = run(checkout, "--setup", "--help", env=user_env(checkout))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "scripts/run --setup [SUPERVISOR OPTIONS]" in done.stderr
    assert fakes(checkout) == []
