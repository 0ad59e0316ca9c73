"""Which files of a repository changed since the index last read them: pure decisions.

A stored file whose stat (size, mtime_ns, inode) still matches, taken long enough after
its last write to be trusted, stands for the content it was taken with, as in git's
index; any other stored file is read and hashed, and its content hash decides. New
files are indexed anyway, stored files no longer found are deleted. Files found not
indexable on reading are remembered with their stat and counted again unread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from codebase_mcp.source.discover import SkipReason, SourceFile
from codebase_mcp.store import db


@dataclass(frozen=True, slots=True)
class SkippedFile:
    path: str
    reason: SkipReason
    error: str | None = None  # a failure worth naming in the job's errors


@dataclass(frozen=True)
class Plan:
    changed: list[SourceFile]
    unchanged: int
    deleted: list[str]


# A stat taken this soon after the file's last write cannot vouch for its content: a
# second write within the file system's timestamp granularity (a jiffy here, 1-2 s on
# some file systems) would leave size, mtime and inode alike. Git calls such entries
# "racily clean" and so do we: they are hashed again by the next run.
RACY_NS = 2_000_000_000


def racily_clean(mtime_ns: int, scan_started_ns: int) -> bool:
    """Whether a file last written at `mtime_ns` is too recent, at a scan that started
    at `scan_started_ns` (wall clock), for its stat to be trusted later."""
    return mtime_ns >= scan_started_ns - RACY_NS


def stat_of(source: SourceFile, scan_started_ns: int) -> db.FileStat:
    trusted = not racily_clean(source.mtime_ns, scan_started_ns)
    return db.FileStat(source.size, source.mtime_ns, source.inode, trusted)


def stat_unchanged(stored: db.FileStat | None, source: SourceFile) -> bool:
    """The cheap change check, as git's index does it: a trusted stored stat that still
    matches (size, mtime_ns, inode) stands for the content it was taken with."""
    return (
        stored is not None
        and stored.trusted
        and stored.size == source.size
        and stored.mtime_ns == source.mtime_ns
        and stored.inode == source.inode
    )


def known_hashes(
    discovered: Sequence[SourceFile], stored: dict[str, db.StoredFile], stat_check: bool
) -> tuple[dict[str, str | None], list[SourceFile]]:
    """The hashes the stat check vouches for (the stored ones, unread), and the stored
    files to read and hash. A new file needs no hash to decide: it is indexed anyway
    (its chunking process hashes it as it reads it)."""
    digests: dict[str, str | None] = {}
    to_hash: list[SourceFile] = []
    for source in discovered:
        old = stored.get(source.rel_path)
        if old is None:
            continue
        if stat_check and stat_unchanged(old.stat, source):
            digests[source.rel_path] = old.content_hash
        else:
            to_hash.append(source)
    return digests, to_hash


def stats_to_store(
    discovered: Sequence[SourceFile],
    stored: dict[str, db.StoredFile],
    changed: Sequence[SourceFile],
    scan_started_ns: int,
) -> list[tuple[str, db.FileStat]]:
    """The stats to update: files whose content did not change but whose stored stat
    differs from today's (touched, rewritten with the same bytes, trusted now, or stored
    before stats were kept). Changed files get theirs with their new rows."""
    rewritten = {s.rel_path for s in changed}
    out: list[tuple[str, db.FileStat]] = []
    for source in discovered:
        old = stored.get(source.rel_path)
        if old is None or source.rel_path in rewritten:
            continue
        new = stat_of(source, scan_started_ns)
        if old.stat != new:
            out.append((source.rel_path, new))
    return out


# What the runs of one repository found not indexable on reading (binary, undecodable,
# too large, unreadable, failed): path -> (the stat it had, the reason, the error). Never
# stored, such a file would be read again by every run; with the same trusted stat it is
# counted again unread. Kept in memory per engine: a new process reads each once.
KnownSkips = dict[str, tuple[db.FileStat, SkipReason, str | None]]


def split_known_skips(
    changed: Sequence[SourceFile], known: KnownSkips
) -> tuple[list[SourceFile], list[SkippedFile]]:
    """The files still to read, and those a known skip with the same stat vouches for."""
    to_read: list[SourceFile] = []
    skipped: list[SkippedFile] = []
    for source in changed:
        seen = known.get(source.rel_path)
        if seen is not None and stat_unchanged(seen[0], source):
            skipped.append(SkippedFile(source.rel_path, seen[1], seen[2]))
        else:
            to_read.append(source)
    return to_read, skipped


def plan_changes(
    discovered: Sequence[SourceFile],
    hashes: Sequence[str | None],
    stored: dict[str, db.StoredFile],
    *,
    force: bool,
) -> Plan:
    """Which files to (re)index: new, changed by content hash, or all with `force`; which
    stored files are gone. (Chunks stored without vectors are embedded by the background
    catch-up, not by indexing their files again.)"""
    changed: list[SourceFile] = []
    unchanged = 0
    for source, digest in zip(discovered, hashes, strict=True):
        old = stored.get(source.rel_path)
        if force or old is None or digest is None or old.content_hash != digest:
            changed.append(source)
        else:
            unchanged += 1
    present = {s.rel_path for s in discovered}
    deleted = sorted(p for p in stored if p not in present)
    return Plan(changed, unchanged, deleted)
