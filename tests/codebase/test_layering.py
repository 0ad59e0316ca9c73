"""codebase_mcp's parts import each other in one direction only (codebase_mcp/__init__.py):
cli -> serve -> engine -> index | search | jobs -> store | embed -> source -> plain modules.
And every module (or attribute) of codebase_mcp that a tracked file names, dotted or as a
path under src/, exists."""

from __future__ import annotations

import ast
import json
import pkgutil
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import codebase_mcp

PACKAGE = Path(codebase_mcp.__file__).parent
ROOT = Path(__file__).resolve().parents[2]

# Top to bottom. A part may import itself and any part on a lower line, lazy imports
# included; parts on one line do not import each other. The command line (cli, __main__,
# embedded) is above them all and may import anything.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("serve",),
    ("engine",),
    ("index", "search", "jobs"),
    ("store", "embed"),
    ("source",),
    ("plain",),
)
MAY_IMPORT = {
    part: {part, *(p for lower in LAYERS[i + 1 :] for p in lower)}
    for i, line in enumerate(LAYERS)
    for part in line
}
SUBPACKAGES = set(MAY_IMPORT) - {"engine", "plain"}
# The top-level modules, each in its part; a new one must be placed here.
TOP_LEVEL = {
    "cli": "top",
    "__main__": "top",
    "embedded": "top",
    "engine": "engine",
    "validate": "engine",
    "config": "plain",
    "errors": "plain",
    "models": "plain",
    "paths": "plain",
    "logs": "plain",
    "_tsvector": "plain",
    "_halfvec": "plain",
}
# (importer, imported) pairs allowed against the layers, with why.
EXCEPTIONS = {
    # The settings check EMBEDDING_PROVIDER=local against the local model's name, size and
    # installed extra; local_embed imports only errors (checked below), so no cycle.
    ("codebase_mcp.config", "codebase_mcp.embed.local_embed"),
}


def _part(module: str) -> str:
    """codebase_mcp.store.db -> store, codebase_mcp.paths -> plain, codebase_mcp.cli -> top."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in ("__init__", "__version__"):
        return "plain"
    if parts[0] in SUBPACKAGES:
        return parts[0]
    assert parts[0] in TOP_LEVEL, f"{module}: place it in a part (TOP_LEVEL or a subpackage)"
    return TOP_LEVEL[parts[0]]


def _module_of(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["codebase_mcp", *parts])


def _package_imports(path: Path, root: Path = PACKAGE) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of codebase_mcp in `path`, relative ones resolved."""
    package = ["codebase_mcp", *path.relative_to(root).parent.parts]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # `from codebase_mcp.store import db`: db is the module imported.
            modules = [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        yield from ((node.lineno, m) for m in modules if m.split(".")[0] == "codebase_mcp")


def _offenders(package: Path) -> list[str]:
    offenders = []
    for path in sorted(package.rglob("*.py")):
        me = _module_of(path, package)
        part = _part(me)
        if part == "top":
            continue
        offenders += [
            f"{path.relative_to(package)}:{line} ({part}) imports {module}"
            for line, module in _package_imports(path, package)
            if _part(module) not in MAY_IMPORT[part]
            and not any(me == a and module.startswith(b) for a, b in EXCEPTIONS)
        ]
    return offenders


def test_parts_import_each_other_in_one_direction_only() -> None:
    assert _offenders(PACKAGE) == []


def test_a_wrong_way_import_is_caught(tmp_path: Path) -> None:
    """The check above, on a copy of the package with one lazy upward import added."""
    copy = tmp_path / "codebase_mcp"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("data", "*.so", "__pycache__"))
    tokens = copy / "source" / "tokens.py"
    tokens.write_text(
        tokens.read_text() + "\n\ndef _wrong() -> None:\n    from codebase_mcp.store import db\n"
    )
    offenders = _offenders(copy)
    assert len(offenders) == 1
    assert offenders[0].startswith("source/tokens.py:")
    assert offenders[0].endswith("(source) imports codebase_mcp.store.db")


def test_the_exception_makes_no_cycle() -> None:
    """config may import embed.local_embed because local_embed needs no settings."""
    path = PACKAGE / "embed" / "local_embed.py"
    imported = {module for _, module in _package_imports(path)}
    assert imported and all(_part(m) == "plain" for m in imported), imported
    assert not any(m.startswith("codebase_mcp.config") for m in imported)


def test_subpackage_inits_are_a_docstring_only() -> None:
    inits = sorted(PACKAGE.glob("*/__init__.py"))
    assert {init.parent.name for init in inits} == SUBPACKAGES
    for init in inits:
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), init


def test_the_layout_names_every_part() -> None:
    """The package docstring's layout table stays in step with the folders."""
    doc = codebase_mcp.__doc__ or ""
    for name in SUBPACKAGES:
        assert f"    {name}/ " in doc, name
    for path in PACKAGE.glob("*.py"):
        if path.stem != "__init__":
            assert re.search(rf"\b{re.escape(path.stem)}\b", doc), path.stem
    assert re.search(r"\b_tsvector\b", doc) and re.search(r"\b_halfvec\b", doc)


def test_every_module_imports() -> None:
    modules = sorted(
        m.name
        for m in pkgutil.walk_packages([str(PACKAGE)], "codebase_mcp.")
        if m.name.rpartition(".")[2] != "__main__"
    )
    assert len(modules) > 40
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, *modules],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


# `codebase_mcp.source.tokens.query_terms` in code, strings and prose; the regex cannot
# end on a sentence's full stop.
DOTTED = re.compile(r"\bcodebase_mcp(?:\.[A-Za-z_]\w*)+")
SLASHED = re.compile(r"\bcodebase_mcp/[\w/.]*\w")

RESOLVE = """
import importlib, json, sys
missing = []
for name in json.load(sys.stdin):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            missing.append(name)
        break
    else:
        missing.append(name)
print(json.dumps(missing))
"""


def _tracked_files() -> list[Path]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(
        [git, "ls-files", "-z"], capture_output=True, cwd=ROOT, check=True
    ).stdout.decode()
    return [ROOT / f for f in out.split("\0") if f and not f.startswith("src/codebase_mcp/data/")]


def test_every_named_module_exists() -> None:
    """A module moved or renamed leaves no stale name behind: imports (lazy ones, in
    strings, in migrations), `python -m` targets, docs and comments."""
    dotted: dict[str, str] = {}
    slashed: dict[str, str] = {}
    for path in _tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        where = str(path.relative_to(ROOT))
        for match in DOTTED.finditer(text):
            dotted.setdefault(match.group(), where)
        for match in SLASHED.finditer(text):
            slashed.setdefault(match.group(), where)
    assert "codebase_mcp.index.pipeline.embedding_text" in dotted
    proc = subprocess.run(
        [sys.executable, "-c", RESOLVE],
        input=json.dumps(sorted(dotted)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    missing = [f"{dotted[name]}: {name}" for name in json.loads(proc.stdout)]
    missing += [
        f"{where}: {name}" for name, where in slashed.items() if not (ROOT / "src" / name).exists()
    ]
    assert sorted(missing) == []
