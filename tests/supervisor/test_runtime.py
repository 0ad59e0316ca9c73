"""Per-instance runtime directories: names and choices (pure), then real directories, real
locks held by real processes, and the kernel dropping them when a holder dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_supervisor.health import runtime

KEY = runtime.namespace_key(runtime.pid_namespace())

# Claims a runtime directory (default, or the configured heartbeat in argv[1]) with the
# bases of the environment, prints it, and holds it until killed.
HOLDER = r"""
import sys, time
from mcp_supervisor.health import runtime
claim = runtime.claim(sys.argv[1] or None)
print(claim.directory, flush=True)
time.sleep(600)
"""


def test_names() -> None:
    assert runtime.namespace_key("pid:[4026531836]") == "4026531836"
    assert runtime.namespace_key(None) == "0"
    assert runtime.namespace_key("pid:[x]") == "0"
    assert runtime.instance_name("4026531836", 12) == "4026531836-12"
    assert runtime.parse_instance_name("4026531836-12") == ("4026531836", 12)
    assert runtime.parse_instance_name("4026531836-12-0a1b2c3d") == ("4026531836", 12)
    for other in ("heartbeat.json", "notify.sock", ".x", "1-2-3-4", "a-1", "1-b", "1-2-.."):
        assert runtime.parse_instance_name(other) is None, other


def test_bases_follow_xdg_runtime_dir_and_tmpdir() -> None:
    assert runtime.bases({"XDG_RUNTIME_DIR": "/run/user/7", "TMPDIR": "/var/tmp"}, 7) == [
        "/run/user/7/mcp-supervisor",
        "/var/tmp/mcp-supervisor",
        "/var/tmp/mcp-supervisor-7",
    ]
    # Unset or relative: not a base (a relative one would depend on the working directory).
    assert runtime.bases({"XDG_RUNTIME_DIR": "run", "TMPDIR": ""}, 0) == [
        "/tmp/mcp-supervisor",
        "/tmp/mcp-supervisor-0",
    ]
    assert [shared for _b, shared in runtime.candidates({}, 0)] == [True, False]


def test_choose_prefers_the_probes_namespace() -> None:
    a, b, c = ("/r/1-10", "1", 10), ("/r/2-20", "2", 20), ("/r/2-21", "2", 21)
    assert runtime.choose([], "1") == []
    assert runtime.choose([a], "1") == [a]
    assert runtime.choose([b], "1") == [b]  # the only live one, whatever its namespace
    assert runtime.choose([a, b, c], "1") == [a]
    assert runtime.choose([a, b, c], "2") == [b, c]  # several: the caller names them
    assert runtime.choose([b, c], "1") == [b, c]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Bases of our own (a TMPDIR; XDG_RUNTIME_DIR given by the tests that want it)."""
    (tmp_path / "tmp").mkdir()
    return {"TMPDIR": str(tmp_path / "tmp")}


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def hold(holders: list[subprocess.Popen[str]], env: dict[str, str], heartbeat: str = "") -> str:
    """A real process that claims a directory and keeps it; returns the directory."""
    proc_env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "TMPDIR")}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, heartbeat],
        env={**proc_env, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    holders.append(proc)
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def test_claim_release_and_liveness(env: dict[str, str], tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    claim = runtime.claim(None, env={**env, "XDG_RUNTIME_DIR": str(xdg)})
    assert claim.directory == str(xdg / "mcp-supervisor" / f"{KEY}-{os.getpid()}")
    assert claim.heartbeat_file == os.path.join(claim.directory, "heartbeat.json")
    assert runtime.is_live(claim.directory)  # another open file description cannot share it
    Path(claim.heartbeat_file).write_text("{}")
    claim.release()
    assert not Path(claim.directory).exists()
    assert not runtime.is_live(claim.directory)
    claim.release()  # idempotent


def test_a_shared_base_is_made_sticky_and_a_missing_xdg_dir_is_skipped(
    env: dict[str, str], tmp_path: Path
) -> None:
    claim = runtime.claim(None, env={**env, "XDG_RUNTIME_DIR": str(tmp_path / "absent")})
    try:
        base = Path(env["TMPDIR"]) / "mcp-supervisor"
        assert Path(claim.directory).parent == base
        assert base.stat().st_mode & 0o7777 == 0o1777  # every user's supervisors, like /tmp
        assert Path(claim.directory).stat().st_mode & 0o777 == 0o755  # probes of any uid
    finally:
        claim.release()


def test_a_base_that_is_a_symlink_is_not_used(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (Path(env["TMPDIR"]) / "mcp-supervisor").symlink_to(tmp_path / "elsewhere")
    claim = runtime.claim(None, env=env)
    try:
        assert (
            Path(claim.directory).parent == Path(env["TMPDIR"]) / f"mcp-supervisor-{os.geteuid()}"
        )
        assert list((tmp_path / "elsewhere").iterdir()) == []
    finally:
        claim.release()


def test_a_live_directory_is_never_removed_and_a_dead_ones_is(
    env: dict[str, str], holders: list[subprocess.Popen[str]]
) -> None:
    held = hold(holders, env)
    (Path(held) / "heartbeat.json").write_text("{}")
    base = str(Path(held).parent)
    assert runtime.remove_stale(base) == []
    assert runtime.is_live(held) and (Path(held) / "heartbeat.json").exists()
    holders[0].send_signal(signal.SIGKILL)  # no clean-up of its own: the kernel drops the lock
    holders[0].wait()
    assert Path(held).exists() and not runtime.is_live(held)
    assert runtime.remove_stale(base) == [held]
    assert not Path(held).exists()


def test_a_dead_predecessor_with_our_pid_leaves_us_its_directory_empty(
    env: dict[str, str],
) -> None:
    base = Path(env["TMPDIR"]) / "mcp-supervisor"
    base.mkdir()
    old = base / f"{KEY}-424242"
    old.mkdir()
    (old / "heartbeat.json").write_text('{"supervisor_pid": 424242}')
    claim = runtime.claim(None, env=env, pid=424242)
    try:
        assert claim.directory == str(old)
        assert list(old.iterdir()) == []
    finally:
        claim.release()


def test_a_squatted_name_gets_a_suffix(env: dict[str, str], tmp_path: Path) -> None:
    base = Path(env["TMPDIR"]) / "mcp-supervisor"
    base.mkdir()
    (base / f"{KEY}-424242").symlink_to(tmp_path)
    claim = runtime.claim(None, env=env, pid=424242)
    try:
        name = Path(claim.directory).name
        assert name.startswith(f"{KEY}-424242-")
        assert runtime.parse_instance_name(name) == (KEY, 424242)
    finally:
        claim.release()
    assert (base / f"{KEY}-424242").is_symlink()  # not ours: left alone


def test_a_configured_directory_in_use_is_refused(
    env: dict[str, str], tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    heartbeat = tmp_path / "run" / "heartbeat.json"
    assert hold(holders, env, str(heartbeat)) == str(heartbeat.parent)
    heartbeat.write_text(json.dumps({"supervisor_pid": holders[0].pid}))
    with pytest.raises(runtime.InUse) as refused:
        runtime.claim(str(heartbeat))
    assert refused.value.owner_pid == holders[0].pid
    assert f"{heartbeat} is in use by another running mcp-supervisor (pid {holders[0].pid})" in (
        str(refused.value)
    )
    assert heartbeat.exists()
    holders[0].kill()
    holders[0].wait()
    claim = runtime.claim(str(heartbeat))  # its owner is gone: ours now
    assert not claim.owned
    claim.release()
    assert heartbeat.parent.exists()  # a configured directory is not ours to remove


def test_find_heartbeat(
    env: dict[str, str], tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    uid = os.geteuid()
    path, why = runtime.find_heartbeat(env, uid)
    assert path is None
    assert why.startswith("no heartbeat: no mcp-supervisor is running (yet) (looked in ")
    assert env["TMPDIR"] in why
    first = hold(holders, env)
    assert runtime.find_heartbeat(env, uid) == (os.path.join(first, "heartbeat.json"), "")
    second = hold(holders, env)
    path, why = runtime.find_heartbeat(env, uid)
    assert path is None
    assert why.startswith("2 mcp-supervisors are running here: choose one with --heartbeat-file")
    assert first in why and second in why
    holders[0].kill()
    holders[0].wait()  # a dead one is no candidate
    assert runtime.find_heartbeat(env, uid) == (os.path.join(second, "heartbeat.json"), "")


def test_find_heartbeat_takes_pid_1_of_its_namespace_by_name(env: dict[str, str]) -> None:
    """A container: the supervisor is PID 1 of the probe's namespace. Its directory is
    taken by its name, without a lock test, whatever else runs."""
    pid1 = Path(env["TMPDIR"]) / "mcp-supervisor" / f"{KEY}-1"
    pid1.mkdir(parents=True)
    (pid1.parent / f"{KEY}-77").mkdir()
    assert runtime.find_heartbeat(env, os.geteuid()) == (str(pid1 / "heartbeat.json"), "")
