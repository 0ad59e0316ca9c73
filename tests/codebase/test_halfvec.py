"""The compiled halfvec encoder (codebase_mcp._halfvec) against its reference, the struct
path in codebase_mcp.store.db: the same bytes, and the same refusals."""

from __future__ import annotations

import math
import random
import struct

import pytest

from codebase_mcp.store import db

try:
    from codebase_mcp._halfvec import encode as compiled
except ImportError:  # pragma: no cover - built without a C compiler
    compiled = None

# Around every boundary: zero and signed zero, subnormals and the ties between them,
# the smallest normal, powers of two and their neighbours, the largest half and the
# first value that rounds past it.
EDGES = [
    0.0,
    -0.0,
    2.0**-26,
    2.0**-25,  # a tie between 0 and the smallest subnormal: to even, 0
    2.0**-25 * 1.0000001,
    2.0**-24,
    2.0**-24 * 1.5,  # a tie: to even, 2^-23
    2.0**-24 * 2.5,  # a tie: to even, 2^-23
    2.0**-14 - 2.0**-25,  # a tie between the largest subnormal and the smallest normal
    2.0**-14,
    1.0,
    1.0 + 2.0**-11,  # a tie: to even, 1.0
    1.0 + 3 * 2.0**-11,  # a tie: to even, 1 + 2^-9
    2.0 - 2.0**-12,  # rounds up to the next power of two
    0.1,
    1 / 3,
    65504.0,
    65519.99,
    5e-324,  # a subnormal double
]


def test_the_compiled_encoder_is_installed_and_used() -> None:
    assert compiled is not None, "codebase_mcp._halfvec is missing: pip install -e . with gcc"
    assert db.encode_half is compiled


@pytest.mark.skipif(compiled is None, reason="not compiled")
def test_it_gives_the_references_bytes() -> None:
    assert compiled is not None
    rng = random.Random(5)
    vectors = [EDGES, [-v for v in EDGES], [], [1, 2, True]]  # ints and bools are numbers
    for scale in (1e-6, 1e-3, 1.0, 100.0, 30000.0):
        vectors += [[rng.gauss(0, scale) for _ in range(768)] for _ in range(50)]
    vectors += [[struct.unpack("<d", rng.randbytes(8))[0] for _ in range(64)] for _ in range(200)]
    for vector in vectors:
        expected = db.encode_half_python(vector)
        assert compiled(vector) == expected, vector
    # the random bit patterns above reach every refusal too
    assert any(db.encode_half_python(v) is None for v in vectors[-200:])


@pytest.mark.skipif(compiled is None, reason="not compiled")
@pytest.mark.parametrize("bad", [65520.0, -65520.0, 1e300, math.inf, -math.inf, math.nan])
def test_it_refuses_what_half_precision_cannot_hold(bad: float) -> None:
    assert compiled is not None
    assert compiled([0.5, bad]) is None
    assert db.encode_half_python([0.5, bad]) is None


@pytest.mark.skipif(compiled is None, reason="not compiled")
def test_it_refuses_what_is_not_a_number_or_too_long() -> None:
    assert compiled is not None
    with pytest.raises(TypeError):
        compiled([0.5, "0.5"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        compiled(0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="16000"):
        compiled([0.0] * 16001)
