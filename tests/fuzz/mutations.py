"""Hypothesis strategies for fuzz inputs: a seed changed in a few places
(bits flipped, bytes set, cut, inserted or deleted, boundary integers written
over it), or bytes from nothing."""

from __future__ import annotations

from hypothesis import strategies as st

#: integers at the edges where parsers go wrong, as 1, 2, 4 or 8 little-endian bytes
BOUNDARIES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1)


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(("flip", "set", "integer", "insert", "delete", "cut")))
        if not data:
            data += draw(st.binary(min_size=1, max_size=16))
        elif kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "integer":
            width = draw(st.sampled_from((1, 2, 4, 8)))
            value = draw(st.sampled_from(BOUNDARIES)) & ((1 << 8 * width) - 1)
            data[at : at + width] = value.to_bytes(width, "little")
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 32))]
        else:
            del data[at:]
    return bytes(data)


def inputs(seeds: list[bytes]):
    return st.one_of(mutated(seeds), st.binary(max_size=256))
