"""How a source file's bytes become text, or why they do not.

In order:

1. a byte-order mark names the encoding (UTF-8, UTF-16 or UTF-32, either byte order);
2. a NUL byte in the first 8 KiB means binary (after 1: UTF-16 text is full of NULs);
3. a Python file's PEP 263 coding cookie (`# -*- coding: latin-1 -*-` on its first or
   second line), read by the standard library's own tokenizer rules;
4. UTF-8;
5. charset-normalizer's reading (legacy code pages: cp1251, Shift-JIS, GB18030, ...),
   but cp1252 (a superset of Latin-1's printable range) whenever it finds cp1252
   plausible: it is the commonest legacy encoding of source code, and on the short,
   mostly-ASCII texts code has, the detector's first choice among the Latin code pages is
   often wrong (cp1250, mac_latin2, even Urdu cp1006 for one `é`);
6. otherwise the file is undecodable and skipped (the job counts it).

A declared encoding (1, 3) that does not decode the bytes is not trusted: a BOM that
lies makes the file undecodable, a wrong cookie falls through to 4 and 5. Pure.
"""

from __future__ import annotations

import codecs
import io
import tokenize
from typing import Literal

BINARY_SNIFF_BYTES = 8192

# Longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_PREFERRED = "cp1252"

Failure = Literal["binary", "undecodable"]


def decode(data: bytes, language: str | None = None) -> str | Failure:
    """The text of a file's bytes (`language` as detected: "python" reads a coding
    cookie), or why it has none."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding).removeprefix("\ufeff")
            except UnicodeDecodeError:
                return "undecodable"
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return "binary"
    if language == "python":
        declared = coding_cookie(data)
        if declared is not None:
            try:
                return data.decode(declared)
            except UnicodeDecodeError:
                pass  # a wrong declaration: guess as for any other file
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    return guess(data) or "undecodable"


def coding_cookie(data: bytes) -> str | None:
    """The encoding a PEP 263 cookie declares, when it is not UTF-8 (None: no cookie,
    UTF-8, or a codec Python does not know)."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError:  # an unknown codec, or a cookie that contradicts a BOM
        return None
    return None if codecs.lookup(encoding).name == "utf-8" else encoding


def guess(data: bytes) -> str | None:
    """charset-normalizer's reading of bytes that are not UTF-8, or None when no
    encoding yields plausible text (binary without NUL bytes, mixed garbage)."""
    from charset_normalizer import from_bytes  # ~50 ms to import: only when needed

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        return None
    plausible = {enc for m in matches for enc in (m.encoding, *m.could_be_from_charset)}
    if _PREFERRED in plausible:
        try:
            return data.decode(_PREFERRED)
        except UnicodeDecodeError:
            pass
    return str(best)
