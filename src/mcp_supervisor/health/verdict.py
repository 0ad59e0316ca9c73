"""The health verdict on a heartbeat: healthy or not, and one line that says why.

Pure, and on the `--check` probe's path, which runs every few seconds in every container:
no imports at run time at all (not even `typing`, ~15 ms here); annotations are strings.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

STATUSES = ("starting", "ready", "unhealthy", "stopping")
DEFAULT_MAX_AGE = 15.0  # 3 x the default interval; only for heartbeats that lack max_age


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _pid(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def max_age_of(heartbeat: "Mapping[str, object]", override: float | None) -> float:
    """The override (MCP_SUPERVISOR_HEARTBEAT_MAX_AGE), else the supervisor's own setting
    stored in the heartbeat, so that the probe needs no configuration."""
    if override is not None and override > 0:
        return override
    stored = _number(heartbeat.get("max_age"))
    return stored if stored is not None and stored > 0 else DEFAULT_MAX_AGE


def verdict(
    heartbeat: "Mapping[str, object]",
    now: float,
    *,
    require_ready: bool,
    pid_alive: "Callable[[int], bool]",
    max_age: float | None = None,
) -> tuple[bool, str]:
    """(healthy, reason) for a parsed heartbeat at wall-clock time `now`.

    `require_ready` is the readiness probe (`--check --ready`): the child must have said
    READY=1. `pid_alive` answers for the supervisor's and the child's pids (a zombie is
    dead); the caller makes it answer True when it cannot see the supervisor's PIDs.
    """
    if not isinstance(heartbeat, dict):
        return False, "corrupt heartbeat: not a JSON object"
    updated_at = _number(heartbeat.get("updated_at"))
    status = heartbeat.get("status")
    if updated_at is None or status not in STATUSES:
        return False, "corrupt heartbeat: missing or invalid updated_at/status"
    limit = max_age_of(heartbeat, max_age)
    age = now - updated_at
    if age > limit:
        return False, f"stale heartbeat: last written {age:.1f} s ago (max age {limit:g} s)"
    age = max(age, 0.0)  # a clock step back makes it look written in the future

    supervisor = _pid(heartbeat.get("supervisor_pid"))
    if supervisor is not None and not pid_alive(supervisor):
        return False, f"supervisor not alive (pid {supervisor})"
    if status == "stopping":
        return False, "stopping: the supervisor is shutting down"

    child = _pid(heartbeat.get("child_pid"))
    if heartbeat.get("watchdog_missed") is True:
        period = _number(heartbeat.get("watchdog_sec"))
        within = f" within {period:g} s" if period is not None else ""
        return False, f"watchdog missed: child pid {child} sent no WATCHDOG=1{within}"
    phase = heartbeat.get("phase")
    if phase == "restarting":
        restarts = heartbeat.get("restarts")
        return False, f"child not alive: restarting it (restarts so far: {restarts})"
    if child is not None and not pid_alive(child):
        return False, f"child not alive: pid {child} has exited or is a zombie"
    if child is None and phase == "running":
        return False, "child not alive: no child process"

    text = heartbeat.get("status_text")
    detail = f" ({text})" if isinstance(text, str) and text else ""
    if require_ready and status != "ready":
        return False, f"not ready: {status}{detail}, phase {phase}"
    who = f"child pid {child}" if child is not None else f"phase {phase}"
    return True, f"healthy: {status}{detail}, {who}, heartbeat {age:.1f} s old"
