"""How bytes become text (codebase_mcp.source.decoding): marks, cookies, UTF-8, a guess, or a
reason. Pure."""

from __future__ import annotations

import random

import pytest

from codebase_mcp.source.decoding import coding_cookie, decode

POLISH = "// Zażółć gęślą jaźń, to jest test kodowania\nint x;\n"
RUSSIAN = "// Привет мир, это тест кодировки\nint main() { return 0; }\n"
FRENCH = "/* Créé par François, dernière mise à jour */\nint main(void) { return 0; }\n"


@pytest.mark.parametrize(
    ("data", "language", "text"),
    [
        # a PEP 263 cookie, on the first or the second line
        (
            "# -*- coding: latin-1 -*-\nx = 'naïve'\n".encode("latin-1"),
            "python",
            "# -*- coding: latin-1 -*-\nx = 'naïve'\n",
        ),
        (
            "#!/usr/bin/env python\n# vim: set fileencoding=cp1252 :\nx = '€'\n".encode("cp1252"),
            "python",
            "#!/usr/bin/env python\n# vim: set fileencoding=cp1252 :\nx = '€'\n",
        ),
        # a cookie that lies, or names no codec: guessed like any other file
        (
            "# coding: ascii\nx = 'été'\n".encode("latin-1"),
            "python",
            "# coding: ascii\nx = 'été'\n",
        ),
        (b"# coding: klingon\nx = 1\n", "python", "# coding: klingon\nx = 1\n"),
        # byte-order marks, before the NUL sniff: UTF-16 is full of NULs
        ("def f():\n    return 'é'\n".encode("utf-16"), None, "def f():\n    return 'é'\n"),
        (b"\xfe\xff" + "hi\n".encode("utf-16-be"), None, "hi\n"),
        ("x = 1\n".encode("utf-32"), None, "x = 1\n"),
        (b"\xef\xbb\xbfx = 1\n", "python", "x = 1\n"),
        # UTF-8, then the guess, which prefers cp1252 among equals
        ("s = 'café'\n".encode(), "python", "s = 'café'\n"),
        (FRENCH.encode("latin-1"), "c", FRENCH),
        (b"x = '\xe9'\n", "python", "x = 'é'\n"),
        ("// こんにちは世界、これはテストです\nint x;\n".encode("shift_jis"), "c", None),
        # where cp1252 cannot be meant, the detector's reading stands
        (POLISH.encode("cp1250"), "c", POLISH),
        (RUSSIAN.encode("cp1251"), "c", RUSSIAN),
    ],
)
def test_text_comes_from_the_declared_or_the_likeliest_encoding(
    data: bytes, language: str | None, text: str | None
) -> None:
    decoded = decode(data, language)
    assert decoded == (text if text is not None else data.decode("shift_jis"))


def test_a_cookie_counts_only_in_python() -> None:
    data = "# -*- coding: latin-1 -*-\nx = 'naïve'\n".encode("latin-1")
    assert coding_cookie(data) == "iso-8859-1"
    assert coding_cookie(b"# coding: utf-8\n") is None
    assert coding_cookie(b"x = 1\n") is None
    assert decode(data, "ruby") == "# -*- coding: latin-1 -*-\nx = 'naïve'\n"  # a guess here


def test_binary_and_undecodable() -> None:
    assert decode(b"x = 1\x00\x01") == "binary"
    assert decode(b"a" * 9000 + b"\x00") == "a" * 9000 + "\x00"  # only 8 KiB are sniffed
    assert decode(b"\xff\xfe\x00") == "undecodable"  # a UTF-16 mark that lies
    noise = random.Random(7).randbytes(4000).replace(b"\x00", b"\x01")
    assert decode(noise) == "undecodable"
