"""Which files of a repository get indexed, and the allowed-roots check for paths.

``discover_files(root)`` walks a tree with ``os.scandir``, pruning ignored directories
without descending, and yields a ``SourceFile`` (metadata only, from one ``stat``) per
candidate. Content checks that need the bytes (binary, decoding) happen in
``SourceFile.load()``, which the indexer calls anyway to hash the file: one read per file.

Ignore rules, in order: the built-in lists below (VCS and dependency/build directories,
lock files, minified bundles, well-known binary extensions), then every ``.gitignore`` from
the root down to the file's directory (plus ``.git/info/exclude``), with git's semantics:
a deeper file overrides a shallower one, the last matching line wins, ``!`` re-includes,
and a file inside an excluded directory cannot be re-included.

Paths: the walk works on the operating system's names (bytes on Linux, surrogate-escaped
in str) and matches ignore rules against them; every path it hands out or records
(``SourceFile.rel_path``, the skip list) is in the text form of ``codebase_mcp.paths``,
so that any name the OS allows can be stored, shown and mapped back to the file.

Symlinks: a link to a file inside the root is followed (indexed under the link's path); a
link leading outside the root, a broken link, and any link to a directory are skipped
(a directory inside the root is indexed under its real path anyway, and never following
directory links makes loops impossible).
"""

from __future__ import annotations

import enum
import hashlib
import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from codebase_mcp import paths
from codebase_mcp.source import decoding
from codebase_mcp.source.languages import detect_language, detect_language_from_shebang

DEFAULT_MAX_FILE_BYTES = 1 << 20

IGNORED_DIR_NAMES: frozenset[str] = frozenset(
    {
        # version control
        ".git",
        ".hg",
        ".svn",
        ".bzr",
        # dependencies
        "node_modules",
        "bower_components",
        "vendor",
        ".venv",
        "venv",
        ".eggs",
        # caches and tool state
        "__pycache__",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        ".cache",
        ".gradle",
        ".terraform",
        ".idea",
        ".vscode",
        # build output (not "out" or "coverage": too often real package names)
        "dist",
        "build",
        "target",
        ".next",
        ".nuxt",
        ".svelte-kit",
        "htmlcov",
    }
)
IGNORED_DIR_SUFFIXES: tuple[str, ...] = (".egg-info",)

IGNORED_FILE_NAMES: frozenset[str] = frozenset(
    {
        "package-lock.json",
        "npm-shrinkwrap.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "bun.lockb",
        "poetry.lock",
        "Pipfile.lock",
        "uv.lock",
        "pdm.lock",
        "Cargo.lock",
        "Gemfile.lock",
        "composer.lock",
        "mix.lock",
        "flake.lock",
        "go.sum",
        "packages.lock.json",
        ".DS_Store",
        "Thumbs.db",
    }
)
IGNORED_FILE_SUFFIXES: tuple[str, ...] = (".min.js", ".min.css", ".min.mjs", ".js.map", ".css.map")

# Extensions that are never text: skipped by name, without reading them.
BINARY_EXTENSIONS: frozenset[str] = frozenset(
    {
        *(".pyc", ".pyo", ".pyd", ".so", ".o", ".a", ".lib", ".dll", ".dylib", ".exe"),
        *(".class", ".jar", ".war", ".wasm", ".bin", ".dat", ".db", ".sqlite", ".sqlite3"),
        *(".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".tif", ".tiff", ".psd"),
        *(".mp3", ".mp4", ".wav", ".ogg", ".flac", ".avi", ".mov", ".webm", ".mkv"),
        *(".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".tar", ".whl"),
        *(".pdf", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".odt"),
        *(".woff", ".woff2", ".ttf", ".otf", ".eot"),
        *(".pkl", ".pickle", ".npy", ".npz", ".parquet", ".onnx", ".pt", ".safetensors"),
        ".lockb",
    }
)


class SkipReason(enum.StrEnum):
    """Why a path was not indexed."""

    IGNORED_BUILTIN = "ignored_builtin"
    GITIGNORED = "gitignored"
    EXCLUDED = "excluded"
    BINARY = "binary"
    UNDECODABLE = "undecodable"
    TOO_LARGE = "too_large"
    SYMLINK_OUTSIDE_ROOT = "symlink_outside_root"
    SYMLINK_DIRECTORY = "symlink_directory"
    BROKEN_SYMLINK = "broken_symlink"
    NOT_REGULAR = "not_regular"
    UNREADABLE = "unreadable"
    FAILED = "failed"  # reading or chunking raised an error (the job's errors say which)


@dataclass
class DiscoveryStats:
    """Skips seen by a walk. ``skipped`` lists each pruned path once (an ignored directory
    counts once, not once per file inside it), in the text form of ``codebase_mcp.paths``."""

    files: int = 0
    bytes: int = 0
    skipped: list[tuple[str, SkipReason]] = field(default_factory=list)
    counts: Counter[SkipReason] = field(default_factory=Counter)

    def skip(self, os_rel_path: str, reason: SkipReason) -> None:
        """Record a skip; the path is the walk's own (OS) form, recorded as text."""
        self.skipped.append((paths.to_text(os_rel_path), reason))
        self.counts[reason] += 1


def content_hash(data: bytes) -> str:
    """Hex digest that decides whether a file changed: SHA-256 of the bytes (64 hex chars;
    about twice blake2b's speed here, thanks to the CPU's SHA instructions)."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class FileContent:
    """A file's bytes, their text (see decode_source) and hash, and its language (refined
    by shebang)."""

    data: bytes
    text: str
    content_hash: str
    language: str | None


def decode_source(data: bytes, language: str | None = None) -> str | SkipReason:
    """The text of a file's bytes, or why it is not indexable text (pure; the rules are
    in codebase_mcp.source.decoding)."""
    text = decoding.decode(data, language)
    if text == "binary":
        return SkipReason.BINARY
    if text == "undecodable":
        return SkipReason.UNDECODABLE
    return text


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A candidate file found by ``discover_files``.

    ``rel_path`` is POSIX-style relative to the root (the link's path for a followed
    symlink), in the text form of ``codebase_mcp.paths`` (what is stored and shown);
    ``abs_path`` is the operating system's absolute path to open, a plain string (building a
    ``Path`` per file was a third of the walk's time; ``path`` gives one). ``size``,
    ``mtime_ns`` and ``inode`` come from the stat done during the walk (the indexer's
    change check compares them with the stored ones).
    """

    rel_path: str
    abs_path: str
    size: int
    mtime_ns: int
    language: str | None
    inode: int = 0

    @property
    def path(self) -> Path:
        return Path(self.abs_path)

    def read_bytes(self) -> bytes:
        return Path(self.abs_path).read_bytes()

    def load(self, max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES) -> FileContent | SkipReason:
        """Read, check and hash the file, or say why it is skipped. Never raises OSError.

        The size is checked again on the bytes read: the file may have grown since the walk.
        """
        try:
            data = self.read_bytes()
        except OSError:
            return SkipReason.UNREADABLE
        if max_file_bytes is not None and len(data) > max_file_bytes:
            return SkipReason.TOO_LARGE
        language = self.language
        if language is None and data.startswith(b"#!"):
            language = detect_language_from_shebang(data[:200])
        text = decode_source(data, language)
        if isinstance(text, SkipReason):
            return text
        return FileContent(data, text, content_hash(data), language)


class PathNotAllowedError(ValueError):
    """A path outside every allowed root."""

    def __init__(self, path: str | os.PathLike[str], roots: Sequence[Path]) -> None:
        self.path = paths.to_text(os.fspath(path))
        self.roots = tuple(roots)
        allowed = ", ".join(paths.to_text(str(r)) for r in self.roots) or "(none configured)"
        super().__init__(
            f"path '{self.path}' is not under an allowed root; allowed roots: {allowed}"
        )


def resolve_under_roots(
    path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]
) -> Path:
    """Resolve ``path`` (symlinks, ``..``, relative to the working directory) and return it
    if it is one of ``roots`` or inside one (each root resolved the same way); otherwise
    raise ``PathNotAllowedError`` naming the path and the roots.

    Containment is by path components, so ``/work/foo2`` is not under ``/work/foo``.
    """
    resolved_roots = [Path(os.path.realpath(r)) for r in roots]
    resolved = Path(os.path.realpath(path))
    for root in resolved_roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    raise PathNotAllowedError(path, resolved_roots)


# Build-output names that are also plausible Python package names (pypa/build has
# src/build/): kept when they hold an __init__.py.
_PACKAGE_NAMES_TOO = frozenset({"build", "dist", "target"})


def _is_builtin_ignored_dir(name: str, path: str) -> bool:
    if name in IGNORED_DIR_NAMES:
        return name not in _PACKAGE_NAMES_TOO or not Path(path, "__init__.py").is_file()
    return name.endswith(IGNORED_DIR_SUFFIXES)


def builtin_file_skip(name: str) -> SkipReason | None:
    """Skip decision for a file from its name alone (pure)."""
    if name in IGNORED_FILE_NAMES or name.endswith(IGNORED_FILE_SUFFIXES):
        return SkipReason.IGNORED_BUILTIN
    dot = name.rfind(".")
    if dot > 0 and name[dot:].lower() in BINARY_EXTENSIONS:
        return SkipReason.BINARY
    return None


@dataclass(frozen=True, slots=True)
class _IgnoreFile:
    """One .gitignore: its directory relative to the root ('' or 'a/b/') and its spec."""

    base: str
    spec: pathspec.GitIgnoreSpec


def _load_ignore_file(path: Path, base: str) -> _IgnoreFile | None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    if not spec.patterns:
        return None
    return _IgnoreFile(base, spec)


def is_gitignored(rel_path: str, is_dir: bool, chain: Sequence[_IgnoreFile]) -> bool:
    """Git's verdict for ``rel_path`` under the ignore files of its ancestors (root first).

    The deepest file with a matching line decides; within it the last matching line wins.
    """
    for ignore in reversed(chain):
        sub = rel_path[len(ignore.base) :]
        result = ignore.spec.check_file(sub + "/" if is_dir else sub)
        if result.include is not None:
            return bool(result.include)
    return False


class DirectoryRules:
    """The ignore rules in force inside one directory a walk visited: what a file watcher
    asks about a name that appears there, without walking again."""

    __slots__ = ("_chain", "_walk", "abs_dir", "rel_dir")

    def __init__(self, walk: _Walk, abs_dir: str, rel_dir: str, chain: list[_IgnoreFile]):
        self._walk = walk
        self._chain = chain
        self.abs_dir = abs_dir
        self.rel_dir = rel_dir  # '' or 'a/b/' (the walk's OS form)

    def ignores(self, name: str, is_dir: bool) -> bool:
        """Whether the walk would leave out the entry `name` of this directory by an
        ignore rule (built-in lists, .gitignore, excludes)."""
        rel = self.rel_dir + name
        if is_dir:
            if _is_builtin_ignored_dir(name, self.abs_dir + os.sep + name):
                return True
            return self._walk._ignored(rel, True, self._chain) is not None
        if builtin_file_skip(name) is SkipReason.IGNORED_BUILTIN:
            return True
        return self._walk._ignored(rel, False, self._chain) is not None


def discover_files(
    root: str | os.PathLike[str],
    *,
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
    use_gitignore: bool = True,
    exclude: Iterable[str] = (),
    stats: DiscoveryStats | None = None,
    directories: dict[str, DirectoryRules] | None = None,
) -> Iterator[SourceFile]:
    """Yield the indexable candidate files under ``root`` (an operating-system path) in
    a stable (sorted) order.

    ``exclude``: extra gitignore-style patterns relative to the root (a caller's setting);
    they win over everything else. Pass a ``DiscoveryStats`` to collect skip reasons, and
    ``directories`` to collect every directory visited (absolute OS path -> its rules).
    Files still need ``load()`` for the binary and decoding checks and the hash. Unreadable
    directories are reported and skipped.
    """
    patterns = [p for p in exclude if p.strip()]
    excluded = pathspec.GitIgnoreSpec.from_lines(patterns) if patterns else None
    walk = _Walk(root, max_file_bytes, use_gitignore, excluded, stats or DiscoveryStats())
    walk.directories = directories
    chain: list[_IgnoreFile] = []
    if use_gitignore:
        info_exclude = _load_ignore_file(Path(walk.root, ".git", "info", "exclude"), "")
        if info_exclude is not None:
            chain.append(info_exclude)
    # Depth-first with an explicit stack: (absolute dir, relative dir prefix, ignore chain).
    stack: list[tuple[str, str, list[_IgnoreFile]]] = [(walk.root, "", chain)]
    while stack:
        subdirs: list[tuple[str, str, list[_IgnoreFile]]] = []
        yield from walk.scan(*stack.pop(), subdirs)
        stack.extend(reversed(subdirs))  # reversed: the stack pops them in name order


class _Walk:
    """One discovery walk: settings and the stats it fills."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_file_bytes: int | None,
        use_gitignore: bool,
        excluded: pathspec.GitIgnoreSpec | None,
        stats: DiscoveryStats,
    ) -> None:
        self.root = os.path.realpath(root)
        self.root_prefix = self.root.rstrip(os.sep) + os.sep
        self.max_file_bytes = max_file_bytes
        self.use_gitignore = use_gitignore
        self.excluded = excluded
        self.stats = stats
        self.directories: dict[str, DirectoryRules] | None = None

    def _ignored(self, rel: str, is_dir: bool, chain: Sequence[_IgnoreFile]) -> SkipReason | None:
        if self.excluded is not None and self.excluded.match_file(rel + "/" if is_dir else rel):
            return SkipReason.EXCLUDED
        if chain and is_gitignored(rel, is_dir, chain):
            return SkipReason.GITIGNORED
        return None

    def scan(
        self,
        abs_dir: str,
        rel_dir: str,
        chain: list[_IgnoreFile],
        subdirs: list[tuple[str, str, list[_IgnoreFile]]],
    ) -> Iterator[SourceFile]:
        """Files of one directory; its subdirectories to visit go to ``subdirs``."""
        stats = self.stats
        try:
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            stats.skip(rel_dir.rstrip("/") or ".", SkipReason.UNREADABLE)
            return
        if rel_dir and any(e.name == "pyvenv.cfg" for e in entries):
            # A virtualenv under any name (.venv-foo, env): dependencies, not the project.
            stats.skip(rel_dir.rstrip("/"), SkipReason.IGNORED_BUILTIN)
            return
        if self.use_gitignore and any(e.name == ".gitignore" for e in entries):
            local = _load_ignore_file(Path(abs_dir, ".gitignore"), rel_dir)
            if local is not None:
                chain = [*chain, local]
        if self.directories is not None:
            self.directories[abs_dir] = DirectoryRules(self, abs_dir, rel_dir, chain)
        for entry in entries:
            name = entry.name
            rel = rel_dir + name
            try:
                if entry.is_symlink():
                    found = self._symlink(entry, rel, chain)
                    if found is not None:
                        yield found
                    continue
                if entry.is_dir(follow_symlinks=False):
                    reason = (
                        SkipReason.IGNORED_BUILTIN
                        if _is_builtin_ignored_dir(name, entry.path)
                        else self._ignored(rel, True, chain)
                    )
                    if reason is not None:
                        stats.skip(rel, reason)
                    else:
                        subdirs.append((entry.path, rel + "/", chain))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    stats.skip(rel, SkipReason.NOT_REGULAR)
                    continue
                reason = builtin_file_skip(name) or self._ignored(rel, False, chain)
                if reason is not None:
                    stats.skip(rel, reason)
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                stats.skip(rel, SkipReason.UNREADABLE)
                continue
            found = self._candidate(rel, entry.path, st)
            if found is not None:
                yield found

    def _candidate(self, rel: str, path: str, st: os.stat_result) -> SourceFile | None:
        if self.max_file_bytes is not None and st.st_size > self.max_file_bytes:
            self.stats.skip(rel, SkipReason.TOO_LARGE)
            return None
        self.stats.files += 1
        self.stats.bytes += st.st_size
        text = paths.to_text(rel)
        return SourceFile(text, path, st.st_size, st.st_mtime_ns, detect_language(text), st.st_ino)

    def _symlink(
        self, entry: os.DirEntry[str], rel: str, chain: Sequence[_IgnoreFile]
    ) -> SourceFile | None:
        """A symlinked file inside the root, or None (with the reason recorded)."""
        target = os.path.realpath(entry.path)
        if target != self.root and not target.startswith(self.root_prefix):
            self.stats.skip(rel, SkipReason.SYMLINK_OUTSIDE_ROOT)
            return None
        try:
            st = Path(entry.path).stat()  # follows the link; ELOOP and dangling links raise
        except OSError:
            self.stats.skip(rel, SkipReason.BROKEN_SYMLINK)
            return None
        if stat.S_ISDIR(st.st_mode):
            self.stats.skip(rel, SkipReason.SYMLINK_DIRECTORY)
            return None
        if not stat.S_ISREG(st.st_mode):
            self.stats.skip(rel, SkipReason.NOT_REGULAR)
            return None
        reason = builtin_file_skip(entry.name) or self._ignored(rel, False, chain)
        if reason is not None:
            self.stats.skip(rel, reason)
            return None
        return self._candidate(rel, entry.path, st)
