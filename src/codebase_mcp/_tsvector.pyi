from collections.abc import Sequence

def chunk_vectors(
    sections: Sequence[tuple[str, int]], /
) -> tuple[bytes, bytes, int, tuple[str, ...]] | None: ...
