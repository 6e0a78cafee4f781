"""The chunk-size planner: the smallest chunk size that keeps a manifest within its layer
budget and the 4 MiB manifest limit (docs/spec.md §7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ocifs.errors import FormatError
from ocifs.format.build import is_chunked
from ocifs.format.media import (
    ANNOTATION_DIGEST,
    ANNOTATION_PATH,
    ANNOTATION_SIZE,
    ANNOTATION_TITLE,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_LAYER_BUDGET,
    EMPTY_BLOB_DIGEST,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_FILE_SIZE,
    MAX_INDEX_BYTES,
    MAX_LAYERS,
    MAX_MANIFEST_BYTES,
    MAX_SLICES,
    MAX_SLICES_TOTAL_BYTES,
    MEDIA_TYPE_CHUNK,
    MEDIA_TYPE_CHUNK_INDEX,
    MIN_CHUNK_SIZE,
    SPLIT_CHUNK_SIZE,
)
from ocifs.format.model import Descriptor, canonical_json

_MANIFEST_RESERVE = 64 * 1024
# Chunks one chunk index can list within the reader's 8 MiB (R1, R7): an entry is at most
# {"digest":"sha256:<64>","offset":<19 digits>,"size":<10 digits>}, 131 bytes and a comma.
MAX_CHUNKS_PER_INDEX = min(MAX_CHUNKS, (MAX_INDEX_BYTES - 1024) // 132)


def plan_chunk_size(
    files: Sequence[tuple[str, int]],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    layer_budget: int = DEFAULT_LAYER_BUDGET,
    grow: bool = True,
) -> int:
    """The chunk size a pusher should use for ``files`` (``(path, size)`` pairs).

    Starts at ``chunk_size`` and doubles (capped at 1 GiB) until the manifest fits both the
    layer budget and, by an upper-bound estimate, 4 MiB less a 64 KiB reserve. Files of at most
    one chunk are counted as plain layers (:func:`is_chunked`). Raises :class:`FormatError` when
    even 1 GiB chunks do not fit — or, with ``grow=False`` (the user chose the chunk size), when
    ``chunk_size`` itself does not.
    """
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    escaped = [(len(canonical_json(path)) - 2, size) for path, size in files]
    while True:
        layers, estimate = _estimate(escaped, chunk_size)
        if layers <= layer_budget and estimate <= MAX_MANIFEST_BYTES - _MANIFEST_RESERVE:
            return chunk_size
        if chunk_size >= MAX_CHUNK_SIZE or not grow:
            if layers > layer_budget:
                why = f"{layers} layers, above the layer budget of {layer_budget}"
            else:
                why = f"~{estimate} manifest bytes, above the {MAX_MANIFEST_BYTES}-byte manifest limit"
            with_chunks = f"even with {chunk_size}-byte chunks" if grow else f"with {chunk_size}-byte chunks"
            raise FormatError(
                f"{len(files)} file(s) need {why} {with_chunks}",
                hint="push the files as several artifacts or raise the layer budget",
            )
        chunk_size = min(chunk_size * 2, MAX_CHUNK_SIZE)


def _estimate(escaped: Sequence[tuple[int, int]], chunk_size: int) -> tuple[int, int]:
    """(layers, upper bound of their manifest bytes) of files given as (escaped path bytes, size)."""
    layers, estimate = 0, 0
    for path_bytes, size in escaped:
        if is_chunked(size, chunk_size):
            count = -(-size // chunk_size)
            layers += 1 + count
            estimate += _INDEX_DESCRIPTOR_BYTES + path_bytes
            estimate += count * (_CHUNK_DESCRIPTOR_BYTES + path_bytes + len(str(chunk_size)))
        else:
            layers += 1
            estimate += _PLAIN_DESCRIPTOR_BYTES + path_bytes
    return layers, estimate


@dataclass(frozen=True, slots=True)
class Layout:
    """A push's plan: its chunk size and how many manifests (1, or the slices of spec §14)."""

    chunk_size: int
    manifests: int


def plan_layout(
    files: Sequence[tuple[str, int]],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    layer_budget: int = DEFAULT_LAYER_BUDGET,
    grow: bool = True,
) -> Layout:
    """One manifest when it fits (growing the chunk size up to 64 MiB, :data:`SPLIT_CHUNK_SIZE`,
    when ``grow``), else the split layout of spec §14 at that chunk size. Beyond it the chunk
    size still doubles (to 1 GiB) when ``grow`` and a file would have more chunks than one index
    may hold (99,999, 8 MiB) or the artifact more layers, manifests or manifest bytes than a
    reader takes. FormatError when no chunk size allowed fits; the manifest count is an estimate
    (upper-bound descriptor sizes), :func:`ocifs.format.build.build_artifact` makes the slices."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    escaped = [(len(canonical_json(path)) - 2, size) for path, size in files]
    room = MAX_MANIFEST_BYTES - _MANIFEST_RESERVE
    while True:
        layers, estimate = _estimate(escaped, chunk_size)
        if layers <= layer_budget and estimate <= room:
            return Layout(chunk_size, 1)
        if grow and chunk_size < SPLIT_CHUNK_SIZE:
            chunk_size = min(chunk_size * 2, SPLIT_CHUNK_SIZE)
            continue
        # Slices filled in order: count-bound or byte-bound, plus one for where they meet.
        slices = max(-(-layers // layer_budget), -(-estimate // room)) + 1
        most_chunks = max((-(-size // chunk_size) for _, size in escaped if is_chunked(size, chunk_size)), default=0)
        problems = []
        if most_chunks > MAX_CHUNKS_PER_INDEX:
            problems.append(f"a file of {most_chunks} chunks, above the {MAX_CHUNKS_PER_INDEX} one chunk index holds")
        if layers > MAX_LAYERS:
            problems.append(f"{layers} layers, above the {MAX_LAYERS} readers accept")
        if slices > MAX_SLICES:
            problems.append(f"~{slices} manifests of at most {layer_budget} layers, above the limit of {MAX_SLICES}")
        if estimate > MAX_SLICES_TOTAL_BYTES - slices * _MANIFEST_RESERVE:
            problems.append(f"~{estimate} manifest bytes, above the {MAX_SLICES_TOTAL_BYTES} readers fetch")
        if not problems:
            return Layout(chunk_size, max(slices - 1, 2))
        if not grow or chunk_size >= MAX_CHUNK_SIZE:
            with_chunks = f"even with {chunk_size}-byte chunks" if grow else f"with {chunk_size}-byte chunks"
            raise FormatError(
                f"{len(files)} file(s) need {problems[0]} {with_chunks}",
                hint="push the files as several artifacts or raise the layer budget",
            )
        chunk_size = min(chunk_size * 2, MAX_CHUNK_SIZE)


def _descriptor_bytes(media_type: str, annotations: dict[str, str], size: int) -> int:
    """Bytes of a descriptor in a canonical manifest, with its separating comma."""
    return len(canonical_json(Descriptor(media_type, EMPTY_BLOB_DIGEST, size, annotations).to_json())) + 1


# Upper bounds of each kind of descriptor without its escaped path (plan_chunk_size adds that):
# a chunk's size digits are added per chunk size tried (hence its "0" taken off); an index carries
# the longest size annotation, a file digest and the largest index size; a plain layer a long
# media type (image-spec allows 255 characters) and the largest size.
_CHUNK_DESCRIPTOR_BYTES = _descriptor_bytes(MEDIA_TYPE_CHUNK, {ANNOTATION_TITLE: ".part-00000"}, 0) - 1
_INDEX_DESCRIPTOR_BYTES = _descriptor_bytes(
    MEDIA_TYPE_CHUNK_INDEX,
    {ANNOTATION_PATH: "", ANNOTATION_SIZE: str(MAX_FILE_SIZE), ANNOTATION_DIGEST: str(EMPTY_BLOB_DIGEST)},
    MAX_INDEX_BYTES,
)
_PLAIN_DESCRIPTOR_BYTES = _descriptor_bytes("application/" + "x" * 243, {ANNOTATION_TITLE: ""}, MAX_FILE_SIZE)
