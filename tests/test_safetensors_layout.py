"""Read-ahead hints from safetensors headers: exact for good headers, silent (None) for bad ones."""

from __future__ import annotations

import json
import struct

from hypothesis import given
from hypothesis import strategies as st

from ocifs.format import safetensors as safetensors_layout
from ocifs.format.safetensors import MAX_HEADER, boundaries, header_end


def header(entries: dict[str, object], pad: int = 0) -> bytes:
    body = json.dumps(entries).encode() + b" " * pad
    return struct.pack("<Q", len(body)) + body


def test_boundaries_are_the_header_end_and_every_tensor_end() -> None:
    head = header(
        {
            "__metadata__": {"format": "pt"},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]},
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "empty": {"dtype": "F32", "shape": [0], "data_offsets": [32, 32]},
        }
    )
    start = len(head)
    assert header_end(head[:8]) == start
    assert boundaries(head + bytes(32), start + 32) == (start, start + 16, start + 32)
    assert boundaries(head, start + 32) == (start, start + 16, start + 32)  # the data need not be here
    assert safetensors_layout.applies_to("models/x.safetensors")
    assert not safetensors_layout.applies_to("x.safetensors.json")


def test_broken_or_hostile_headers_give_no_hints() -> None:
    good = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    size = len(header(good)) + 16
    assert boundaries(header(good), size - 1) is None  # a tensor past the end of the file
    assert boundaries(header(good)[:-1], size) is None  # header cut short
    assert boundaries(b"\x01\x00", size) is None  # not even a length
    assert header_end(struct.pack("<Q", MAX_HEADER + 1)) is None  # too large to parse for hints
    assert header_end(struct.pack("<Q", 2**63)) is None
    for entries in (
        {"a": {"data_offsets": [16, 0]}},  # reversed
        {"a": {"data_offsets": [-1, 4]}},
        {"a": {"data_offsets": [0, 4.5]}},
        {"a": {"data_offsets": [0, True]}},
        {"a": {"data_offsets": [0]}},
        {"a": {"shape": [4]}},
        {"a": [0, 4]},
    ):
        assert boundaries(header(entries), 1 << 20) is None, entries
    for body in (b"[1, 2]", b"not json", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000):
        assert boundaries(struct.pack("<Q", len(body)) + body, 1 << 30) is None


@given(st.binary(max_size=512), st.integers(min_value=0, max_value=1 << 40))
def test_any_bytes_give_hints_or_none_and_never_raise(data: bytes, size: int) -> None:
    result = boundaries(data, size)
    assert result is None or (list(result) == sorted(set(result)) and all(0 < b <= size for b in result))
