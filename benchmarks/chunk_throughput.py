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

from codebase_mcp.chunk import Chunker, ChunkOptions
from codebase_mcp.discover import DiscoveryStats, FileContent, discover_files

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


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


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
    print(f"python {sys.version.split()[0]}  root {root}")
    print(
        f"corpus: {len(contents)} files, {total_bytes / 1e6:.1f} MB "
        f"(median {sizes[len(sizes) // 2] / 1024:.1f} KiB), "
        f"languages {dict(languages.most_common(6))}"
    )
    print(f"skipped: {dict(stats.counts)}")

    # --- walks, interleaved ---
    walks: dict[str, Callable[[str], int]] = {
        "os.walk (names only)": bare_walk,
        "os.walk + lstat": walk_and_stat,
        "discover_files": discover,
        "discover + read + hash": discover_load,
    }
    times: dict[str, list[float]] = {name: [] for name in walks}
    counts: dict[str, int] = {}
    for _ in range(args.runs):
        for name, fn in walks.items():
            elapsed, counts[name] = timed(lambda fn=fn: fn(root))  # type: ignore[misc]
            times[name].append(elapsed)
    base = statistics.median(times["os.walk (names only)"])
    print("\nwalk                      files    median s    files/s   x os.walk")
    for name in walks:
        med = statistics.median(times[name])
        print(
            f"{name:24} {counts[name]:7} {med:10.3f} {counts[name] / med:10.0f} {med / base:10.2f}"
        )

    # --- chunking ---
    chunker = Chunker(ChunkOptions())
    chunk_times: list[float] = []
    n_chunks = 0
    for _ in range(args.runs):
        start = time.perf_counter()
        n_chunks = sum(len(chunker.chunk(c.text, c.language, c.data)) for c in contents)
        chunk_times.append(time.perf_counter() - start)
    med = statistics.median(chunk_times)

    e2e_times: list[float] = []
    for _ in range(args.runs):
        start = time.perf_counter()
        for found in discover_files(root, exclude=EXCLUDE):
            loaded = found.load()
            if isinstance(loaded, FileContent):
                chunker.chunk(loaded.text, loaded.language, loaded.data)
        e2e_times.append(time.perf_counter() - start)
    e2e = statistics.median(e2e_times)

    print("\nchunking                  files/s    chunks/s      MB/s")
    print(
        f"{'chunk only':24} {len(contents) / med:8.0f} {n_chunks / med:11.0f} "
        f"{total_bytes / med / 1e6:9.2f}"
    )
    print(
        f"{'discover+load+chunk':24} {len(contents) / e2e:8.0f} {n_chunks / e2e:11.0f} "
        f"{total_bytes / e2e / 1e6:9.2f}"
    )
    print(f"\n{n_chunks} chunks, {n_chunks / len(contents):.1f} per file (one process, one core)")


if __name__ == "__main__":
    main()
