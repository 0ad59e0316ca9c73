"""First use on a fresh machine, side by side in one run: what an MCP client waits for.

On a fresh clone of this repository (its committed HEAD) in a scratch directory, with a
fresh data directory (XDG_DATA_HOME) and no setting of ours (no database URL, no Ollama):

  (a)  `scripts/run --setup`: .venv, install, PostgreSQL initialised and migrated, the
       local model loaded once; its progress lines with their times
  (a') `scripts/run --setup` again (a no-op: only its checks)
  (b)  the first `scripts/run` after it, driven by the official MCP SDK's stdio client
       (`mcp.client.stdio`): seconds to the `initialize` answer and to the tool list
  (c)  a second start, the same
  (d)  another fresh clone and data directory, `scripts/run` with no set-up: the whole
       first use inside the client's `initialize` window (MCP Inspector waits 60 s;
       the goal is 30 s). Skip with --skip-no-setup.

Each installer asked for (`--installers pip,uv`; uv from `--uv PATH` or PATH) gets its own
column. The pip cache of the machine is used as it is and reported (warm or cold); so is
uv's. Also checked: nothing on stdout but MCP, and no PostgreSQL or keeper left running.

    .venv/bin/python benchmarks/first_use.py [--installers pip,uv] [--uv PATH]
        [--skip-no-setup] [--keep] [--source DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import psutil
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

REPO = Path(__file__).resolve().parent.parent
OURS = ("REGISTRY_DATABASE_URL", "OLLAMA_", "OPENAI_", "EMBEDDING_", "MCP_", "CODEBASE_", "LOG_")
CLIENT_TIMEOUT = 300.0


@dataclass
class Column:
    installer: str
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- the environment ---------------------------------------------------------------------


def clean_path(uv_dir: str | None) -> str:
    """PATH without any uv (pip's column), or with the given one first (uv's)."""
    parts = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p]
    parts = [p for p in parts if not (Path(p) / "uv").exists()]
    if uv_dir:
        parts.insert(0, uv_dir)
    return os.pathsep.join(parts)


def user_env(base: Path, uv_dir: str | None) -> dict[str, str]:
    """A user who has set nothing of ours, on a machine that never ran codebase-mcp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = clean_path(uv_dir)
    env["XDG_DATA_HOME"] = str(base / "xdg-data")
    env["CODEBASE_ROOTS"] = str(base)
    return env


def fresh_clone(source: Path, dest: Path) -> str:
    subprocess.run(["git", "clone", "-q", str(source), str(dest)], check=True)
    out = subprocess.run(
        ["git", "-C", str(dest), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def cache_report(path: Path) -> str:
    """Files and size of a cache directory: warm or cold, as found."""
    files = 0
    size = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                size += (Path(dirpath) / name).stat().st_size
                files += 1
    state = "warm" if size > 10_000_000 else "cold"
    return f"{path}: {files} files, {size / 1e6:.1f} MB ({state})"


def pip_cache_dir() -> Path:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, check=False
    )
    text = out.stdout.strip()
    return Path(text) if out.returncode == 0 and text else Path.home() / ".cache" / "pip"


def uv_cache_dir(uv: str) -> Path:
    out = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=False)
    return Path(out.stdout.strip() or Path.home() / ".cache" / "uv")


# --- the steps ---------------------------------------------------------------------------


def run_setup(clone: Path, env: dict[str, str], cwd: Path) -> tuple[float, list[str], int, str]:
    """`scripts/run --setup`: seconds, its stderr lines stamped with their offsets, exit
    code, and whatever reached stdout (must be nothing)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(clone / "scripts" / "run"), "--setup"],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and proc.stdout is not None
    lines = [f"{time.monotonic() - started:6.1f} s  {line.rstrip()}" for line in proc.stderr]
    out = proc.stdout.read()
    code = proc.wait()
    return time.monotonic() - started, lines, code, out


async def client_start(
    clone: Path, env: dict[str, str], cwd: Path, errlog: Path, stray: list[str]
) -> dict[str, float]:
    """One MCP session through `scripts/run`: seconds from the spawn to the `initialize`
    answer, to the tool list, and to the end (stdin closed, everything exited). Lines on
    the server's stdout that are no MCP message go into `stray`."""
    params = StdioServerParameters(
        command=str(clone / "scripts" / "run"), args=[], env=env, cwd=str(cwd)
    )

    async def on_message(message: object) -> None:
        if isinstance(message, Exception):
            stray.append(str(message)[:200])

    started = time.monotonic()
    times: dict[str, float] = {}
    with errlog.open("a") as err, anyio.fail_after(CLIENT_TIMEOUT):
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write, message_handler=on_message) as session,
        ):
            await session.initialize()
            times["initialize"] = time.monotonic() - started
            tools = await session.list_tools()
            times["list_tools"] = time.monotonic() - started
            times["tools"] = len(tools.tools)
    times["closed"] = time.monotonic() - started
    return times


def leftovers(data_dir: Path) -> list[str]:
    """Keepers and PostgreSQL processes of a data directory still running."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd", "name"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.info.get("cmdline") or [])
            if ("mcp_supervisor.pg.keeper" in cmd and str(data_dir) in cmd) or (
                p.info.get("cwd") or ""
            ).startswith(str(data_dir)):
                found.append(f"{p.pid} {p.info.get('name')}")
    return found


def wait_no_leftovers(data_dir: Path, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := leftovers(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def measure(installer: str, source: Path, base: Path, uv_dir: str | None, no_setup: bool) -> Column:
    col = Column(installer)
    work = base / installer
    work.mkdir()
    cwd = work / "cwd"
    cwd.mkdir()
    env = user_env(work, uv_dir)
    clone = work / "clone"
    sha = fresh_clone(source, clone)
    col.notes.append(f"clone of {source} at {sha}")
    data_dir = work / "xdg-data" / "codebase-mcp"

    seconds, lines, code, out = run_setup(clone, env, cwd)
    col.figures["(a) --setup"] = f"{seconds:.1f}" if code == 0 else f"exit {code}"
    col.notes.append("scripts/run --setup, stderr:")
    col.notes.extend(f"    {line}" for line in lines)
    if out:
        col.notes.append(f"!! --setup wrote {len(out)} bytes to stdout")
    if code != 0:
        return col
    left = wait_no_leftovers(data_dir)
    if left:
        col.notes.append(f"!! still running after --setup: {left}")

    seconds, _lines, code, out = run_setup(clone, env, cwd)
    col.figures["(a') --setup again"] = f"{seconds:.1f}" if code == 0 else f"exit {code}"
    if out:
        col.notes.append(f"!! the second --setup wrote {len(out)} bytes to stdout")
    wait_no_leftovers(data_dir)

    errlog = work / "server-stderr.log"
    stray: list[str] = []
    for label in ("(b) first start", "(c) second start"):
        t = anyio.run(client_start, clone, env, cwd, errlog, stray)
        col.figures[f"{label}: initialize"] = f"{t['initialize']:.1f}"
        col.figures[f"{label}: list_tools"] = f"{t['list_tools']:.1f}"
        wait_no_leftovers(data_dir)

    if no_setup:
        other = work / "no-setup"
        other.mkdir()
        env2 = user_env(other, uv_dir)
        clone2 = other / "clone"
        fresh_clone(source, clone2)
        errlog2 = other / "server-stderr.log"
        try:
            t = anyio.run(client_start, clone2, env2, cwd, errlog2, stray)
            col.figures["(d) no --setup: initialize"] = f"{t['initialize']:.1f}"
            col.figures["(d) no --setup: list_tools"] = f"{t['list_tools']:.1f}"
        except TimeoutError:
            col.figures["(d) no --setup: initialize"] = f"> {CLIENT_TIMEOUT:g}"
        progress = [
            line for line in errlog2.read_text().splitlines() if line.startswith("scripts/run:")
        ]
        col.notes.append("first scripts/run without --setup, its set-up lines:")
        col.notes.extend(f"    {line}" for line in progress)
        left = wait_no_leftovers(other / "xdg-data" / "codebase-mcp")
        if left:
            col.notes.append(f"!! still running after the no-setup client: {left}")
    if stray:
        col.notes.append(f"!! non-MCP output on stdout: {stray}")
    return col


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--installers", default="pip", help="comma list of pip, uv")
    parser.add_argument("--uv", help="the uv executable for uv's column (default: PATH's)")
    parser.add_argument("--skip-no-setup", action="store_true", help="skip step (d)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--source", type=Path, default=REPO, help="the repository to clone")
    args = parser.parse_args()

    wanted = [name.strip() for name in args.installers.split(",") if name.strip()]
    uv = args.uv or shutil.which("uv")
    if "uv" in wanted and not uv:
        parser.error("uv's column needs uv: --uv PATH (e.g. pip install uv into a scratch venv)")
    dirty = subprocess.run(
        ["git", "-C", str(args.source), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"pip cache: {cache_report(pip_cache_dir())}")
    if uv:
        print(f"uv cache:  {cache_report(uv_cache_dir(uv))}")
    if dirty:
        print("note: the source has uncommitted changes; the clone has its HEAD only")

    base = Path(tempfile.mkdtemp(prefix="first-use-"))
    base.chmod(0o755)  # the embedded PostgreSQL runs as nobody when we are root
    columns = []
    try:
        for installer in wanted:
            uv_dir = str(Path(uv).resolve().parent) if installer == "uv" and uv else None
            columns.append(measure(installer, args.source, base, uv_dir, not args.skip_no_setup))
    finally:
        if args.keep:
            print(f"kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"pip cache after: {cache_report(pip_cache_dir())}")
    for col in columns:
        print(f"\n== {col.installer}")
        for note in col.notes:
            print(note)
    rows = list(dict.fromkeys(k for col in columns for k in col.figures))
    width = max(len(r) for r in rows) if rows else 10
    print("\nseconds" + " " * (width - 5) + "".join(f"{c.installer:>10}" for c in columns))
    for row in rows:
        cells = "".join(f"{c.figures.get(row, '-'):>10}" for c in columns)
        print(f"{row:<{width + 2}}{cells}")
    print("\ngoal: the first scripts/run answers initialize within 30 s (MCP Inspector: 60 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
