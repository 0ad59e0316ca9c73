"""Discovery on real trees in tmp_path: built-in ignores, nested .gitignore with
negation, binary/oversize/symlink skips, content loading and hashing; the allowed-roots
check; language detection."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from codebase_mcp.source.discover import (
    DiscoveryStats,
    FileContent,
    PathNotAllowedError,
    SkipReason,
    SourceFile,
    content_hash,
    decode_source,
    discover_files,
    resolve_under_roots,
)
from codebase_mcp.source.languages import detect_language, detect_language_from_shebang, grammar_for


def write(root: Path, rel: str, content: str | bytes = "x = 1\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def walk(root: Path, **kwargs: object) -> tuple[list[str], DiscoveryStats]:
    stats = DiscoveryStats()
    files = [f.rel_path for f in discover_files(root, stats=stats, **kwargs)]  # type: ignore[arg-type]
    return files, stats


def skipped(stats: DiscoveryStats) -> dict[str, SkipReason]:
    return dict(stats.skipped)


def test_builtin_ignores_prune_directories_and_skip_lock_and_minified_files(
    tmp_path: Path,
) -> None:
    write(tmp_path, "src/app.py")
    write(tmp_path, "README.md", "# hi\n")
    for rel in [
        ".git/config",
        "node_modules/left-pad/index.js",
        "web/node_modules/x/index.js",
        "dist/bundle.js",
        "build/lib/app.py",
        "target/debug/main.rs",
        "src/__pycache__/app.cpython-311.pyc",
        ".venv/lib/site.py",
        "venv/lib/site.py",
        ".tox/py311/x.py",
        ".mypy_cache/3.11/x.json",
        "pkg.egg-info/PKG-INFO",
        "custom-env/pyvenv.cfg",
        "custom-env/lib/site.py",
    ]:
        write(tmp_path, rel)
    for rel in [
        "package-lock.json",
        "yarn.lock",
        "poetry.lock",
        "Cargo.lock",
        "pnpm-lock.yaml",
        "uv.lock",
        "web/vendor.min.js",
        "web/style.min.css",
        "logo.png",
    ]:
        write(tmp_path, rel)

    write(tmp_path, "src/build/__init__.py")  # a package named build is source, not output

    files, stats = walk(tmp_path)

    assert files == ["README.md", "src/app.py", "src/build/__init__.py"]
    reasons = skipped(stats)
    # an ignored directory is reported once, not once per file inside it
    for rel in [".git", "node_modules", "web/node_modules", "dist", "build", "target"]:
        assert reasons[rel] == SkipReason.IGNORED_BUILTIN
    for rel in ["src/__pycache__", ".venv", "venv", ".tox", ".mypy_cache", "pkg.egg-info"]:
        assert reasons[rel] == SkipReason.IGNORED_BUILTIN
    assert reasons["custom-env"] == SkipReason.IGNORED_BUILTIN  # a virtualenv by its pyvenv.cfg
    assert not any(p.startswith("node_modules/") for p in reasons)
    for rel in ["package-lock.json", "yarn.lock", "poetry.lock", "Cargo.lock", "uv.lock"]:
        assert reasons[rel] == SkipReason.IGNORED_BUILTIN
    assert reasons["pnpm-lock.yaml"] == SkipReason.IGNORED_BUILTIN
    assert reasons["web/vendor.min.js"] == SkipReason.IGNORED_BUILTIN
    assert reasons["web/style.min.css"] == SkipReason.IGNORED_BUILTIN
    assert reasons["logo.png"] == SkipReason.BINARY
    assert stats.files == 3
    assert stats.counts[SkipReason.IGNORED_BUILTIN] == sum(
        1 for r in reasons.values() if r == SkipReason.IGNORED_BUILTIN
    )


def test_nested_gitignore_applies_to_its_subtree_with_negation(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "*.log\n!keep.log\nsecret/\n/generated.py\n")
    write(tmp_path, "sub/.gitignore", "*.tmp\n!important.tmp\n/local.txt\n!debug.log\n")
    paths = [
        "app.log",  # *.log
        "keep.log",  # re-included by !keep.log
        "x.tmp",  # sub/.gitignore does not reach the root
        "generated.py",  # anchored at the root
        "sub/generated.py",  # ... so not here
        "sub/a.tmp",
        "sub/deeper/b.tmp",  # a subdirectory of sub is covered by sub/.gitignore
        "sub/important.tmp",  # negated in sub/.gitignore
        "sub/local.txt",  # anchored to sub/
        "sub/deeper/local.txt",  # ... so not here
        "sub/debug.log",  # root ignores *.log, sub re-includes debug.log
        "sub/other.log",
        "secret/key.py",
        "sub/secret/key.py",  # `secret/` (unanchored) matches at any depth
    ]
    for rel in paths:
        write(tmp_path, rel)

    files, stats = walk(tmp_path)

    assert files == [
        ".gitignore",
        "keep.log",
        "x.tmp",
        "sub/.gitignore",
        "sub/debug.log",
        "sub/generated.py",
        "sub/important.tmp",
        "sub/deeper/local.txt",
    ]
    reasons = skipped(stats)
    for rel in ["app.log", "generated.py", "sub/a.tmp", "sub/deeper/b.tmp", "sub/local.txt"]:
        assert reasons[rel] == SkipReason.GITIGNORED, rel
    assert reasons["sub/other.log"] == SkipReason.GITIGNORED
    assert reasons["secret"] == SkipReason.GITIGNORED  # pruned as a directory
    assert reasons["sub/secret"] == SkipReason.GITIGNORED


def test_files_in_an_ignored_directory_cannot_be_reincluded(tmp_path: Path) -> None:
    # git: "It is not possible to re-include a file if a parent directory of that file
    # is excluded."
    write(tmp_path, ".gitignore", "logs/\n!logs/keep.txt\n")
    write(tmp_path, "logs/keep.txt")
    write(tmp_path, "main.py")
    files, stats = walk(tmp_path)
    assert files == [".gitignore", "main.py"]
    assert skipped(stats)["logs"] == SkipReason.GITIGNORED


def test_git_info_exclude_and_caller_excludes_and_opting_out_of_gitignore(tmp_path: Path) -> None:
    write(tmp_path, ".git/info/exclude", "scratch.py\n")
    write(tmp_path, ".gitignore", "*.gen.py\n")
    write(tmp_path, "scratch.py")
    write(tmp_path, "a.gen.py")
    write(tmp_path, "docs/guide.md", "# guide\n")
    write(tmp_path, "main.py")

    files, stats = walk(tmp_path, exclude=["docs/", ""])
    assert files == [".gitignore", "main.py"]
    reasons = skipped(stats)
    assert reasons["scratch.py"] == SkipReason.GITIGNORED
    assert reasons["docs"] == SkipReason.EXCLUDED

    files, _ = walk(tmp_path, use_gitignore=False)
    assert files == [".gitignore", "a.gen.py", "main.py", "scratch.py", "docs/guide.md"]


def test_oversize_files_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, "exact.txt", "a" * 1000)
    write(tmp_path, "over.txt", "a" * 1001)
    files, stats = walk(tmp_path, max_file_bytes=1000)
    assert files == ["exact.txt"]
    assert skipped(stats) == {"over.txt": SkipReason.TOO_LARGE}
    # the default limit is 1 MiB
    write(tmp_path, "big.txt", b"a" * (1024 * 1024 + 1))
    files, stats = walk(tmp_path)
    assert "big.txt" not in files and "over.txt" in files
    assert skipped(stats)["big.txt"] == SkipReason.TOO_LARGE
    files, _ = walk(tmp_path, max_file_bytes=None)
    assert "big.txt" in files


def test_load_skips_binary_decodes_legacy_text_and_hashes_the_bytes(tmp_path: Path) -> None:
    write(tmp_path, "nul.py", b"x = 1\n\x00\x01\x02 binary")
    write(tmp_path, "latin1.txt", "caf\u00e9\n".encode("latin-1"))
    write(tmp_path, "ok.py", "s = 'caf\u00e9'\n")
    write(tmp_path, "bom.py", b"\xef\xbb\xbfx = 1\n")
    write(tmp_path, "tool", "#!/usr/bin/env python3\nprint(1)\n")
    files = {f.rel_path: f for f in discover_files(tmp_path)}
    assert files["nul.py"].load() == SkipReason.BINARY
    assert isinstance(files["latin1.txt"].load(), FileContent)  # a legacy encoding, guessed

    loaded = files["ok.py"].load()
    assert isinstance(loaded, FileContent)
    data = "s = 'caf\u00e9'\n".encode()
    assert loaded.data == data
    assert loaded.text == "s = 'caf\u00e9'\n"
    assert loaded.content_hash == hashlib.sha256(data).hexdigest()
    assert loaded.language == "python"

    bom = files["bom.py"].load()
    assert isinstance(bom, FileContent) and bom.text == "x = 1\n"

    assert files["tool"].language is None  # nothing in the name says what it is
    tool = files["tool"].load()
    assert isinstance(tool, FileContent) and tool.language == "python"  # the shebang does


def test_hash_follows_content_not_mtime(tmp_path: Path) -> None:
    path = write(tmp_path, "a.py", "x = 1\n")
    (first,) = discover_files(tmp_path)
    before = first.load()
    os.utime(path, ns=(1, 1))
    path.write_text("x = 1\n")  # same bytes, new mtime
    (second,) = discover_files(tmp_path)
    after = second.load()
    assert isinstance(before, FileContent) and isinstance(after, FileContent)
    assert before.content_hash == after.content_hash
    path.write_text("x = 2\n")
    changed = SourceFile("a.py", str(path), 6, 0, "python").load()
    assert isinstance(changed, FileContent)
    assert changed.content_hash != before.content_hash
    assert content_hash(b"x = 2\n") == changed.content_hash


def test_load_rechecks_the_size_and_reports_vanished_files(tmp_path: Path) -> None:
    path = write(tmp_path, "grows.txt", "small\n")
    (found,) = discover_files(tmp_path, max_file_bytes=100)
    path.write_text("x" * 200)
    assert found.load(max_file_bytes=100) == SkipReason.TOO_LARGE
    path.unlink()
    assert found.load() == SkipReason.UNREADABLE


def test_metadata_of_a_discovered_file(tmp_path: Path) -> None:
    path = write(tmp_path, "pkg/mod.ts", "export const x = 1;\n")
    (found,) = discover_files(tmp_path)
    st = path.stat()
    assert found.rel_path == "pkg/mod.ts"
    assert found.abs_path == str(tmp_path.resolve() / "pkg" / "mod.ts")
    assert found.path == tmp_path.resolve() / "pkg" / "mod.ts"
    assert found.size == st.st_size == 20
    assert found.mtime_ns == st.st_mtime_ns
    assert found.language == "typescript"
    assert found.read_bytes() == b"export const x = 1;\n"


def test_symlinks_inside_followed_outside_skipped_loops_terminate(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    outside = write(tmp_path, "outside/secret.py", "TOKEN = 1\n")
    write(root, "real/target.py", "y = 2\n")
    (root / "link_inside.py").symlink_to(root / "real" / "target.py")
    (root / "link_outside.py").symlink_to(outside)
    (root / "dir_outside").symlink_to(outside.parent, target_is_directory=True)
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)  # back to an ancestor
    (root / "self").symlink_to(root / "self")  # a link to itself
    (root / "dangling.py").symlink_to(root / "missing.py")
    relative = root / "real" / "sneaky.py"
    relative.symlink_to(Path("..") / ".." / "outside" / "secret.py")  # ../ escapes too

    files, stats = walk(root)

    assert files == ["link_inside.py", "real/target.py"]
    reasons = skipped(stats)
    assert reasons["link_outside.py"] == SkipReason.SYMLINK_OUTSIDE_ROOT
    assert reasons["dir_outside"] == SkipReason.SYMLINK_OUTSIDE_ROOT
    assert reasons["real/sneaky.py"] == SkipReason.SYMLINK_OUTSIDE_ROOT
    assert reasons["real/loop"] == SkipReason.SYMLINK_DIRECTORY
    assert reasons["self"] in {SkipReason.BROKEN_SYMLINK, SkipReason.SYMLINK_OUTSIDE_ROOT}
    assert reasons["dangling.py"] == SkipReason.BROKEN_SYMLINK
    (link,) = [f for f in discover_files(root) if f.rel_path == "link_inside.py"]
    loaded = link.load()
    assert isinstance(loaded, FileContent) and loaded.text == "y = 2\n"


def test_root_given_through_a_symlink_or_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "repo/a.py")
    (tmp_path / "alias").symlink_to(tmp_path / "repo", target_is_directory=True)
    assert [f.rel_path for f in discover_files(tmp_path / "alias")] == ["a.py"]
    monkeypatch.chdir(tmp_path)
    assert [f.rel_path for f in discover_files("repo")] == ["a.py"]


def test_unreadable_directory_is_reported_not_fatal(tmp_path: Path) -> None:
    # (as root every directory is readable; a missing root takes the same path)
    files, stats = walk(tmp_path / "missing")
    assert files == []
    assert stats.skipped == [(".", SkipReason.UNREADABLE)]


def test_decode_source_is_a_pure_decision() -> None:
    assert decode_source(b"plain\n") == "plain\n"
    assert decode_source(b"a\x00b") == SkipReason.BINARY
    # only the first 8 KiB are sniffed for NUL; later NULs still decode as UTF-8 text
    assert decode_source(b"a" * 9000 + b"\x00") == "a" * 9000 + "\x00"
    assert decode_source(b"\xff\xfe\x00") == SkipReason.UNDECODABLE  # a UTF-16 mark that lies


# ---- allowed roots ----------------------------------------------------------------------


def test_resolve_under_roots_accepts_inside_paths(tmp_path: Path) -> None:
    foo = tmp_path / "work" / "foo"
    (foo / "src").mkdir(parents=True)
    assert resolve_under_roots(foo, [foo]) == foo.resolve()
    assert resolve_under_roots(foo / "src", [tmp_path / "other", foo]) == (foo / "src").resolve()
    assert resolve_under_roots(str(foo / "src" / ".." / "src"), [str(foo)]) == foo.resolve() / "src"
    # a path that does not exist yet can still be checked
    assert resolve_under_roots(foo / "new" / "file.py", [foo]) == foo.resolve() / "new" / "file.py"


def test_resolve_under_roots_refuses_the_prefix_trap(tmp_path: Path) -> None:
    foo = tmp_path / "work" / "foo"
    foo2 = tmp_path / "work" / "foo2"
    foo.mkdir(parents=True)
    foo2.mkdir()
    with pytest.raises(PathNotAllowedError) as caught:
        resolve_under_roots(foo2, [foo])
    message = str(caught.value)
    assert str(foo2) in message and str(foo.resolve()) in message
    assert caught.value.path == str(foo2)


def test_resolve_under_roots_refuses_dotdot_and_symlink_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(PathNotAllowedError):
        resolve_under_roots(root / "sub" / ".." / ".." / "elsewhere", [root])
    (root / "escape").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(PathNotAllowedError):
        resolve_under_roots(root / "escape", [root])
    with pytest.raises(PathNotAllowedError):
        resolve_under_roots("/", [root])
    with pytest.raises(PathNotAllowedError, match=r"\(none configured\)"):
        resolve_under_roots(root, [])


def test_resolve_under_roots_resolves_relative_paths_against_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "repo" / "pkg").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo")
    assert resolve_under_roots("pkg", [tmp_path / "repo"]) == (tmp_path / "repo" / "pkg").resolve()
    with pytest.raises(PathNotAllowedError):
        resolve_under_roots("..", [tmp_path / "repo"])


# ---- languages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "language"),
    [
        ("a/b/mod.py", "python"),
        ("types.pyi", "python"),
        ("index.js", "javascript"),
        ("comp.jsx", "javascript"),
        ("lib.ts", "typescript"),
        ("App.tsx", "tsx"),
        ("main.go", "go"),
        ("lib.rs", "rust"),
        ("Main.java", "java"),
        ("x.c", "c"),
        ("x.h", "c"),
        ("x.cpp", "cpp"),
        ("x.hpp", "cpp"),
        ("Prog.cs", "csharp"),
        ("app.rb", "ruby"),
        ("Rakefile", "ruby"),
        ("index.php", "php"),
        ("Main.kt", "kotlin"),
        ("View.swift", "swift"),
        ("Main.scala", "scala"),
        ("run.sh", "bash"),
        ("README.md", "markdown"),
        ("ci.yml", "yaml"),
        ("pyproject.toml", "toml"),
        ("package.json", "json"),
        ("schema.sql", "sql"),
        ("index.html", "html"),
        ("site.css", "css"),
        ("Dockerfile", "dockerfile"),
        ("Dockerfile.dev", "dockerfile"),
        ("Makefile", "makefile"),
        ("docs/index.rst", "rst"),
        ("notes.txt", "text"),
        ("LICENSE", "text"),
        ("setup.cfg", "ini"),
        ("pom.xml", "xml"),
        ("UPPER.PY", "python"),
        ("no_extension", None),
        ("data.unknownext", None),
    ],
)
def test_detect_language(path: str, language: str | None) -> None:
    assert detect_language(path) == language


def test_grammars_and_shebangs() -> None:
    assert grammar_for("python") == "python"
    assert grammar_for("csharp") == "csharp"
    assert grammar_for("markdown") is None
    assert grammar_for(None) is None
    assert detect_language_from_shebang(b"#!/usr/bin/env python3.11\n") == "python"
    assert detect_language_from_shebang(b"#!/bin/bash -e\n") == "bash"
    assert detect_language_from_shebang(b"#! /usr/bin/node\n") == "javascript"
    assert detect_language_from_shebang(b"#!/usr/bin/env -S awk -f\n") is None
    assert detect_language_from_shebang(b"print(1)\n") is None
