"""Writes small, valid GGUF (version 3) files for tests, from the format's published layout:

    magic "GGUF" | u32 version | u64 tensor_count | u64 metadata_kv_count
    metadata: (string key, u32 value_type, value)*
    tensor infos: (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset)*
    padding to `general.alignment` (32 by default), then the tensor data, each tensor's offset
    (relative to the start of the data) a multiple of the alignment.

Strings are a u64 length and UTF-8 bytes; everything is little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32

# Metadata value types (the ones tests need).
TYPE_UINT32 = 4
TYPE_STRING = 8
TYPE_UINT64 = 10

# ggml tensor types: F32 = 0 (4 bytes per element), F16 = 1.
GGML_F32 = 0
GGML_F16 = 1
_ELEMENT_SIZE = {GGML_F32: 4, GGML_F16: 2}


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]
    data: bytes
    ggml_type: int = GGML_F32

    def __post_init__(self) -> None:
        count = 1
        for dim in self.dims:
            count *= dim
        if len(self.data) != count * _ELEMENT_SIZE[self.ggml_type]:
            raise ValueError(f"tensor {self.name}: {len(self.data)} bytes for dims {self.dims}")


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(value: str | int) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", TYPE_STRING) + _string(value)
    if 0 <= value < 2**32:
        return struct.pack("<II", TYPE_UINT32, value)
    return struct.pack("<IQ", TYPE_UINT64, value)


def _pad(length: int, alignment: int) -> int:
    return (alignment - length % alignment) % alignment


def build_gguf(
    tensors: Sequence[Tensor], metadata: Mapping[str, str | int] | None = None, alignment: int = DEFAULT_ALIGNMENT
) -> bytes:
    """A GGUF file holding `tensors` in order and `metadata` (general.alignment added if not default)."""
    meta = dict(metadata or {})
    if alignment != DEFAULT_ALIGNMENT:
        meta["general.alignment"] = alignment
    head = bytearray(GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(meta)))
    for key, value in meta.items():
        head += _string(key) + _value(value)
    offset = 0
    offsets = []
    for tensor in tensors:
        offsets.append(offset)
        head += _string(tensor.name) + struct.pack("<I", len(tensor.dims))
        head += b"".join(struct.pack("<Q", dim) for dim in tensor.dims)
        head += struct.pack("<IQ", tensor.ggml_type, offset)
        offset += len(tensor.data) + _pad(len(tensor.data), alignment)
    head += b"\0" * _pad(len(head), alignment)
    body = bytearray()
    for tensor, start in zip(tensors, offsets, strict=True):
        assert len(body) == start
        body += tensor.data + b"\0" * _pad(len(tensor.data), alignment)
    return bytes(head + body)


def data_start(blob: bytes) -> int:
    """Where the tensor data of a file made by build_gguf starts (for tests' expectations)."""
    alignment = DEFAULT_ALIGNMENT
    pos = 4 + 4
    tensor_count, kv_count = struct.unpack_from("<QQ", blob, pos)
    pos += 16

    def read_string(at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", blob, at)
        return blob[at + 8 : at + 8 + length].decode(), at + 8 + length

    for _ in range(kv_count):
        key, pos = read_string(pos)
        (kind,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if kind == TYPE_STRING:
            _, pos = read_string(pos)
        elif kind == TYPE_UINT32:
            (number,) = struct.unpack_from("<I", blob, pos)
            pos += 4
            if key == "general.alignment":
                alignment = number
        elif kind == TYPE_UINT64:
            pos += 8
        else:
            raise ValueError(f"value type {kind} not written by build_gguf")
    for _ in range(tensor_count):
        _, pos = read_string(pos)
        (n_dims,) = struct.unpack_from("<I", blob, pos)
        pos += 4 + 8 * n_dims + 4 + 8
    return pos + _pad(pos, alignment)
