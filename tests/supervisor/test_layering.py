"""mcp_supervisor is a generic PID 1: it never imports the server it runs (codebase_mcp).
What it needs from the server comes through settings or the command line. Inside, its
parts import each other in one direction only (mcp_supervisor/__init__.py)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mcp_supervisor
from mcp_supervisor.config import load_settings
from mcp_supervisor.prepare.migrate import AlembicIniNotFound, find_alembic_ini

PACKAGE = Path(mcp_supervisor.__file__).parent
ROOT = Path(__file__).resolve().parents[2]
# The __main__ modules run the supervisor when imported: the source check covers them.
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages([str(PACKAGE)], "mcp_supervisor.")
    if m.name.rpartition(".")[2] != "__main__"
)


def test_no_module_imports_the_server_package() -> None:
    """Every import statement, those inside functions too (the lazy ones)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(PACKAGE)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] == "codebase_mcp"
            ]
    assert offenders == []


# What each part of mcp_supervisor may import, lazy imports included. "plain" is the
# top level below the command line; the command line (cli, __main__) may import anything.
PLAIN = {"config", "spec", "state", "log", "redact", "exitcodes"}
MAY_IMPORT = {
    "plain": {"plain"},
    "health": {"plain", "health"},
    "pg": {"plain", "pg"},
    "prepare": {"plain", "prepare", "pg"},
    "pid1": {"plain", "pid1", "health", "pg"},
}


def _part(module: str) -> str:
    """mcp_supervisor.pg.share -> pg, mcp_supervisor.spec -> plain, cli -> top."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in ("cli", "__main__", "__init__", "__version__"):
        return "top"
    return "plain" if parts[0] in PLAIN else parts[0]


def _supervisor_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of mcp_supervisor in `path`, relative ones resolved."""
    package = ["mcp_supervisor", *path.relative_to(PACKAGE).parent.parts]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # `from mcp_supervisor import x`: x is the module (or top-level name) imported.
            modules = (
                [f"{module}.{alias.name}" for alias in node.names]
                if module == "mcp_supervisor"
                else [module]
            )
        else:
            continue
        yield from ((node.lineno, m) for m in modules if m.split(".")[0] == "mcp_supervisor")


def test_parts_import_each_other_in_one_direction_only() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        me = _part(".".join(["mcp_supervisor", *rel.with_suffix("").parts]))
        if me == "top":
            continue
        offenders += [
            f"{rel}:{line} ({me}) imports {module}"
            for line, module in _supervisor_imports(path)
            if _part(module) not in MAY_IMPORT[me]
        ]
    assert offenders == []


def test_subpackage_inits_are_a_docstring_only() -> None:
    """--check and PID 1 load a subpackage's __init__ on the way to its modules."""
    inits = sorted(PACKAGE.glob("*/__init__.py"))
    assert {init.parent.name for init in inits} == set(MAY_IMPORT) - {"plain"}
    for init in inits:
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), init


def test_importing_every_module_never_loads_the_server_package() -> None:
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "from mcp_supervisor.prepare.migrate import find_alembic_ini\n"
        "find_alembic_ini()\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'codebase_mcp'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *MODULES],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(MODULES) > 20
    assert proc.stdout.strip() == "[]"


def test_alembic_ini_comes_from_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(ROOT)
    assert find_alembic_ini() == ROOT / "alembic.ini"
    monkeypatch.chdir(tmp_path)
    assert find_alembic_ini() == ROOT / "alembic.ini"  # the source checkout's
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\n")
    monkeypatch.setenv("CODEBASE_MCP_ALEMBIC_INI", str(ini))
    spec = load_settings().to_spec(None)
    assert spec.alembic_ini == str(ini)
    assert find_alembic_ini(spec.alembic_ini) == ini
    assert load_settings({"alembic_ini": str(ROOT / "alembic.ini")}).alembic_ini == str(
        ROOT / "alembic.ini"
    )
    with pytest.raises(AlembicIniNotFound, match="CODEBASE_MCP_ALEMBIC_INI"):
        find_alembic_ini(tmp_path / "missing.ini")
