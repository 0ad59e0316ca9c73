r"""The one text form of file-system paths, which on Linux are bytes.

A file name may be any bytes but `/` and NUL; the database, JSON and the embedder take
only valid Unicode. Every path the product stores or shows (repository paths, file paths
relative to them, paths in errors) is in this text form:

- UTF-8 sequences stand for themselves (`café.py`, `📦/a b.py`);
- a backslash is written `\\` (two backslashes);
- every other byte is written `\xHH` (lower-case hex): bytes that are not valid UTF-8
  (`caf\xe9.py` for Latin-1 `café.py`), and control characters (C0, DEL and the C1
  range, e.g. a newline is `\x0a`), so that a path always prints on one line and cannot
  drive a terminal.

The mapping is reversible: `to_bytes(to_text(b)) == b` for every byte string. Tool
arguments that name a path (index_repository, remove_repository, the repository filter)
are read in this form; `\xHH` is accepted in either case. A path typed in a terminal is
an operating-system path and goes through `to_text` first.

Pure functions; the operating system's own str form (surrogate-escaped bytes, what `os`
functions return) converts through `os.fsencode`/`os.fsdecode`, so the text form does
not depend on the locale.
"""

from __future__ import annotations

import os
import re

# Characters of a decoded name that are written as escapes: C0 controls, DEL, C1
# controls, the backslash, and surrogate escapes (the bytes that were not UTF-8).
_NEEDS_ESCAPE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\udc80-\udcff]")
# In the text form: an escaped backslash, a byte, or a backslash that is neither.
_ESCAPE_SEQUENCE = re.compile(r"\\(?:(\\)|x([0-9a-fA-F]{2})|)")


class PathTextError(ValueError):
    """A string that is not a valid path in the text form."""


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return "".join(f"\\x{b:02x}" for b in char.encode("utf-8"))


def to_text(path: str | bytes) -> str:
    """The text form of an operating-system path (bytes, or str as `os` functions
    return it)."""
    if isinstance(path, str):
        # Fast path (half the time of the regex; the walk calls this once per file):
        # printable ASCII is the same in every file-system encoding.
        if path.isascii() and path.isprintable() and "\\" not in path:
            return path
        path = os.fsencode(path)
    return _NEEDS_ESCAPE.sub(_escape, path.decode("utf-8", "surrogateescape"))


def to_bytes(text: str) -> bytes:
    """The bytes a text-form path stands for. Raises PathTextError for a backslash that
    starts no escape, an unpaired surrogate (not text), or a NUL (no path has one)."""
    out = bytearray()
    end = 0
    for match in _ESCAPE_SEQUENCE.finditer(text):
        out += _utf8(text[end : match.start()])
        if match.group(1) is not None:
            out += b"\\"
        elif match.group(2) is not None:
            out.append(int(match.group(2), 16))
        else:
            raise PathTextError(
                f"a backslash at position {match.start()} starts no escape: in paths a "
                "backslash is written \\\\ and a byte that is not UTF-8 \\xHH"
            )
        end = match.end()
    out += _utf8(text[end:])
    if 0 in out:
        raise PathTextError("a path cannot contain a NUL byte")
    return bytes(out)


def to_os(text: str) -> str:
    """The operating-system str (surrogate-escaped) for a text-form path."""
    return os.fsdecode(to_bytes(text))


def canonical(text: str) -> str:
    """The text form as `to_text` writes it (lower-case escapes, controls escaped)."""
    return to_text(to_bytes(text))


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(text[exc.start])
        raise PathTextError(
            f"the path contains an unpaired surrogate (U+{bad:04X}), which is not text: "
            "write a byte that is not UTF-8 as \\xHH"
        ) from None
