"""Plain unit tests of the supervisor's functional core."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_supervisor import exitcodes
from mcp_supervisor.config import ConfigError, load_settings
from mcp_supervisor.pid1 import policy, signals
from mcp_supervisor.pid1.policy import SignalAction
from mcp_supervisor.redact import mask_url, redact_secret, redact_url
from mcp_supervisor.spec import RunSpec
from mcp_supervisor.state import Phase


@pytest.mark.parametrize(
    ("phase", "signum", "action"),
    [
        (Phase.RUNNING, signal.SIGTERM, SignalAction.STOP),
        (Phase.RUNNING, signal.SIGINT, SignalAction.STOP),
        (Phase.RUNNING, signal.SIGQUIT, SignalAction.STOP),
        (Phase.RUNNING, signal.SIGHUP, SignalAction.FORWARD),
        (Phase.RUNNING, signal.SIGWINCH, SignalAction.FORWARD),
        (Phase.RUNNING, signal.SIGTTIN, SignalAction.FORWARD),
        (Phase.RUNNING, signal.SIGCHLD, SignalAction.REAP),
        (Phase.STOPPING, signal.SIGINT, SignalAction.FORWARD),
        (Phase.STOPPING, signal.SIGCHLD, SignalAction.REAP),
        (Phase.PREPARING, signal.SIGTERM, SignalAction.STOP),
        (Phase.PREPARING, signal.SIGUSR1, SignalAction.IGNORE),
        (Phase.STARTING, signal.SIGTERM, SignalAction.EXIT),
        (Phase.STARTING, signal.SIGHUP, SignalAction.IGNORE),
        (Phase.RESTARTING, signal.SIGINT, SignalAction.EXIT),
        (Phase.EXITED, signal.SIGTERM, SignalAction.IGNORE),
    ],
)
def test_signal_action_per_phase(phase: Phase, signum: int, action: SignalAction) -> None:
    assert policy.on_signal(phase, signum) is action


def test_forward_target() -> None:
    assert policy.forward_target(42, signal_group=False) == 42
    assert policy.forward_target(42, signal_group=True) == -42


def test_outcome_is_the_childs_code_even_after_a_stop() -> None:
    assert policy.outcome_after_child(0, signal.SIGTERM).exit_code == 0
    assert policy.outcome_after_child(137, signal.SIGTERM).exit_code == 137
    assert policy.outcome_after_child(3, None).exit_code == 3


def _status(code_or_signal: str) -> int:
    proc = subprocess.Popen(["sh", "-c", code_or_signal])
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = 0  # reaped by hand
    return status


def test_wait_status_mapping_on_real_statuses() -> None:
    assert exitcodes.from_wait_status(_status("exit 0")) == 0
    assert exitcodes.from_wait_status(_status("exit 255")) == 255
    assert exitcodes.from_wait_status(_status("kill -TERM $$")) == 143
    assert exitcodes.from_wait_status(_status("kill -USR1 $$")) == 138
    assert exitcodes.from_wait_status(_status("kill -KILL $$")) == 137


def test_spawn_errors_map_to_126_and_127() -> None:
    import errno

    assert exitcodes.from_spawn_error(OSError(errno.ENOENT, "x")) == 127
    assert exitcodes.from_spawn_error(OSError(errno.EACCES, "x")) == 126
    assert exitcodes.from_spawn_error(OSError(errno.ENOEXEC, "x")) == 126


def test_forwarded_signals_are_every_catchable_but_sigchld() -> None:
    fwd = {int(s) for s in signals.forwarded()}
    assert signal.SIGCHLD not in fwd and signal.SIGKILL not in fwd and signal.SIGSTOP not in fwd
    for s in (
        "SIGSEGV",
        "SIGBUS",
        "SIGFPE",
        "SIGILL",
        "SIGTRAP",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGUSR1",
        "SIGUSR2",
        "SIGTERM",
        "SIGWINCH",
        "SIGCONT",
        "SIGALRM",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGPIPE",
    ):
        assert int(getattr(signal, s)) in fwd


def test_fault_signals_are_read_with_their_sender_not_handled() -> None:
    # A Python handler would return to a real fault's instruction forever.
    assert not signals.FAULTS & set(signals.catchable())
    # kill (SI_USER), sigqueue (SI_QUEUE), tgkill (SI_TKILL) vs the kernel's own codes.
    assert signals.sent_by_a_process(0) and signals.sent_by_a_process(-1)
    assert signals.sent_by_a_process(-6)
    assert not signals.sent_by_a_process(1)  # SEGV_MAPERR, BUS_ADRALN, ...
    assert not signals.sent_by_a_process(0x80)  # SI_KERNEL


def test_only_a_stop_signal_is_followed_by_sigcont() -> None:
    assert policy.resume_after(signal.SIGTERM) and policy.resume_after(signal.SIGINT)
    assert policy.resume_after(signal.SIGQUIT)
    assert not policy.resume_after(signal.SIGTSTP) and not policy.resume_after(signal.SIGHUP)


def test_redaction() -> None:
    assert redact_url("postgresql://me:hunter2@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact_url("no url here") == "no url here"
    assert "hunter2" not in redact_url("failed for postgresql+asyncpg://u:hunter2@h/db: refused")
    assert redact_secret("password hunter2 rejected", "hunter2") == "password *** rejected"
    # a password typed with "@" in it: masked whole, in text as in a URL alone
    assert redact_url("postgresql://me:p@ss@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert (
        redact_url("at 'postgresql://me:p@ss@db/x', and http://u:pw@h?x=1")
        == "at 'postgresql://me:***@db/x', and http://u:***@h?x=1"
    )
    assert redact_url("postgresql://me:p@ss@db") == "postgresql://me:***@db"
    assert mask_url("postgresql://me:p@ss@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert mask_url("postgresql://db/x") == "postgresql://db/x"
    assert mask_url("http://[::1") == "<unparseable URL>"


def test_spec_round_trips_through_a_pipe() -> None:
    spec = RunSpec(command=("cat",), wait_for=("ollama",), grace_period=3.5)
    fd = spec.write_to_pipe()
    assert RunSpec.read_from_fd(fd) == spec


@pytest.mark.usefixtures("clean_env")
class TestSettings:
    def test_defaults(self) -> None:
        spec = load_settings().to_spec(None)
        # The server from this very installation, even when its bin/ is not on PATH.
        assert spec.command == (str(Path(sys.executable).parent / "codebase-mcp"), "serve")
        assert spec.grace_period == 8.0
        assert spec.wait_for == ("postgres",)  # Ollama only when asked for
        assert spec.heartbeat_max_age == 3 * spec.heartbeat_interval
        assert spec.restart == "never"  # stdio: a restart would break the client's session

    def test_http_transport_restarts_on_failure(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MCP_TRANSPORT", "http")
        assert load_settings().to_spec(None).restart == "on-failure"

    def test_flags_beat_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MCP_SUPERVISOR_GRACE_PERIOD", "4")
        assert load_settings().grace_period == 4
        assert load_settings({"grace_period": 2.5}).grace_period == 2.5

    def test_wait_for_lists(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MCP_SUPERVISOR_WAIT_FOR", "none")
        assert load_settings().wait_for == ()
        monkeypatch.setenv("MCP_SUPERVISOR_WAIT_FOR", " Ollama ,postgres,ollama")
        assert load_settings().wait_for == ("ollama", "postgres")

    def test_every_bad_setting_named_once_without_secrets(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MCP_SUPERVISOR_GRACE_PERIOD", "-1")
        monkeypatch.setenv("MCP_SUPERVISOR_HEARTBEAT_INTERVAL", "x")
        monkeypatch.setenv("MCP_SUPERVISOR_RESTART", "sometimes")
        monkeypatch.setenv("REGISTRY_DATABASE_URL", "mysql://u:hunter2@h/db")
        with pytest.raises(ConfigError) as err:
            load_settings()
        text = str(err.value)
        assert len(err.value.problems) == 4
        for name in (
            "MCP_SUPERVISOR_GRACE_PERIOD",
            "MCP_SUPERVISOR_HEARTBEAT_INTERVAL",
            "MCP_SUPERVISOR_RESTART",
            "REGISTRY_DATABASE_URL",
        ):
            assert name in text
        assert "hunter2" not in text

    def test_asyncpg_scheme_accepted(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("REGISTRY_DATABASE_URL", "postgresql+asyncpg://u:p@h:5432/db")
        assert load_settings().database_url == "postgresql+asyncpg://u:p@h:5432/db"
