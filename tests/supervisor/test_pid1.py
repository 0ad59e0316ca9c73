"""The supervisor as a real PID 1 (and as a subreaper): tini's and dumb-init's suites,
mirrored with real processes and real signals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.supervisor.harness import (
    CHILDREN,
    PYTHON,
    Supervised,
    alive,
    base_env,
    can_unshare,
    children,
    wait_for_file,
)

needs_unshare = pytest.mark.skipif(not can_unshare(), reason="needs root and unshare(1)")
MODES = [
    pytest.param(True, id="pid1", marks=[needs_unshare, pytest.mark.pid1]),
    pytest.param(False, id="subreaper"),
]


def descendants(pid: int) -> list[int]:
    out, frontier = [], children(pid)
    while frontier:
        out.extend(frontier)
        frontier = [c for p in frontier for c in children(p)]
    return out


@pytest.mark.parametrize("pid1", MODES)
def test_orphans_are_reaped_and_exit_code_is_the_childs(pid1: bool, tmp_path: Path) -> None:
    result = tmp_path / "zombies"
    sup = Supervised([PYTHON, str(CHILDREN / "orphans.py"), "100", str(result), "3"], pid1=pid1)
    assert sup.wait() == 3
    assert result.read_text().strip() == "0", "zombies left in the namespace"


@pytest.mark.parametrize("pid1", MODES)
def test_proxies_signals(pid1: bool, tmp_path: Path) -> None:
    """dumb-init's test_proxies_signals: every catchable signal sent with kill reaches the
    child, the fault signals (ILL, TRAP, BUS, FPE, SEGV) too, as PID 1 and not."""
    ready, log = tmp_path / "ready", tmp_path / "log"
    stop = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}
    others = [
        s
        for s in range(1, 32)
        if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD) and s not in stop
    ]
    assert {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP} <= set(
        others
    )
    # The stop signals last: after the first of them the supervisor is stopping (it still
    # forwards, and the child exits on its own once it has seen them all).
    order = [*others, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM]
    expected = ",".join(str(int(s)) for s in order)
    sup = Supervised(
        [PYTHON, str(CHILDREN / "record_signals.py"), str(ready), str(log), expected],
        pid1=pid1,
        options=["--grace-period", "20"],
    )
    try:
        wait_for_file(ready)
        sup.wait_handlers()
        for s in order:
            sup.send(s)
            wait_for_file(log, contains=f"{int(s)}\n")
        assert sup.wait() == 0
    finally:
        sup.kill()
    got = {int(x) for x in log.read_text().split()}
    assert got == {int(s) for s in order}


@pytest.mark.parametrize("pid1", MODES)
def test_a_real_fault_still_crashes_the_supervisor(pid1: bool, tmp_path: Path) -> None:
    """Fault signals from kill are forwarded; one the supervisor's own code causes kills
    it (SIGSEGV, as without us), as PID 1 too, instead of hanging or being forwarded."""
    from mcp_supervisor.spec import RunSpec
    from tests.supervisor.harness import proc_status

    ready, log = tmp_path / "ready", tmp_path / "log"
    spec = RunSpec(
        command=(PYTHON, str(CHILDREN / "record_signals.py"), str(ready), str(log), "10"),
        wait_for=(),
        migrate=False,
        log_format="json",
        heartbeat_file=str(tmp_path / "run" / "heartbeat.json"),
    )
    fd = spec.write_to_pipe()
    argv = [PYTHON, str(CHILDREN / "faulting_supervisor.py"), str(fd)]
    if pid1:
        argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:  # a file: the child outlives a crashed subreaper
        proc = subprocess.Popen(
            argv,
            pass_fds=(fd,),
            env=base_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    os.close(fd)
    supervisor = child = None
    try:
        wait_for_file(ready)
        supervisor = children(proc.pid)[0] if pid1 else proc.pid
        usr1 = 1 << (signal.SIGUSR1 - 1)
        while not int(proc_status(supervisor).get("SigCgt", "0"), 16) & usr1:
            time.sleep(0.01)
        child = children(supervisor)[0]
        os.kill(supervisor, signal.SIGUSR1)
        proc.wait(timeout=20)
    finally:
        for pid in (supervisor, child):  # a hung one (unshare's kill does not reach it)
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGSEGV, stderr.read_text()[-2000:]
    assert not log.exists(), "a signal reached the child"


@pytest.mark.parametrize("pid1", MODES)
def test_a_stopped_child_is_resumed_to_act_on_the_stop_signal(pid1: bool) -> None:
    """SIGTSTP stops the child; the SIGTERM after it is followed by SIGCONT (as systemd
    does), so the child dies of the SIGTERM (143) instead of the grace window's SIGKILL."""
    grace = 5.0
    sup = Supervised(["sleep", "1000"], pid1=pid1, options=["--grace-period", str(grace)])
    try:
        sup.wait_handlers()
        deadline = time.monotonic() + 10
        while not children(sup.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        child = children(sup.pid)[0]
        sup.send(signal.SIGTSTP)
        while _state(child) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(child) == "T", "the forwarded SIGTSTP did not stop the child"
        started = time.monotonic()
        sup.send(signal.SIGTERM)
        code = sup.wait()
        elapsed = time.monotonic() - started
    finally:
        sup.kill()
    assert code == 143, f"exit {code} after {elapsed:.1f} s"
    assert elapsed < grace


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _run_exit_code(code: int, pid1: bool) -> int:
    sup = Supervised(["sh", "-c", f"exit {code}"], pid1=pid1, options=["--log-level", "warning"])
    return sup.wait()


def _run_exit_code_in_runner(code: int) -> int:
    """The PID-1 runner itself (what `mcp-supervisor` re-executes into), fed its spec on a
    pipe as cli.main does: the code path that passes exit codes on, without paying for
    settings validation 256 times."""
    from mcp_supervisor.spec import RunSpec

    spec = RunSpec(
        command=("sh", "-c", f"exit {code}"),
        wait_for=(),
        migrate=False,
        log_level="warning",
        heartbeat_file=f"/tmp/cbmcp-exit-{code}/hb.json",
    )
    fd = spec.write_to_pipe()
    try:
        proc = subprocess.run(
            [PYTHON, "-m", "mcp_supervisor.pid1", "--spec-fd", str(fd)],
            pass_fds=(fd,),
            env=base_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
    finally:
        os.close(fd)
    return proc.returncode


def test_exit_codes_0_to_255_pass_through() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(_run_exit_code_in_runner, range(256)))
    assert got == list(range(256))


@needs_unshare
@pytest.mark.pid1
@pytest.mark.parametrize("code", [0, 1, 2, 32, 64, 127, 254, 255])
def test_exit_codes_as_pid1(code: int) -> None:
    assert _run_exit_code(code, True) == code


@pytest.mark.parametrize("pid1", MODES)
@pytest.mark.parametrize(
    ("signum", "expected"), [(signal.SIGTERM, 143), (signal.SIGUSR1, 138), (signal.SIGUSR2, 140)]
)
def test_child_dying_of_a_signal_gives_128_plus_n(pid1: bool, signum: int, expected: int) -> None:
    sup = Supervised(["sh", "-c", f"kill -{int(signum)} $$"], pid1=pid1)
    assert sup.wait() == expected


@pytest.mark.parametrize("pid1", MODES)
def test_missing_command_is_127_and_not_executable_is_126(pid1: bool, tmp_path: Path) -> None:
    assert Supervised(["no-such-command-anywhere"], pid1=pid1).wait() == 127
    plain = tmp_path / "plain.sh"
    plain.write_text("echo hi\n")
    plain.chmod(0o644)
    sup = Supervised([str(plain)], pid1=pid1)
    assert sup.wait() == 126
    assert b"cannot start command" in sup.stderr_data
    assert sup.stdout_data == b""


@pytest.mark.parametrize("pid1", MODES)
def test_child_signal_state_is_clean(pid1: bool, tmp_path: Path) -> None:
    """Even when the supervisor itself inherits a blocked mask and ignored signals."""
    out = tmp_path / "sig"
    # A shell, not Python: the interpreter ignores SIGPIPE and SIGXFSZ by itself.
    probe = f"grep -E '^Sig(Blk|Ign):' /proc/self/status | cut -f2 | tr '\\n' ' ' > {out}"
    sup_argv = ["--", "sh", "-c", probe]
    # A parent that blocks USR1 and ignores HUP, TTIN and TTOU before it execs us.
    dirty = (
        "import os, signal, sys\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGUSR2])\n"
        "for s in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGPIPE):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    from tests.supervisor.harness import SUPERVISOR

    argv = [PYTHON, "-c", dirty, SUPERVISOR, *sup_argv]
    if pid1:
        argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
    proc = subprocess.run(argv, env=base_env(), capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()
    blocked, ignored = out.read_text().split()
    assert int(blocked, 16) == 0, f"SigBlk {blocked}"
    assert int(ignored, 16) == 0, f"SigIgn {ignored}"


@pytest.mark.parametrize("pid1", MODES)
def test_stubborn_child_is_killed_at_the_end_of_the_grace_window(
    pid1: bool, tmp_path: Path
) -> None:
    pids_file = tmp_path / "pids"
    grace = 1.0
    sup = Supervised(
        [PYTHON, str(CHILDREN / "stubborn.py"), str(pids_file)],
        pid1=pid1,
        options=["--grace-period", str(grace)],
    )
    try:
        wait_for_file(pids_file, contains="\n")
        sup.wait_handlers()
        tree = descendants(sup.pid)
        assert len(tree) >= 3, tree
        started = time.monotonic()
        sup.send(signal.SIGTERM)
        code = sup.wait()
        elapsed = time.monotonic() - started
    finally:
        sup.kill()
    assert code == 137
    assert grace <= elapsed < grace + 3, elapsed
    left = [p for p in tree if alive(p)]
    assert left == [], f"still running after the supervisor exited: {left}"


@pytest.mark.parametrize("pid1", MODES)
def test_fifty_megabytes_of_ndjson_pass_through_byte_identical(pid1: bool, tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    line = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "search_code", "arguments": {"query": "x" * 200}},
        }
    )
    with src.open("w") as f:
        n = 0
        i = 0
        while n < 50 * 1024 * 1024:
            s = line.replace('"id": 1', f'"id": {i}') + "\n"
            f.write(s)
            n += len(s)
            i += 1
    dst = tmp_path / "out.ndjson"
    with src.open("rb") as stdin, dst.open("wb") as stdout:
        sup = Supervised(["cat"], pid1=pid1, stdin=stdin.fileno(), stdout=stdout.fileno())
        assert sup.wait(timeout=120) == 0
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert dst.stat().st_size == src.stat().st_size
    assert digest(dst) == digest(src), "stdout is not byte-identical to stdin"


def _is_ours(pid: int) -> bool:
    """The process runs mcp-supervisor's code (not unshare's, before its exec)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name != "unshare"
    except OSError:
        return False


@pytest.mark.parametrize("pid1", MODES)
def test_sigterm_while_still_validating_settings_stops_before_the_child_runs(
    pid1: bool, tmp_path: Path
) -> None:
    """Blocked from the first line of main, pending across the re-exec: never lost."""
    mark = tmp_path / "mark"
    sup = Supervised([PYTHON, str(CHILDREN / "start_marker.py"), str(mark)], pid1=pid1)
    try:
        # Wait until stage one has blocked the signals, then send at once. The process
        # must be ours already: unshare's forked child blocks SIGTERM too, for the instant
        # before it restores its mask and execs us, and a signal caught there is dropped
        # by the kernel (a namespace's init without a handler), before any of our code.
        from tests.supervisor.harness import proc_status

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            blk = int(proc_status(sup.pid).get("SigBlk", "0"), 16)
            if blk & (1 << (signal.SIGTERM - 1)) and _is_ours(sup.pid):
                break
            time.sleep(0.001)
        else:
            pytest.fail("the supervisor never blocked SIGTERM")
        started = time.monotonic()
        sup.send(signal.SIGTERM)
        code = sup.wait()
    finally:
        sup.kill()
    assert code == 143
    assert time.monotonic() - started < 8
    assert not mark.exists(), "the child ran although the stop came first"


@pytest.mark.parametrize("pid1", MODES)
@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01, 0.03])
def test_sigterm_while_the_child_starts_stops_everything(
    pid1: bool, delay: float, tmp_path: Path
) -> None:
    mark = tmp_path / "mark"
    grace = 2.0
    sup = Supervised(
        [PYTHON, str(CHILDREN / "start_marker.py"), str(mark)],
        pid1=pid1,
        options=["--grace-period", str(grace)],
    )
    try:
        sup.wait_handlers()
        time.sleep(delay)
        started = time.monotonic()
        sup.send(signal.SIGTERM)
        code = sup.wait()
        elapsed = time.monotonic() - started
    finally:
        sup.kill()
    # The child either never started (143 from us) or died of the forwarded TERM (143).
    assert code == 143
    assert elapsed < grace + 2


def test_nothing_but_the_childs_output_on_stdout(tmp_path: Path) -> None:
    sup = Supervised(["sh", "-c", "printf 'only this'; exit 4"], pid1=False)
    assert sup.wait() == 4
    assert sup.stdout_data == b"only this"
    lines = [json.loads(x) for x in sup.stderr_data.decode().splitlines()]
    assert all("phase" in x and "child_pid" in x for x in lines)
    assert any(x["event"] == "child started" and x["child_pid"] for x in lines)


def test_invalid_settings_exit_78_naming_every_one(tmp_path: Path) -> None:
    env = base_env(
        MCP_SUPERVISOR_GRACE_PERIOD="soon",
        LOG_LEVEL="loud",
        REGISTRY_DATABASE_URL="mysql://me:hunter2@db/x",
        MCP_SUPERVISOR_WAIT_FOR="postgres",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_supervisor", "--", "true"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 78
    err = proc.stderr.decode()
    assert "MCP_SUPERVISOR_GRACE_PERIOD" in err and "LOG_LEVEL" in err
    assert "REGISTRY_DATABASE_URL" in err
    assert "hunter2" not in err
    assert "Traceback" not in err
    assert proc.stdout == b""


def test_env_file_and_flags_override_in_order(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MCP_SUPERVISOR_GRACE_PERIOD=oops\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_supervisor", "--", "true"],
        env=base_env(),
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 78 and b"MCP_SUPERVISOR_GRACE_PERIOD" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_supervisor", "--grace-period", "3", "--", "true"],
        env=base_env(),
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr.decode()


def test_pythonunbuffered_is_set_for_the_child() -> None:
    sup = Supervised(["sh", "-c", 'printf "%s" "$PYTHONUNBUFFERED"'], pid1=False)
    assert sup.wait() == 0
    assert sup.stdout_data == b"1"
