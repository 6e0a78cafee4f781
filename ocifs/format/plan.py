"""The chunk-size planner: the smallest chunk size that keeps a manifest within its layer
budget and the 4 MiB manifest limit (docs/spec.md §7).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    MAX_FILE_SIZE,
    MAX_INDEX_BYTES,
    MAX_MANIFEST_BYTES,
    MEDIA_TYPE_CHUNK,
    MEDIA_TYPE_CHUNK_INDEX,
    MIN_CHUNK_SIZE,
)
from ocifs.format.model import Descriptor, canonical_json

_MANIFEST_RESERVE = 64 * 1024


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
