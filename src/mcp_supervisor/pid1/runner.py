"""The lean PID-1 runner (imperative shell): signals, children, the stop sequence.

Entered by re-exec from `cli.main` with the validated spec on an inherited pipe, and with
every catchable signal still blocked (pending signals survive exec). Imports stay light:
anyio, structlog and the stdlib; waiting and migrating run in a child process whose memory
goes away with it. Every decision comes from `policy`; this module only carries it out.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from mcp_supervisor import exitcodes
from mcp_supervisor.health import heartbeat, notify, runtime
from mcp_supervisor.log import configure_logging, get_logger
from mcp_supervisor.pid1 import policy, process, restart, signals
from mcp_supervisor.spec import RunSpec
from mcp_supervisor.state import Phase, SupervisorState

# How long an auxiliary service (the embedded PostgreSQL) gets for its own clean stop.
AUX_STOP_TIMEOUT = 5.0


@dataclasses.dataclass
class _Child:
    role: str  # "main", "prepare", "postgres", "initdb"
    pid: int
    pgid: int
    done: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    status: int | None = None

    @property
    def exit_code(self) -> int:
        assert self.status is not None
        return exitcodes.from_wait_status(self.status)


class Supervisor:
    """Owns every child and every wait status of this process."""

    def __init__(self, spec: RunSpec, state: SupervisorState) -> None:
        self.spec = spec
        self.state = state
        self.log = get_logger()
        self.children: dict[int, _Child] = {}
        self.current: _Child | None = None  # the child that receives forwarded signals
        self.aux: list[_Child] = []  # services that outlive the main child (embedded pg)
        self.stop_signal: int | None = None
        self.stop_deadline: float | None = None
        self.stop_requested = anyio.Event()
        self.env_extra: dict[str, str] = {}
        self._aux_stop_signal: int = signal.SIGTERM
        self.membership: Any = None  # share.Membership: our use of the shared PostgreSQL
        # Health hook: called after every change the heartbeat shows (phase, child).
        self.on_change: Callable[[], None] = lambda: None

    # -- children -------------------------------------------------------------------

    def _spawn(
        self,
        role: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        run_as: tuple[int, int] | None = None,
    ) -> _Child:
        spawned = process.spawn(argv, env, run_as=run_as)
        child = _Child(role, spawned.pid, spawned.pgid)
        # Registered before any await: the reaper cannot see the pid before we do.
        self.children[child.pid] = child
        return child

    def _reap(self) -> None:
        for pid, status in process.reap():
            child = self.children.pop(pid, None)
            if child is None:
                self.log.debug("reaped orphan", pid=pid, status=status)
                continue
            child.status = status
            child.done.set()

    async def _wait(self, child: _Child) -> int:
        await child.done.wait()
        return child.exit_code

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        for key in notify.INHERITED_TO_DROP:
            env.pop(key, None)
        env.update(self.env_extra)
        return env

    # -- signals --------------------------------------------------------------------

    async def signal_loop(self, receiver: Any) -> None:
        async for signum in receiver:
            self.on_signal(int(signum))

    def on_signal(self, signum: int) -> None:
        action = policy.on_signal(self.state.phase, signum)
        if action is policy.SignalAction.REAP:
            self._reap()
        elif action is policy.SignalAction.FORWARD:
            self._forward(signum)
        elif action is policy.SignalAction.STOP:
            self._begin_stop(signum)
        elif action is policy.SignalAction.EXIT:
            self.log.info("stop requested before the child runs", signal=signals.name(signum))
            self.stop_signal = signum
            self.stop_requested.set()
        else:
            self.log.debug("signal ignored in this phase", signal=signals.name(signum))

    def _forward(self, signum: int) -> None:
        child = self.current
        if child is None or child.done.is_set():
            return
        target = policy.forward_target(
            child.pid, signal_group=self.spec.signal_group and child.role == "main"
        )
        self.log.debug("forwarding signal", signal=signals.name(signum), target=target)
        process.signal_pid(target, signum)
        if policy.resume_after(signum):
            process.signal_pid(target, signal.SIGCONT)

    def _begin_stop(self, signum: int) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
            self.stop_deadline = time.monotonic() + self.spec.grace_period
            self.state.phase = Phase.STOPPING
            self.on_change()
            self.log.info(
                "stopping", signal=signals.name(signum), grace_period=self.spec.grace_period
            )
            self.stop_requested.set()
        self._forward(signum)

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> int:
        code = exitcodes.SOFTWARE
        try:
            code = await self._lifecycle()
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown_everything()
        self.state.phase = Phase.EXITED
        return code

    async def _lifecycle(self) -> int:
        if self.spec.embedded_postgres or self.spec.wait_for or self.spec.migrate:
            self.state.phase = Phase.PREPARING
            # For the heartbeat: a failed preparation ends the supervisor (and the file).
            self.state.dependencies = {dep: "waiting" for dep in self.spec.wait_for}
            self.on_change()
            code = await self._prepare()
            if code is not None:
                return code
            self.state.dependencies = {dep: "ok" for dep in self.spec.wait_for}
        if self.stop_signal is not None:
            return exitcodes.for_signal(self.stop_signal)
        return await self._run_main()

    async def _prepare(self) -> int | None:
        """Embedded PostgreSQL (when wanted), then the wait/migrate child. None when the
        main child may start, else the exit code."""
        spec = self.spec
        if spec.embedded_postgres:
            url = await self._start_embedded_postgres()
            if url is None:
                return (
                    exitcodes.for_signal(self.stop_signal)
                    if self.stop_signal
                    else exitcodes.UNAVAILABLE
                )
            self.env_extra["REGISTRY_DATABASE_URL"] = url
            spec = dataclasses.replace(spec, database_url=url)
        if not (spec.wait_for or spec.migrate):
            return None
        mode = "migrate" if spec.migrate else "wait"
        fd = spec.write_to_pipe()
        argv = [
            sys.executable,
            "-m",
            "mcp_supervisor.prepare.steps",
            "--spec-fd",
            str(fd),
            "--mode",
            mode,
        ]
        started = time.monotonic()
        try:
            child = self._spawn("prepare", argv, self.child_env())
        finally:
            os.close(fd)
        self.current = child
        code = await self._wait_unless_aux_dies(child)
        self.current = None
        if code is None:
            return exitcodes.UNAVAILABLE
        self.log.info(
            "preparation finished",
            mode=mode,
            exit_code=code,
            duration_s=round(time.monotonic() - started, 3),
        )
        if self.stop_signal is not None:
            return exitcodes.for_signal(self.stop_signal)
        return code or None

    async def _wait_unless_aux_dies(self, child: _Child) -> int | None:
        """The child's exit code, or None when an auxiliary service (the embedded
        PostgreSQL) died first: waiting for it until the deadline would be pointless."""
        died: list[_Child | None] = []  # None: the shared PostgreSQL (not our child)
        async with anyio.create_task_group() as tg:

            async def watch(aux: _Child) -> None:
                await aux.done.wait()
                died.append(aux)
                tg.cancel_scope.cancel()

            async def watch_shared() -> None:
                while self.membership.alive():  # noqa: ASYNC110 - no event to wait for
                    await anyio.sleep(0.1)
                died.append(None)
                tg.cancel_scope.cancel()

            for aux in self.aux:
                tg.start_soon(watch, aux)
            if self.membership is not None and not self.aux:
                tg.start_soon(watch_shared)
            await child.done.wait()
            tg.cancel_scope.cancel()
        if child.done.is_set():
            return child.exit_code
        gone = died[0]
        if gone is not None:
            self.log.error(
                "embedded PostgreSQL exited while preparing (its own messages are above)",
                pid=gone.pid,
                exit_code=gone.exit_code,
            )
        else:
            self.log.error(
                "embedded PostgreSQL exited while preparing",
                postmaster_pid=self.membership.state.postmaster_pid,
                log_file=self.membership.paths.log_file,
            )
        process.signal_pid(child.pid, signal.SIGTERM)
        await self._wait(child)
        return None

    async def _start_embedded_postgres(self) -> str | None:
        """Join the data directory's shared PostgreSQL (pg.share), starting its keeper
        when none runs: detached, so that it outlives us while others use it; or, as
        PID 1 of a container (no other users), as our own child that we stop after the
        server. The URL, or None (logged) when it cannot be had or a stop came first."""
        from mcp_supervisor.pg import share

        started = time.monotonic()
        deadline = started + self.spec.dependency_timeout
        spawn = self._spawn_keeper if os.getpid() == 1 else share.spawn_detached_keeper
        try:
            joining = share.Joining(share.Paths.for_data_dir(self.spec.data_dir), spawn)
        except share.JoinError as exc:
            self.log.error(str(exc))
            return None
        seen = ""
        while True:
            try:
                member = joining.step()
            except share.JoinError as exc:
                self.log.error(str(exc))  # a broken or unusable data directory: exit 69
                return None
            if member is not None:
                break
            if joining.phase != seen:
                seen = joining.phase
                if seen == share.INITDB:
                    where = joining.paths.data_dir
                    self.log.info("initialising embedded PostgreSQL", data_dir=where)
                else:
                    self.log.debug("waiting for the embedded PostgreSQL", phase=seen)
            if self.stop_signal is not None or time.monotonic() > deadline:
                joining.abandon()
                if self.stop_signal is None:
                    self.log.error(
                        "the embedded PostgreSQL was not ready in time",
                        phase=joining.phase,
                        timeout_s=self.spec.dependency_timeout,
                        log_file=joining.paths.log_file,
                    )
                return None
            with anyio.move_on_after(0.02):
                await self.stop_requested.wait()
            self._reap()  # a keeper of ours that died while starting
        self.membership = member
        # The server child is a user too: if we are SIGKILLed it keeps PostgreSQL alive
        # until it has finished with it.
        os.set_inheritable(member.fd, True)
        self.log.info(
            "embedded PostgreSQL started" if member.started_owner else "embedded PostgreSQL joined",
            url=member.safe_url,
            postmaster_pid=member.state.postmaster_pid,
            duration_s=round(time.monotonic() - started, 3),
        )
        return member.url

    def _spawn_keeper(self, paths: Any, owner_fd: int) -> None:
        """PID 1: the keeper is our child (nothing outlives a container's PID 1 anyway),
        stopped with SIGTERM once the server has exited."""
        from mcp_supervisor.pg import share

        os.set_inheritable(owner_fd, True)
        try:
            keeper = self._spawn(
                "postgres", share.keeper_argv(paths.data_dir, owner_fd), share.keeper_env()
            )
        finally:
            os.set_inheritable(owner_fd, False)
        self.aux.append(keeper)
        self._aux_stop_signal = signal.SIGTERM

    async def _run_main(self) -> int:
        """The main child, restarted as the restart policy says (with backoff), until it
        ends for good, a stop arrives, or the restart budget is spent (exit 70)."""
        budget = restart.RestartBudget(self.spec.restart_limit, self.spec.restart_window)
        while True:
            code, spawned = await self._run_main_once()
            if not spawned:
                return code  # 126/127: retrying will not make the command appear
            decision = restart.decide(
                self.spec.restart,
                code,
                stopping=self.stop_signal is not None,
                watchdog_miss=self.state.watchdog_missed,
                budget=budget,
                backoff_cap=self.spec.restart_backoff_cap,
                now=time.monotonic(),
            )
            if decision.give_up:
                self.log.error(
                    "restart limit reached: giving up",
                    reason=decision.reason,
                    last_exit_code=code,
                    exit_code=restart.GIVE_UP_EXIT_CODE,
                )
                return restart.GIVE_UP_EXIT_CODE
            if not decision.restart:
                return code
            self.state.phase = Phase.RESTARTING
            self.state.restarts += 1
            self.on_change()
            self.log.warning(
                "restarting the child",
                reason=decision.reason,
                delay_s=decision.delay,
                restarts=self.state.restarts,
            )
            with anyio.move_on_after(decision.delay):
                await self.stop_requested.wait()
            if self.stop_signal is not None:
                return exitcodes.for_signal(self.stop_signal)

    async def on_watchdog_miss(self, reason: str) -> None:
        """The child stopped feeding its watchdog: under a restart policy, kill it (a
        blocked event loop would not act on SIGTERM) and let `_run_main` restart it."""
        child = self.current
        if (
            self.spec.restart == "never"
            or self.stop_signal is not None
            or child is None
            or child.role != "main"
            or child.done.is_set()
        ):
            return
        self.log.warning("killing the unresponsive child", pid=child.pid, reason=reason)
        if child.pgid != os.getpgrp():
            process.signal_group(child.pgid, signal.SIGKILL)
        process.signal_pid(child.pid, signal.SIGKILL)

    async def _run_main_once(self) -> tuple[int, bool]:
        """(exit code, whether it was spawned at all)."""
        argv = self.spec.command
        try:
            child = self._spawn("main", argv, self.child_env())
        except OSError as exc:
            code = exitcodes.from_spawn_error(exc)
            self.log.error(
                "cannot start command", command=argv[0], error=exc.strerror, exit_code=code
            )
            return code, False
        self.current = child
        self.state.child_spawned(child.pid)
        self.state.phase = Phase.RUNNING
        self.on_change()
        if process.hand_terminal_to(child.pgid):
            # It may have read the terminal before it was its own: let it go on.
            process.signal_group(child.pgid, signal.SIGCONT)
        self.log.info("child started", command=list(argv), pid=child.pid)
        if self.stop_signal is not None:  # a stop raced the spawn: it still applies
            self._forward(self.stop_signal)
        code = await self._wait(child)
        outcome = policy.outcome_after_child(code, self.stop_signal)
        self.log.info("child exited", exit_code=code, reason=outcome.reason)
        self.state.child_gone()
        self.on_change()
        return outcome.exit_code, True

    # -- the end: nothing we started may outlive us ---------------------------------

    def _deadline(self) -> float:
        if self.stop_deadline is not None:
            return self.stop_deadline
        return time.monotonic() + self.spec.grace_period

    def _leftovers(self) -> list[int]:
        """Everything below us except the auxiliary services' trees."""
        aux = {c.pid for c in self.aux if not c.done.is_set()}
        out: list[int] = []
        for pid in process.children_of(os.getpid()):
            if pid in aux:
                continue
            out.append(pid)
            out.extend(process.descendants(pid))
        return out

    async def _shutdown_everything(self) -> None:
        """tini's and dumb-init's stop order (forward, grace window, SIGKILL the group),
        plus the sweep neither does: every descendant left, setsid escapees included, is
        killed and reaped, so nothing we started outlives us."""
        if self.stop_signal is not None:
            self.state.phase = Phase.STOPPING
        # A main child still running (the lifecycle itself failed) is among the leftovers.
        deadline = self._deadline()
        await self._drain(self._leftovers, deadline, self.stop_signal or signal.SIGTERM)
        for aux in self.aux:
            if not aux.done.is_set():
                self.log.info("stopping embedded PostgreSQL", pid=aux.pid)
                process.signal_pid(aux.pid, self._aux_stop_signal)
        aux_deadline = time.monotonic() + AUX_STOP_TIMEOUT
        await self._drain(self._aux_and_rest, aux_deadline, None)
        if self.membership is not None:
            self.membership.close()  # we are no longer a user

    def _aux_and_rest(self) -> list[int]:
        return process.descendants(os.getpid())

    async def _drain(
        self, alive: Callable[[], list[int]], deadline: float, term: int | None
    ) -> None:
        """Ask what is left to stop (term), wait until the deadline, then SIGKILL and reap
        until nothing is left."""
        pids = alive()
        if not pids:
            return
        if term is not None:
            for pid in pids:
                process.signal_pid(pid, term)
                process.signal_pid(pid, signal.SIGCONT)  # a stopped one would not act on it
        while pids and time.monotonic() < deadline:
            await anyio.sleep(0.02)
            self._reap()
            pids = alive()
        killed = False
        while pids:
            if not killed:
                self.log.warning("grace window over: killing what is left", pids=pids)
                killed = True
            for pid in pids:
                group = process.group_of(pid)
                if group is not None and group != os.getpgrp():
                    process.signal_group(group, signal.SIGKILL)
                process.signal_pid(pid, signal.SIGKILL)
            await anyio.sleep(0.01)
            self._reap()
            pids = alive()
        self._reap()


async def supervise(spec: RunSpec, *, hard_exit: bool = False) -> int:
    """Run the supervisor to its end. `hard_exit` (PID 1): once nothing we started runs
    and every file is written, end the process right here; the event loop's and the
    interpreter's teardown only delay `docker stop` (~15 ms and ~100 ms)."""
    state = SupervisorState()
    configure_logging(spec, state=state)
    log = get_logger()
    claim = _claim_runtime(spec)
    if claim is None:
        return exitcodes.CONFIG
    try:
        spec = dataclasses.replace(spec, heartbeat_file=claim.heartbeat_file)
        if os.getpid() != 1 and not process.become_subreaper():
            log.warning("not PID 1 and PR_SET_CHILD_SUBREAPER refused: orphans will escape")
        sup = Supervisor(spec, state)
        beat = heartbeat.Heartbeat(spec, state)
        sup.on_change = beat.poke
        notifier = notify.NotifyServer(
            spec, state, on_change=beat.poke, on_miss=sup.on_watchdog_miss
        )
        try:
            sup.env_extra.update(notifier.child_env())
        except OSError as exc:
            log.warning("no notify socket: readiness and watchdog are off", error=str(exc))
        log.info(
            "runtime directory",
            directory=claim.directory,
            heartbeat=claim.heartbeat_file,
            notify_socket=notifier.address,
        )
        _start_fault_watcher(sup, anyio.lowlevel.current_token())
        with anyio.open_signal_receiver(*signals.catchable()) as receiver:
            # Handlers are in place: what arrived while we started is delivered now.
            signals.unblock_handled()
            async with anyio.create_task_group() as tg:
                tg.start_soon(sup.signal_loop, receiver)
                tg.start_soon(_grace_timer, sup)
                tg.start_soon(beat.run)  # removes the heartbeat when cancelled at the end
                if notifier.address is not None:
                    tg.start_soon(notifier.serve)
                code = await sup.run()
                tg.cancel_scope.cancel()
            claim.release()
            log.info("exiting", exit_code=code)
            if hard_exit:
                # Still inside the receiver: putting 31 signal handlers back is wasted work.
                sys.stderr.flush()
                os._exit(code)
    finally:
        claim.release()
    return code


def _claim_runtime(spec: RunSpec) -> runtime.Claim | None:
    """This instance's runtime directory, locked for its lifetime; None (exit 78) when a
    configured one belongs to another live supervisor."""
    log = get_logger()
    try:
        return runtime.claim(spec.heartbeat_file)
    except runtime.InUse as exc:
        log.error(
            f"invalid configuration: MCP_SUPERVISOR_HEARTBEAT_FILE: {exc}",
            exit_code=exitcodes.CONFIG,
        )
        return None
    except OSError as exc:
        # A read-only /tmp, say: serve anyway. The heartbeat cannot be written there
        # either, and the probe will say so, which is the truth.
        path = runtime.unclaimed_heartbeat_file(os.environ, os.getpid(), os.geteuid())
        log.error("no runtime directory of our own", error=str(exc), heartbeat=path)
        return runtime.Claim(os.path.dirname(path), path, -1, owned=False)  # noqa: PTH120


def _start_fault_watcher(sup: Supervisor, token: anyio.lowlevel.EventLoopToken) -> None:
    """A daemon thread waits for the fault signals (blocked everywhere): one sent with kill
    goes to the event loop like any other signal; one from the kernel crashes us."""

    def watch() -> None:
        while True:
            signum, code, sender = signals.wait_fault()
            if not signals.sent_by_a_process(code):
                sup.log.critical(
                    "fault signal from the kernel: crashing",
                    signal=signals.name(signum),
                    si_code=code,
                )
                signals.crash()
            try:
                anyio.from_thread.run_sync(_on_fault_signal, sup, signum, sender, token=token)
            except RuntimeError:
                return  # the event loop has ended: we are exiting

    threading.Thread(target=watch, name="fault-signals", daemon=True).start()


def _on_fault_signal(sup: Supervisor, signum: int, sender: int) -> None:
    sup.log.info("fault signal sent by another process", signal=signals.name(signum), sender=sender)
    sup.on_signal(signum)


async def _grace_timer(sup: Supervisor) -> None:
    """At the end of the grace window: SIGKILL the main child's process group."""
    await sup.stop_requested.wait()
    if sup.stop_deadline is None:
        return
    await anyio.sleep(max(0.0, sup.stop_deadline - time.monotonic()))
    main = sup.current
    if main is not None and not main.done.is_set():
        sup.log.warning("grace window over: killing the child's process group", pgid=main.pgid)
        process.signal_group(main.pgid, signal.SIGKILL)
        process.signal_pid(main.pid, signal.SIGKILL)


def main(argv: list[str] | None = None, *, hard_exit: bool = False) -> int:
    """`--spec-fd N`, from `cli.main` only (argparse would cost PID 1 half a megabyte)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--spec-fd" or not args[1].isdigit():
        print("mcp-supervisor: the runner is started by mcp-supervisor itself", file=sys.stderr)
        return exitcodes.USAGE
    # Blocked already when cli.main started us; a runner started directly must hold the
    # faults from the start too, or one sent with kill before the watcher runs kills us.
    signals.block_all()
    spec = RunSpec.read_from_fd(int(args[1]))
    # Stray prints in this process must never reach the MCP stream on fd 1.
    sys.stdout = sys.stderr
    return anyio.run(functools.partial(supervise, spec, hard_exit=hard_exit))


if __name__ == "__main__":
    sys.exit(main())
