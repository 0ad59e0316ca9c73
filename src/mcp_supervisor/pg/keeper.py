"""The keeper: the one process that runs a data directory's embedded PostgreSQL.

    python -m mcp_supervisor.pg.keeper --data-dir DIR --lock-fd N

Started by the first user that finds no owner (see `share`), with the owner lock,
already taken, on fd N. It stops whatever PostgreSQL a killed predecessor left in the
data directory, makes the cluster on first use (initdb into a side directory, flushed,
then renamed into place), starts PostgreSQL, says "ready" in the state file, and waits:

- until the last user has gone (it can take the users lock exclusively): fast shutdown,
  state file removed, exit 0. An initdb under way is finished first (the next start
  then finds a cluster), but PostgreSQL is not started for nobody;
- or until SIGTERM/SIGINT/SIGHUP (the supervisor that runs it as PID 1 of a container,
  or an administrator): initdb is killed (its side directory is left for the next start
  to remove), PostgreSQL gets its fast shutdown at once;
- or until PostgreSQL dies: the state says so, exit 1.

PostgreSQL, initdb and its sync run with a parent-death signal: if the keeper is
SIGKILLed, PostgreSQL gets SIGINT (fast shutdown) and initdb SIGKILL, so nothing outlives
it unowned; the next keeper stops whatever is still shutting down before it starts.

Standard library only, one thread, a poll every 50 ms while waiting. Output: stdout
and stderr (its own lines, initdb's and PostgreSQL's) go where the spawner put them:
`postgres.log` for a detached keeper, the supervisor's stderr under PID 1.
"""

# ruff: noqa: PTH104, PTH119
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

from mcp_supervisor.pg import embedded, share
from mcp_supervisor.pg.embedded import EmbeddedPostgresError
from mcp_supervisor.spec import RunSpec

PR_SET_PDEATHSIG = 1
POLL = 0.05
READY_TIMEOUT = 60.0
INITDB_TIMEOUT = 300.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class KeeperError(Exception):
    """PostgreSQL cannot be run; the message is for the users (it goes into the state)."""


class Stopped(Exception):
    """A stop signal arrived."""


class Keeper:
    def __init__(self, paths: share.Paths, owner_fd: int) -> None:
        self.paths = paths
        self.owner_fd = owner_fd
        self.users_fd = -1
        self.stop_signal: int | None = None
        self.children: dict[int, str] = {}  # pid -> what, still to be waited for
        self.port: int | None = None

    # -- output and state -------------------------------------------------------------

    def say(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with contextlib.suppress(OSError, ValueError):
            print(f"{stamp} pg-keeper[{os.getpid()}]: {message}", file=sys.stderr, flush=True)

    def state(
        self,
        phase: str,
        *,
        postmaster_pid: int | None = None,
        started_at: float | None = None,
        error: str | None = None,
    ) -> None:
        state = share.State(
            phase=phase,
            keeper_pid=os.getpid(),
            port=self.port,
            postmaster_pid=postmaster_pid,
            started_at=started_at,
            error=error,
        )
        share.write_state(self.paths, state)

    # -- signals and waiting ------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def pause(self, seconds: float = POLL) -> None:
        if self.stop_signal is not None:
            raise Stopped
        time.sleep(seconds)
        if self.stop_signal is not None:
            raise Stopped

    def users_left(self) -> bool:
        """True when no user holds the users lock; we then keep it exclusively, so a
        newcomer waits until we are done."""
        return share.try_lock(self.users_fd, exclusive=True)

    # -- children ---------------------------------------------------------------------

    def spawn(self, argv: list[str], plan: embedded.EmbeddedPostgresPlan, deathsig: int) -> int:
        """argv in its own process group, as the plan's user, with fds 0-2 ours and a
        parent-death signal (set after the uid change, which would clear it)."""
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setpgid(0, 0)
                for s in (*STOP_SIGNALS, signal.SIGPIPE):
                    signal.signal(s, signal.SIG_DFL)
                if plan.run_as is not None:
                    uid, gid = plan.run_as
                    os.setgroups([])
                    os.setgid(gid)
                    os.setuid(uid)
                libc.prctl(PR_SET_PDEATHSIG, int(deathsig), 0, 0, 0)
                if os.getppid() != parent:  # the keeper died before the prctl
                    os._exit(1)
                os.execve(argv[0], argv, plan.env)
            except OSError as exc:
                print(f"cannot run {argv[0]}: {exc}", file=sys.stderr, flush=True)
            finally:
                os._exit(127)
        self.children[pid] = os.path.basename(argv[0])
        return pid

    def exited(self, pid: int) -> int | None:
        """pid's exit code once it has ended (reaped), else None."""
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            self.children.pop(pid, None)
            return -1
        if got == 0:
            return None
        self.children.pop(pid, None)
        return os.waitstatus_to_exitcode(status)

    def run_to_end(self, argv: list[str], plan: embedded.EmbeddedPostgresPlan) -> int:
        """Run a short job (initdb, its sync) to its end: a stop signal kills it
        (Stopped), the last user leaving does not (it finishes what it started)."""
        pid = self.spawn(argv, plan, signal.SIGKILL)
        deadline = time.monotonic() + INITDB_TIMEOUT
        while True:
            code = self.exited(pid)
            if code is not None:
                return code
            if time.monotonic() > deadline:
                self.kill_group(pid)
                name = os.path.basename(argv[0])
                raise KeeperError(f"{name} did not finish in {INITDB_TIMEOUT:g} s")
            self.pause(0.01)

    def run_step(self, argv: list[str], plan: embedded.EmbeddedPostgresPlan, what: str) -> None:
        code = self.run_to_end(argv, plan)
        if code != 0:
            raise KeeperError(f"{what} failed with exit code {code}")

    def kill_group(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        self.children.pop(pid, None)

    def stop_postgres(self, pid: int) -> None:
        """Fast shutdown; SIGKILL for the whole group if it outstays STOP_TIMEOUT."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, embedded.STOP_SIGNAL)
        deadline = time.monotonic() + embedded.STOP_TIMEOUT
        while time.monotonic() < deadline:
            code = self.exited(pid)
            if code is not None:
                self.say(f"PostgreSQL stopped (exit code {code})")
                return
            time.sleep(0.01)
        self.say("PostgreSQL outstayed its fast shutdown: killing it")
        self.kill_group(pid)

    # -- the life ---------------------------------------------------------------------

    def run(self) -> int:
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)
        self.users_fd = share.open_lock(self.paths.users_lock)
        self.state(share.STARTING)
        code = 0
        try:
            self.live()
        except Stopped:
            self.say(f"stopped by {signal.Signals(self.stop_signal or 15).name}")
            code = 128 + (self.stop_signal or signal.SIGTERM)
        except (KeeperError, EmbeddedPostgresError, OSError) as exc:
            self.say(f"giving up: {exc}")
            self.state(share.FAILED, error=str(exc))
            code = 1
        finally:
            for pid in list(self.children):
                self.kill_group(pid)
        if code != 1:
            share.remove_state(self.paths)
        # The owner lock first: a newcomer who gets the users lock next must find no owner.
        os.close(self.owner_fd)
        os.close(self.users_fd)
        return code

    def live(self) -> None:
        plan = embedded.plan(RunSpec(data_dir=self.paths.data_dir, wait_for=("postgres",)))
        if plan.initdb_argv is None:
            for note in embedded.stop_leftover_postgres(plan.pgdata, sleep=self.pause):
                self.say(note)
        for note in plan.prepare_filesystem():
            self.say(note)
        if plan.initdb_argv is not None:
            self.make_cluster(plan)
            if self.users_left():
                self.say("the cluster is ready; no user is left, so PostgreSQL is not started")
                return
        self.serve(plan)

    def make_cluster(self, plan: embedded.EmbeddedPostgresPlan) -> None:
        assert plan.initdb_argv is not None and plan.sync_argv is not None
        self.state(share.INITDB)
        self.say(f"initialising a new cluster in {plan.pgdata}")
        started = time.monotonic()
        try:
            self.run_step(plan.initdb_argv, plan, "initdb")
            self.run_step(plan.sync_argv, plan, "syncing the new cluster")
        except BaseException:
            # postgres.initdb/ stays: the next start removes it (prepare_filesystem), so a
            # stop does not wait for the removal of some thousand files.
            for pid in list(self.children):
                self.kill_group(pid)
            raise
        os.rename(plan.pgdata_new, plan.pgdata)
        self.say(f"cluster initialised in {time.monotonic() - started:.2f} s")

    def serve(self, plan: embedded.EmbeddedPostgresPlan) -> None:
        self.port = plan.port
        pid = self.spawn(plan.postgres_argv, plan, embedded.STOP_SIGNAL)
        self.state(share.LAUNCHING, postmaster_pid=pid)
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while not embedded.postmaster_ready(plan.pgdata, pid):
                code = self.exited(pid)
                if code is not None:
                    raise KeeperError(f"PostgreSQL exited with code {code} while starting")
                if time.monotonic() > deadline:
                    raise KeeperError(f"PostgreSQL was not ready within {READY_TIMEOUT:g} s")
                self.pause(0.01)
            self.state(share.READY, postmaster_pid=pid, started_at=time.time())
            self.say(f"PostgreSQL ready on 127.0.0.1:{plan.port} (pid {pid})")
            while True:
                code = self.exited(pid)
                if code is not None:
                    raise KeeperError(f"PostgreSQL exited unexpectedly with code {code}")
                if self.users_left():
                    self.say("the last user has gone: stopping PostgreSQL")
                    break
                self.pause()
        except Stopped:
            self.state(share.STOPPING, postmaster_pid=pid)
            self.stop_postgres(pid)
            raise
        self.state(share.STOPPING, postmaster_pid=pid)
        self.stop_postgres(pid)


def _parse(argv: list[str]) -> tuple[str, int]:
    if len(argv) != 4 or argv[0] != "--data-dir" or argv[2] != "--lock-fd":
        raise SystemExit("usage: python -m mcp_supervisor.pg.keeper --data-dir DIR --lock-fd N")
    return argv[1], int(argv[3])


def _own_fds(lock_fd: int) -> None:
    """stdin from /dev/null, stdout onto stderr (under PID 1 fd 1 is MCP's), and no fd
    but the owner lock beyond: an inherited pipe would keep a client waiting, an
    inherited users lock would count the keeper as a user."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    os.closerange(3, lock_fd)
    os.closerange(lock_fd + 1, 65536)
    os.set_inheritable(lock_fd, False)  # PostgreSQL must never hold the owner lock


def main(argv: list[str] | None = None) -> int:
    data_dir, lock_fd = _parse(sys.argv[1:] if argv is None else argv)
    _own_fds(lock_fd)
    os.chdir("/")
    os.umask(0o077)
    return Keeper(share.Paths.for_data_dir(data_dir), lock_fd).run()


if __name__ == "__main__":
    sys.exit(main())
