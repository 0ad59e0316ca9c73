"""mcp-supervisor side by side with tini (and dumb-init), in one run, each as PID 1 of a new
PID namespace (root and unshare needed; `apt-get install tini dumb-init`).

Prints, per init:
  - resident memory while the child runs (goal: mcp-supervisor <= 25 MB);
  - stop latency, SIGTERM to the init's exit, when the child exits at once
    (goal: within 20 ms of tini's);
  - stdio throughput through the init against the child alone (goal: ratio >= 0.98),
    timed by the child (dd) itself so start-up does not count.

    .venv/bin/python benchmarks/supervisor_vs_tini.py [--rounds N] [--megabytes M]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
OURS = [str(VENV_BIN / "mcp-supervisor"), "--log-level", "warning", "--"]
INITS: dict[str, list[str]] = {"mcp-supervisor": OURS}
if shutil.which("tini"):
    INITS["tini"] = ["tini", "--"]
if shutil.which("dumb-init"):
    INITS["dumb-init"] = ["dumb-init"]
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("MCP_SUPERVISOR_")},
    "MCP_SUPERVISOR_WAIT_FOR": "none",
    "MCP_SUPERVISOR_MIGRATE": "false",
    # The heartbeat lives in its own directory for the run.
    "MCP_SUPERVISOR_HEARTBEAT_FILE": str(Path(tempfile.mkdtemp()) / "heartbeat.json"),
}
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for t in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out.extend(int(c) for c in (t / "children").read_text().split())
    return out


def _wait_child_of(pid: int, *, depth: int, timeout: float = 10.0) -> list[int]:
    """The chain unshare -> init -> child: pids at each depth once they exist."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chain = [pid]
        while len(chain) <= depth:
            kids = _children(chain[-1])
            if not kids:
                break
            chain.append(kids[0])
        if len(chain) > depth and Path(f"/proc/{chain[-1]}/cmdline").read_bytes().startswith(
            b"sleep"
        ):
            return chain
        time.sleep(0.002)
    raise TimeoutError("child did not start")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory_and_stop(init: list[str]) -> tuple[float, float]:
    """(RSS MiB of the init while its child sleeps, seconds from SIGTERM to exit)."""
    proc = subprocess.Popen(
        [*UNSHARE, *init, "sleep", "1000"],
        env=ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        chain = _wait_child_of(proc.pid, depth=2)
        init_pid = chain[1]
        time.sleep(0.3)  # settled: handlers installed, start-up garbage gone
        rss = _rss_kib(init_pid) / 1024
        start = time.perf_counter()
        os.kill(init_pid, signal.SIGTERM)
        proc.wait(timeout=30)
        return rss, time.perf_counter() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def throughput(init: list[str] | None, data: Path) -> float:
    """Bytes per second of a pipe read through the init (or with no init) by `dd`.

    dd times its own copy, so the init's start-up is not counted: what is measured is
    what passthrough costs the stream once both run (nothing, when fds are inherited).
    """
    producer = subprocess.Popen(["cat", str(data)], stdout=subprocess.PIPE)
    assert producer.stdout is not None
    argv = [*UNSHARE, *(init or []), "dd", "bs=64k"]
    done = subprocess.run(
        argv,
        env=ENV,
        stdin=producer.stdout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=True,
        text=True,
    )
    producer.stdout.close()
    producer.wait()
    # "536870912 bytes (537 MB, 512 MiB) copied, 0.351 s, 1.5 GB/s"
    line = next(x for x in done.stderr.splitlines() if " copied, " in x)
    nbytes = int(line.split()[0])
    seconds = float(line.split(" copied, ")[1].split()[0])
    return nbytes / seconds


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--megabytes", type=int, default=512)
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("unshare"):
        sys.exit("needs root and unshare(1)")

    rss: dict[str, list[float]] = {k: [] for k in INITS}
    stop: dict[str, list[float]] = {k: [] for k in INITS}
    for _ in range(args.rounds):  # interleaved: the machine's noise hits every init alike
        for name, init in INITS.items():
            r, s = memory_and_stop(init)
            rss[name].append(r)
            stop[name].append(s)

    with tempfile.NamedTemporaryFile(prefix="stdio-", suffix=".bin") as f:
        block = os.urandom(1 << 20)
        for _ in range(args.megabytes):
            f.write(block)
        f.flush()
        data = Path(f.name)
        tput: dict[str, list[float]] = {k: [] for k in ["alone", *INITS]}
        for _ in range(max(3, args.rounds // 3)):
            tput["alone"].append(throughput(None, data))
            for name, init in INITS.items():
                tput[name].append(throughput(init, data))

    med = statistics.median
    tini_stop = med(stop["tini"]) if "tini" in stop else None
    print(f"rounds={args.rounds}  stdio={args.megabytes} MiB")
    print("medians; every init runs as PID 1 under unshare")
    print(f"{'init':<16}{'RSS MiB':>10}{'stop ms':>10}{'vs tini ms':>12}{'MiB/s':>10}{'ratio':>8}")
    alone = med(tput["alone"])
    print(f"{'(child alone)':<16}{'':>10}{'':>10}{'':>12}{alone / 2**20:>10.0f}{1.0:>8.3f}")
    for name in INITS:
        s = med(stop[name]) * 1000
        delta = f"{s - tini_stop * 1000:+.1f}" if tini_stop is not None else "n/a"
        t = med(tput[name])
        row = f"{name:<16}{med(rss[name]):>10.1f}{s:>10.1f}{delta:>12}"
        print(f"{row}{t / 2**20:>10.0f}{t / alone:>8.3f}")
    ours_rss, ours_stop, ours_ratio = (
        med(rss["mcp-supervisor"]),
        med(stop["mcp-supervisor"]),
        med(tput["mcp-supervisor"]) / alone,
    )
    print()
    print(f"goal RSS <= 25 MB: {ours_rss:.1f} MiB -> {'met' if ours_rss <= 25 else 'MISSED'}")
    if tini_stop is not None:
        d = (ours_stop - tini_stop) * 1000
        print(f"goal stop within 20 ms of tini: {d:+.1f} ms -> {'met' if d <= 20 else 'MISSED'}")
    print(
        f"goal stdio ratio >= 0.98: {ours_ratio:.3f} -> {'met' if ours_ratio >= 0.98 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
