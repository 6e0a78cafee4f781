"""Where the records of a safetensors file end: hints that keep read-ahead inside a tensor.

A safetensors file is an 8-byte little-endian header length ``N``, a JSON header of ``N`` bytes
mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the end of the header; ``"__metadata__"`` maps strings to strings), then the tensor
bytes. A loader that wants one tensor reads the header, then that tensor's range: read-ahead
past the tensor's end fetches chunks nobody asked for.

Hints only: a malformed, hostile or oversized header gives no hints (``None``), never an error,
and the boundaries returned are only ever used to stop read-ahead early. Pure functions, no I/O.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

#: File names this module knows how to read.
SUFFIX = ".safetensors"

#: Headers larger than this are not parsed for hints (the format allows up to 100 MB; real
#: models have a few KiB to a few MiB of header, and parsing must stay cheap).
MAX_HEADER = 16 * 1024 * 1024

_LENGTH = struct.Struct("<Q")


def applies_to(path: str) -> bool:
    """Whether ``path`` names a safetensors file (by its suffix, as loaders do)."""
    return path.endswith(SUFFIX)


def header_end(prefix: bytes | memoryview) -> int | None:
    """The offset where the tensor data starts (``8 + N``), from at least the file's first 8
    bytes; ``None`` if there are fewer or the header is larger than :data:`MAX_HEADER`."""
    if len(prefix) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(prefix, 0)
    if not 2 <= length <= MAX_HEADER:
        return None
    return _LENGTH.size + int(length)


def boundaries(head: bytes | memoryview, file_size: int) -> tuple[int, ...] | None:
    """Sorted file offsets where a record ends: the header's end and every tensor's end.

    ``head`` is the file's first :func:`header_end` bytes (or more). ``None`` when it is not a
    well-formed header of a file of ``file_size`` bytes (any tensor outside the file, offsets
    that are not non-negative integers in order, JSON that is not an object).
    """
    end = header_end(head)
    if end is None or len(head) < end or end > file_size:
        return None
    try:
        header = json.loads(bytes(head[_LENGTH.size : end]))
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, Mapping):
        return None
    ends = {end}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, Mapping) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
            or end + offsets[1] > file_size
        ):
            return None
        ends.add(end + offsets[1])
    return tuple(sorted(ends))
