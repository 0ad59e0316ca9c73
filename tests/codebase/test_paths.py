"""The one text form of file-system paths (codebase_mcp.paths): every byte string maps to
printable text and back, whatever the bytes."""

from __future__ import annotations

import os
import random
import re

import pytest

from codebase_mcp import paths

NAMES = {
    b"caf\xe9.py": "caf\\xe9.py",  # Latin-1, not UTF-8
    b"a\\b.py": "a\\\\b.py",  # a backslash
    b"new\nline.py": "new\\x0aline.py",  # a control character
    b"with space.py": "with space.py",
    "📦/émoji ☃.py".encode(): "📦/émoji ☃.py",  # valid UTF-8 stays itself
    b"m\\x41\xff\x1b[31m\xc2\x9b.py": "m\\\\x41\\xff\\x1b[31m\\xc2\\x9b.py",  # a mix; C1 too
    b"\xed\xa0\x80.py": "\\xed\\xa0\\x80.py",  # an encoded surrogate is not UTF-8
}


@pytest.mark.parametrize(("raw", "text"), NAMES.items())
def test_names_map_to_one_readable_text_and_back(raw: bytes, text: str) -> None:
    assert paths.to_text(raw) == text
    assert paths.to_text(os.fsdecode(raw)) == text  # what os.scandir hands out
    assert paths.to_bytes(text) == raw
    assert paths.to_os(text) == os.fsdecode(raw)
    assert text.isprintable() or " " in text  # one line, nothing for a terminal to obey
    text.encode("utf-8")  # storable: no surrogates


def test_every_byte_string_round_trips() -> None:
    for byte in range(1, 256):
        assert paths.to_bytes(paths.to_text(bytes([byte]))) == bytes([byte])
    rng = random.Random(11)
    alphabet = [*range(1, 256), *[ord("\\")] * 30, *[ord("x")] * 30]
    for _ in range(5000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        text = paths.to_text(raw)
        assert paths.to_bytes(text) == raw, (raw, text)
        text.encode("utf-8")


def test_input_may_use_upper_case_escapes_and_is_canonicalised() -> None:
    assert paths.to_bytes("caf\\xE9") == b"caf\xe9"
    assert paths.canonical("caf\\xE9/\x07") == "caf\\xe9/\\x07"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("C:\\Users", "starts no escape"),
        ("a\\x4", "starts no escape"),
        ("trailing\\", "starts no escape"),
        ("\ud800", "unpaired surrogate (U+D800)"),
        ("caf\udce9", "unpaired surrogate (U+DCE9)"),
        ("a\\x00b", "NUL"),
        ("a\x00b", "NUL"),
    ],
)
def test_malformed_text_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(paths.PathTextError, match=re.escape(message)):
        paths.to_bytes(text)
