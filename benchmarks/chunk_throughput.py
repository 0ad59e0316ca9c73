"""Discovery and chunking throughput on the running interpreter's standard library.

Side by side in one run (interleaved, median of --runs, so machine noise hits all alike):

- walk: a bare ``os.walk`` listing, and ``os.walk`` + one ``stat`` per file (the least a
  walk that reports size and mtime can do), against ``discover_files`` (built-in
  ignores, .gitignore, stat, language); the ratio says what discovery's decisions cost.
- re-index hot path: discover + read + UTF-8 check + hash (what an unchanged tree costs
  before the database is asked). Goal for the whole re-index: >= 2,000 files/s.
- chunking alone (content preloaded) and discover + load + chunk end to end. Goal for the
  whole first index with an instant embedder: >= 200 files/s on 2 cores.

site-packages/dist-packages are left out: they are not the standard library.

    .venv/bin/python benchmarks/chunk_throughput.py [--root DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from codebase_mcp.source.chunk import Chunker, ChunkOptions
from codebase_mcp.source.discover import DiscoveryStats, FileContent, discover_files

EXCLUDE = ["site-packages/", "dist-packages/"]
PRUNE = {"site-packages", "dist-packages", "__pycache__"}


def bare_walk(root: str) -> int:
    count = 0
    for _dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in PRUNE]
        count += len(filenames)
    return count


def walk_and_stat(root: str) -> int:
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in PRUNE]
        for name in filenames:
            os.lstat(os.path.join(dirpath, name))
            count += 1
    return count


def discover(root: str) -> int:
    return sum(1 for _ in discover_files(root, exclude=EXCLUDE))


def discover_load(root: str) -> int:
    count = 0
    for found in discover_files(root, exclude=EXCLUDE):
        if isinstance(found.load(), FileContent):
            count += 1
    return count


def timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, result)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def report(title: str, rows: dict[str, list[tuple[float, float, int]]], files: int) -> None:
    """Medians per row; files/cpu-s is what one core does when the machine is shared."""
    base = statistics.median(r[0] for r in next(iter(rows.values())))
    print(
        f"\n{title:26} {'files':>6} {'median s':>9} {'files/s':>9} {'files/cpu-s':>12} {'ratio':>7}"
    )
    for name, runs in rows.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        count = files or runs[0][2]
        print(
            f"{name:26} {count:6} {wall:9.3f} {count / wall:9.0f} "
            f"{count / max(cpu, 1e-9):12.0f} {wall / base:7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = str(Path(args.root).resolve())

    stats = DiscoveryStats()
    contents: list[FileContent] = []
    for found in discover_files(root, exclude=EXCLUDE, stats=stats):
        loaded = found.load()
        if isinstance(loaded, FileContent):
            contents.append(loaded)
    total_bytes = sum(len(c.data) for c in contents)
    sizes = sorted(len(c.data) for c in contents)
    languages = collections.Counter(c.language for c in contents)
    print(f"python {sys.version.split()[0]}  root {root}  runs {args.runs} (interleaved)")
    print(
        f"corpus: {len(contents)} files, {total_bytes / 1e6:.1f} MB "
        f"(median {sizes[len(sizes) // 2] / 1024:.1f} KiB), "
        f"languages {dict(languages.most_common(6))}"
    )
    print(f"skipped: { {str(k): v for k, v in stats.counts.items()} }")

    walks: dict[str, Callable[[str], int]] = {
        "os.walk (names only)": bare_walk,
        "os.walk + lstat": walk_and_stat,
        "discover_files": discover,
        "discover + read + hash": discover_load,
    }
    walk_rows: dict[str, list[tuple[float, float, int]]] = {name: [] for name in walks}
    for _ in range(args.runs):
        for name, fn in walks.items():
            walk_rows[name].append(timed(lambda fn=fn: fn(root)))  # type: ignore[misc]
    report("walk (ratio: x os.walk)", walk_rows, 0)

    chunker = Chunker(ChunkOptions())

    def chunk_all() -> int:
        return sum(len(chunker.chunk(c.text, c.language, c.data)) for c in contents)

    def end_to_end() -> int:
        n = 0
        for found in discover_files(root, exclude=EXCLUDE):
            loaded = found.load()
            if isinstance(loaded, FileContent):
                n += len(chunker.chunk(loaded.text, loaded.language, loaded.data))
        return n

    chunk_rows: dict[str, list[tuple[float, float, int]]] = {
        "chunk only": [],
        "discover+load+chunk": [],
    }
    for _ in range(args.runs):
        chunk_rows["chunk only"].append(timed(chunk_all))
        chunk_rows["discover+load+chunk"].append(timed(end_to_end))
    report("chunking (ratio: x chunk)", chunk_rows, len(contents))
    n_chunks = chunk_rows["chunk only"][0][2]
    wall = statistics.median(r[0] for r in chunk_rows["chunk only"])
    print(
        f"\nchunk only: {n_chunks} chunks ({n_chunks / len(contents):.1f} per file), "
        f"{n_chunks / wall:.0f} chunks/s, {total_bytes / wall / 1e6:.2f} MB/s; one process"
    )


if __name__ == "__main__":
    main()
