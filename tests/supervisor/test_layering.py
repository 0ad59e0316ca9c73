"""mcp_supervisor is a generic PID 1: it never imports the server it runs (codebase_mcp).
What it needs from the server comes through settings or the command line."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
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
