"""`mcp-supervisor --check` wall time against a bare `python -c pass` (goal: ratio <= 1.5).

Both run from the same venv, interleaved (so that machine noise hits both alike), on a
fresh heartbeat whose child is alive (the probe's full path: read, parse, /proc), given
its path and found with none (a live runtime directory, as a supervisor leaves). Also
shown: the probe without its launcher (src/bin/mcp-supervisor, hand-written because the
one pip generates for an entry point imports `re` first), and `python -X importtime` of
the probe's path: what it imports beyond a bare interpreter, slowest first.

    .venv/bin/python benchmarks/check_latency.py [--runs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
PYTHON = str(VENV_BIN / "python")


def write_heartbeat(path: Path) -> None:
    data = {
        "version": 1,
        "status": "ready",
        "phase": "running",
        "status_text": "serving",
        "supervisor_pid": os.getpid(),
        "pid_namespace": os.readlink("/proc/self/ns/pid"),
        "child_pid": os.getpid(),
        "child_started_at": time.time(),
        "ready": True,
        "restarts": 0,
        "restart_policy": "on-failure",
        "last_watchdog_ping": time.time(),
        "watchdog_missed": False,
        "watchdog_sec": 30.0,
        "dependencies": {"postgres": "ok", "ollama": "ok"},
        "interval": 5.0,
        "max_age": 3600.0,  # stays fresh for the whole run
        "updated_at": time.time(),
    }
    path.write_text(json.dumps(data))


def compile_probe_path() -> None:
    """Bytecode for the probe's modules, as an installed wheel (or `compileall` in the
    image) has it: this dev tree runs with PYTHONDONTWRITEBYTECODE=1, and compiling
    check.py from source on every run would cost more than the whole probe."""
    import importlib.util
    import py_compile

    for name in (
        "mcp_supervisor",
        "mcp_supervisor.cli",
        "mcp_supervisor.health",
        "mcp_supervisor.health.check",
        "mcp_supervisor.health.verdict",
        "mcp_supervisor.health.runtime",
    ):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            py_compile.compile(spec.origin, doraise=True)


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed


def importtime(argv: list[str], env: dict[str, str]) -> dict[str, int]:
    """module -> cumulative microseconds, from `python -X importtime`."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    out: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        parts = line.split("|")
        if len(parts) != 3:
            continue
        _self, cumulative, name = parts
        try:
            out[name.strip()] = int(cumulative.strip())
        except ValueError:
            continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40, help="runs of each command (>= 30)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SUPERVISOR_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    compile_probe_path()
    from mcp_supervisor.health import runtime

    with tempfile.TemporaryDirectory(prefix="check-bench-") as tmp:
        hb = Path(tmp) / "heartbeat.json"
        write_heartbeat(hb)
        probe = ["--check", "--heartbeat-file", str(hb)]
        # No path given: the probe finds the only live runtime directory (this process
        # holds one), in bases of its own so that other supervisors here do not count.
        env.pop("XDG_RUNTIME_DIR", None)
        env["TMPDIR"] = tmp
        claim = runtime.claim(None, env=env)
        write_heartbeat(Path(claim.heartbeat_file))
        no_launcher = "import sys\nfrom mcp_supervisor.cli import main\nsys.exit(main())\n"
        check_only = "import sys\nfrom mcp_supervisor.health.check import main\nsys.exit(main())\n"
        commands = {
            "python -c pass": [PYTHON, "-c", "pass"],
            "mcp-supervisor --check": [str(VENV_BIN / "mcp-supervisor"), *probe],
            "mcp-supervisor --check (no path: found)": [
                str(VENV_BIN / "mcp-supervisor"),
                "--check",
            ],
            "  (cli.main without the launcher)": [PYTHON, "-c", no_launcher, *probe],
            "  (check.main alone, no cli, no launcher)": [PYTHON, "-c", check_only, *probe],
        }
        for argv in commands.values():  # warm the page cache; the first run is not timed
            timed(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(max(args.runs, 30)):
            for name, argv in commands.items():
                times[name].append(timed(argv, env))

        base = statistics.median(times["python -c pass"])
        print(f"runs: {max(args.runs, 30)} of each, interleaved; medians")
        for name, samples in times.items():
            med = statistics.median(samples)
            print(f"  {name:40s} {med * 1000:7.2f} ms   ratio {med / base:5.2f}")
        for name in ("mcp-supervisor --check", "mcp-supervisor --check (no path: found)"):
            ratio = statistics.median(times[name]) / base
            verdict = "OK" if ratio <= 1.5 else "MISSED"
            print(f"{name}: ratio to python -c pass {ratio:.2f} (goal <= 1.5): {verdict}")

        bare = importtime([PYTHON, "-X", "importtime", "-c", "pass"], env)
        path = importtime([PYTHON, "-X", "importtime", "-c", no_launcher, *probe], env)
        extra = sorted(((us, m) for m, us in path.items() if m not in bare), reverse=True)
        print("imports on the --check path beyond a bare interpreter (cumulative, -X importtime):")
        for us, module in extra[:12]:
            print(f"  {us / 1000:7.2f} ms  {module}")
        found = importtime([PYTHON, "-X", "importtime", "-c", no_launcher, "--check"], env)
        extra = sorted(((us, m) for m, us in found.items() if m not in path), reverse=True)
        print("  and with no path given, to find the heartbeat:")
        for us, module in extra[:4]:
            print(f"  {us / 1000:7.2f} ms  {module}")
        launcher = importtime([PYTHON, "-X", "importtime", "-c", "import re"], env)
        re_ms = launcher.get("re", 0) / 1000
        print(f"(an entry-point launcher from pip would add `import re`: {re_ms:.2f} ms)")
        claim.release()


if __name__ == "__main__":
    main()
