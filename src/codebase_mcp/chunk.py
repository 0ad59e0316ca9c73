"""Cut a source file into chunks for embedding.

Parsed languages (see ``languages.GRAMMARS``): one chunk per top-level definition; a
class-like container (class, struct, interface, impl, trait, namespace, module ...) with
methods is cut into one chunk per method plus "shell" chunks for the rest of the container
(header, fields, text between methods), with the container's symbol. Decorators,
attributes and comments right above a definition belong to it. Code between definitions
becomes ``gap`` chunks. Other languages, and any parse failure, get line windows.

Guarantees, for every file:
- chunks are whole lines (except one line longer than ``max_chars``, cut into pieces),
  in file order, never overlapping, and together cover every non-blank line;
- no chunk starts or ends with a blank line;
- no chunk exceeds ``max_lines`` lines or ``max_chars`` characters: larger ones are split
  at line boundaries, preferring the start of a child node or a blank line.

A ``Chunker`` caches one tree-sitter parser per grammar; parsers are not thread-safe, so
use one ``Chunker`` per thread (``chunk_source`` keeps one per thread for you).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# Chunk kinds. Definitions: the kind of the node. Shell pieces of a container carry the
# container's kind. GAP: code between definitions. WINDOW: line windows.
FUNCTION = "function"
METHOD = "method"
CLASS = "class"
GAP = "gap"
WINDOW = "window"


@dataclass(frozen=True, slots=True)
class ChunkOptions:
    """Size limits. ``window_lines``: lines per window for unparsed languages."""

    max_chars: int = 1500
    max_lines: int = 60
    window_lines: int = 60

    def __post_init__(self) -> None:
        if self.max_chars < 80 or self.max_lines < 1 or self.window_lines < 1:
            raise ValueError(
                "chunk limits too small: max_chars >= 80, max_lines >= 1, window_lines >= 1"
            )


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a file. Lines are 1-based and inclusive; ``text`` is those lines joined
    with ``\\n`` (no trailing newline, ``\\r`` dropped). ``symbol`` is the qualified name of
    the definition (``Foo.bar``) or None for gaps and windows (markdown windows carry the
    heading they fall under). ``kind`` is function, method, class, struct, enum,
    interface, impl, trait, module, type, gap, window ..."""

    start_line: int
    end_line: int
    text: str
    kind: str
    symbol: str | None
    language: str | None


class Chunker:
    """Chunks files; holds the parser cache. Not thread-safe: one per thread."""

    def __init__(self, options: ChunkOptions | None = None) -> None:
        self.options = options or ChunkOptions()

    def chunk(self, text: str, language: str | None) -> list[Chunk]:
        """Chunks of ``text`` (a whole file) in file order. Never raises for bad source."""
        raise NotImplementedError


_local = threading.local()


def chunk_source(
    text: str, language: str | None, options: ChunkOptions | None = None
) -> list[Chunk]:
    """``Chunker(options).chunk(text, language)`` with a per-thread cached ``Chunker``."""
    options = options or ChunkOptions()
    chunker: Chunker | None = getattr(_local, "chunker", None)
    if chunker is None or chunker.options != options:
        chunker = Chunker(options)
        _local.chunker = chunker
    return chunker.chunk(text, language)
