"""Build-time helper for the Dockerfile (runs with the base image's python3, stdlib only).

requirements PYPROJECT [--without "a b"] [--all-extras]
    print the project's dependencies (one per line) for `pip install -r`, leaving out the
    named distributions; --all-extras adds every optional dependency (the test image).
prune-grammars VENV --keep "python go ..."
    delete tree-sitter-language-pack grammars not in the keep list (the pack ships ~170,
    184 MB); a missing grammar makes the chunker fall back to line windows.
warm-bytecode VENV
    (run with the venv's python) import the project's modules and what they start at run
    time, then write bytecode for exactly the modules loaded from the venv, as unchecked-hash
    pycs (valid whatever the file times in the image).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import pkgutil
import py_compile
import re
import sys
import tomllib
from pathlib import Path


def _name(requirement: str) -> str:
    """The normalized distribution name of a PEP 508 requirement (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise SystemExit(f"unreadable requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, without: set[str], all_extras: bool) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    if all_extras:
        for extra in project.get("optional-dependencies", {}).values():
            reqs.extend(extra)
    # A self-referencing extra ("codebase-mcp[embedded]") would pull the project itself.
    own = _name(project["name"])
    return [r for r in reqs if _name(r) not in without and _name(r) != own]


def prune_grammars(venv: Path, keep: set[str]) -> int:
    """Remove unkept grammar modules; returns how many bytes were freed."""
    freed = 0
    for bindings in venv.glob("lib/python3*/site-packages/tree_sitter_language_pack/bindings"):
        for so in bindings.glob("*.so"):
            if so.name.split(".", 1)[0] not in keep:
                freed += so.stat().st_size
                so.unlink()
    return freed


# Imported lazily by the programs (migrations, the http transport), so not reached by importing
# the project's modules alone. Missing ones are skipped.
RUNTIME_MODULES = (
    "alembic.command",
    "alembic.config",
    "alembic.runtime.environment",
    "alembic.runtime.migration",
    "alembic.autogenerate",
    "alembic.op",
    "sqlalchemy.ext.asyncio",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "asyncpg",
    "httpx",
    "uvicorn",
    "uvicorn.lifespan.on",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_impl",
    "uvicorn.loops.asyncio",
    "sse_starlette",
    "fastmcp",
    "fastmcp.client",
    "fastmcp.server.http",
    "tree_sitter",
    "tree_sitter_language_pack",
    "pathspec",
    "structlog",
    "pydantic_settings",
    "psutil",
    "anyio",
)


def _runs_on_import(name: str) -> bool:
    """A script-like module (`__main__`, or one that calls something at top level, e.g.
    `os._exit(main())`): importing it would run the program, so only compile it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    if name.rsplit(".", 1)[-1] == "__main__":
        return True
    tree = ast.parse(Path(spec.origin).read_text(), spec.origin)
    for node in tree.body:
        value = node.value if isinstance(node, ast.Expr | ast.Assign) else None
        if isinstance(value, ast.Call) and not _declares_only(value):
            return True
    return False


def _declares_only(call: ast.Call) -> bool:
    # Top-level calls that only declare things: TypeVar("T"), logging.getLogger(__name__), ...
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name not in {"main", "exit", "_exit", "run"}


def _import_quietly(name: str) -> None:
    with contextlib.suppress(Exception, SystemExit):
        if not _runs_on_import(name):
            importlib.import_module(name)


def slim(venv: Path) -> int:
    """Remove unused files; returns how many bytes were freed."""
    freed = 0
    for site in venv.glob("lib/python3*/site-packages"):
        doomed = [*site.rglob("*.pyi"), *site.glob("sqlalchemy/**/*_cy.*.so")]
        for path in doomed:
            freed += path.stat().st_size
            path.unlink()
    return freed


def warm_bytecode(venv: Path, packages: list[str]) -> int:
    """Import everything the programs use, then compile what was loaded; returns a count."""
    for package in packages:
        _import_quietly(package)
        module = sys.modules.get(package)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), package + "."):
            _import_quietly(info.name)
    if "codebase_mcp" in packages:
        for name in RUNTIME_MODULES:
            _import_quietly(name)
    prefix = str(venv.resolve()) + "/"
    sources = {getattr(m, "__file__", None) or "" for m in list(sys.modules.values())}
    # All of the packages' own files, imported or not (script-like ones run as `-m` entries).
    for package in packages:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            sources.update(str(p) for p in Path(location).rglob("*.py"))
    count = 0
    for source in sorted(sources):
        if not source.endswith(".py") or not source.startswith(prefix):
            continue
        py_compile.compile(
            source,
            cfile=importlib.util.cache_from_source(source),
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            doraise=False,
        )
        count += 1
    return count


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="build_helper")
    sub = parser.add_subparsers(dest="cmd", required=True)
    req = sub.add_parser("requirements")
    req.add_argument("pyproject", type=Path)
    req.add_argument("--without", default="")
    req.add_argument("--all-extras", action="store_true")
    prune = sub.add_parser("prune-grammars")
    prune.add_argument("venv", type=Path)
    prune.add_argument("--keep", required=True)
    warm = sub.add_parser("warm-bytecode")
    warm.add_argument("venv", type=Path)
    warm.add_argument("packages", nargs="*")
    slim_cmd = sub.add_parser("slim")
    slim_cmd.add_argument("venv", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "warm-bytecode":
        sys.dont_write_bytecode = True  # only the pycs compiled below, not the helper's imports
        count = warm_bytecode(args.venv, args.packages)
        print(f"bytecode written for {count} modules", file=sys.stderr)
    elif args.cmd == "slim":
        print(f"slimmed: {slim(args.venv) / 1e6:.0f} MB freed", file=sys.stderr)
    elif args.cmd == "requirements":
        without = {_name(n) for n in args.without.split()}
        print("\n".join(requirements(args.pyproject, without, args.all_extras)))  # stdout-ok
    else:
        freed = prune_grammars(args.venv, set(args.keep.split()))
        print(f"pruned grammars: {freed / 1e6:.0f} MB freed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
