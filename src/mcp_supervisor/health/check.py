"""`mcp-supervisor --check [--ready] [--heartbeat-file PATH]`: the container's health probe.

Reads the heartbeat the supervisor writes (given no path, it finds the one meant in the
supervisors' runtime directories: `runtime.find_heartbeat`) and exits 0 when healthy, 1
otherwise, printing one line that says why (Docker keeps it in `docker inspect`). It runs
every few seconds in every container, so it imports only what a bare interpreter has
already loaded plus the C half of `json` (the `json` package pulls in `re` and `enum`,
which cost more than the whole interpreter start here) and, to find the heartbeat,
`fcntl`. Never a traceback: every failure is a reason and exit 1.
"""

import os
import sys
import time

from mcp_supervisor.health.verdict import verdict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_FILE = "MCP_SUPERVISOR_HEARTBEAT_FILE"
ENV_MAX_AGE = "MCP_SUPERVISOR_HEARTBEAT_MAX_AGE"
MAX_BYTES = 1 << 20  # a heartbeat is ~600 bytes; anything huge is not ours
USAGE = "usage: mcp-supervisor --check [--ready] [--heartbeat-file PATH]"


class ProbeError(Exception):
    """A reason to report unhealthy (exit 1) before any verdict."""


class _Context:
    """What json's C scanner reads from a JSONDecoder: json.loads' settings, except that
    NaN and Infinity (not JSON) are errors."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not valid JSON")


def loads(text: str) -> object:
    """json.loads without importing `json` (and with it `re` and `enum`)."""
    try:
        import _json
    except ImportError:  # pragma: no cover - an interpreter without the C accelerator
        import json

        return json.loads(text, parse_constant=_Context.parse_constant)
    text = text.strip()
    try:
        value, end = _json.make_scanner(_Context)(text, 0)  # type: ignore[arg-type]
    except (StopIteration, ValueError, SystemError):
        end = -1  # the C scanner reports errors through json.decoder, only if loaded
    if end != len(text):
        import json  # the rare error path: json.loads says precisely what is wrong

        return json.loads(text, parse_constant=_Context.parse_constant)
    return value


def pid_alive(pid: int) -> bool:
    """Whether a pid runs: /proc/<pid>/stat exists and its state is not Z (zombie) or X."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # noqa: PTH123 - pathlib imports re
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True  # cannot tell (e.g. hidepid): let staleness decide
    # The command name (in parentheses) may itself hold ") ": the state follows the last.
    state = stat[stat.rfind(b")") + 2 :][:1]
    return state not in (b"Z", b"X", b"x", b"")


def pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")  # noqa: PTH115 - pathlib imports re
    except OSError:
        return None


def parse_args(argv: list[str]) -> tuple[bool, str | None]:
    """(require_ready, heartbeat_file) from the arguments after `mcp-supervisor`."""
    ready = False
    path: str | None = None
    args = iter(argv)
    for arg in args:
        if arg == "--check":
            continue
        if arg == "--ready":
            ready = True
        elif arg == "--heartbeat-file":
            path = next(args, None)
            if not path:
                raise ProbeError("--heartbeat-file needs a PATH")
        elif arg.startswith("--heartbeat-file="):
            path = arg.partition("=")[2]
            if not path:
                raise ProbeError("--heartbeat-file needs a PATH")
        else:
            raise ProbeError(f"unknown option {arg!r} ({USAGE})")
    return ready, path


def max_age_override(env: "Mapping[str, str]") -> float | None:
    raw = env.get(ENV_MAX_AGE, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ProbeError(f"{ENV_MAX_AGE} must be a positive number of seconds, got {raw!r}")
    return value


def read_heartbeat(path: str) -> object:
    try:
        with open(path, "rb") as f:  # noqa: PTH123 - pathlib imports re
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ProbeError(f"no heartbeat at {path}: the supervisor is not running (yet)") from None
    except OSError as exc:
        raise ProbeError(f"cannot read heartbeat {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ProbeError(f"corrupt heartbeat at {path}: larger than {MAX_BYTES} bytes")
    try:
        return loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProbeError(f"corrupt heartbeat at {path}: {exc}") from None


def probe(argv: list[str]) -> tuple[bool, str]:
    ready, path = parse_args(argv)
    max_age = max_age_override(os.environ)
    path = path or os.environ.get(ENV_FILE)
    if not path:
        # Each supervisor has a runtime directory of its own: find the one meant here.
        from mcp_supervisor.health.runtime import find_heartbeat

        path, why = find_heartbeat(os.environ, os.geteuid())
        if path is None:
            return False, why
    heartbeat = read_heartbeat(path)
    if not isinstance(heartbeat, dict):
        return False, f"corrupt heartbeat at {path}: not a JSON object"
    # PIDs mean something only inside the supervisor's PID namespace (docker exec and
    # Kubernetes exec probes run there); elsewhere the heartbeat's age alone decides.
    ours = pid_namespace()
    same = ours is not None and heartbeat.get("pid_namespace") in (None, ours)
    alive = pid_alive if same else (lambda _pid: True)
    return verdict(heartbeat, time.time(), require_ready=ready, pid_alive=alive, max_age=max_age)


def main(argv: list[str] | None = None) -> int:
    """0 healthy, 1 not (with the reason on one line); never a traceback."""
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(USAGE)  # stdout-ok: help for a human
        return 0
    try:
        ok, reason = probe(args)
    except ProbeError as exc:
        ok, reason = False, str(exc)
    except BaseException as exc:  # a probe reports, it never crashes
        if isinstance(exc, SystemExit):
            raise
        ok, reason = False, f"check failed: {type(exc).__name__}: {exc}"
    print(reason.replace("\n", " "))  # stdout-ok: the probe's one line, not the MCP stream
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
