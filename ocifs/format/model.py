"""The value types a parsed or built artifact is made of (docs/spec.md §4–§6).

Owns: :class:`Descriptor`, :class:`ChunkIndex` (with the offset → chunk-span mapping a read
needs), :class:`ChunkedFile`, :class:`PlainFile`, :class:`Artifact`, and canonical JSON. The
constructors trust their arguments: values from untrusted bytes come through
:mod:`ocifs.format.parse`, values to publish through :mod:`ocifs.format.build`, which validate.
Must not: do I/O or validate untrusted input.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

from ocifs.digest import Digest
from ocifs.format.media import (
    ANNOTATION_TITLE,
    DEFAULT_FILE_MEDIA_TYPE,
    EMPTY_JSON_DIGEST,
    INDEX_SCHEMA_VERSION,
    KIND_CHUNKED,
    KIND_PLAIN,
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_EMPTY,
)

# =================================================================================================
# Value types
# =================================================================================================


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    # A copy: a proxy of the caller's dict would still change when the caller changes it.
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about one blob.

    ``annotations`` is read-only; it takes part in equality but not in the hash.
    """

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", _frozen_mapping(self.annotations))

    @property
    def title(self) -> str | None:
        """The ``org.opencontainers.image.title`` annotation, if any."""
        return self.annotations.get(ANNOTATION_TITLE)

    def to_json(self) -> dict[str, Any]:
        """The descriptor as a JSON object (``annotations`` omitted when empty)."""
        obj: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return obj


EMPTY_CONFIG_DATA = b"{}"
"""The bytes of the OCI empty blob (``application/vnd.oci.empty.v1+json``): what push uploads as
the config when the user supplies none, since a registry refuses a manifest whose config blob it
does not hold (``MANIFEST_BLOB_UNKNOWN``)."""

EMPTY_DESCRIPTOR = Descriptor(MEDIA_TYPE_EMPTY, EMPTY_JSON_DIGEST, 2)
"""The OCI empty descriptor (the blob ``{}``): the config unless the user supplies one."""


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk as a chunk index lists it: bytes ``[offset, offset + size)`` of the file."""

    digest: Digest
    size: int
    offset: int

    @property
    def end(self) -> int:
        """The file offset just past this chunk."""
        return self.offset + self.size


@dataclass(frozen=True, slots=True)
class Span:
    """The slice ``[start, end)`` of chunk number ``chunk_index`` (offsets within the chunk)."""

    chunk_index: int
    chunk: ChunkRef
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class ChunkIndex:
    """A chunk index (spec §4): a file's size, media type, optional sha256 and its chunks.

    Construct it with :func:`build_chunk_index` or :func:`parse_chunk_index`, which validate
    the layout (contiguous chunks from offset 0 summing to ``size``); the constructor trusts
    its arguments and the range methods rely on that layout.
    """

    size: int
    file_media_type: str
    file_digest: Digest | None
    chunks: tuple[ChunkRef, ...]
    _offsets: tuple[int, ...] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_offsets", tuple(c.offset for c in self.chunks))

    def to_json(self) -> dict[str, Any]:
        """The index as a JSON object (``fileDigest`` omitted when unknown)."""
        obj: dict[str, Any] = {
            "schemaVersion": INDEX_SCHEMA_VERSION,
            "mediaType": MEDIA_TYPE_CHUNK_INDEX,
            "size": self.size,
            "fileMediaType": self.file_media_type,
            "chunks": [{"digest": str(c.digest), "size": c.size, "offset": c.offset} for c in self.chunks],
        }
        if self.file_digest is not None:
            obj["fileDigest"] = str(self.file_digest)
        return obj

    def to_bytes(self) -> bytes:
        """The canonical blob: compact UTF-8 JSON with sorted keys. Its sha256 names the index."""
        return canonical_json(self.to_json())

    def spans(self, offset: int, length: int) -> list[Span]:
        """The chunk slices covering bytes ``[offset, offset + length)``, in file order.

        The range is clamped at the end of the file; ``offset >= size`` or ``length == 0``
        gives ``[]``. Every span is non-empty and they are contiguous. Negative arguments are a
        ``ValueError``. Cost: one bisection plus one step per chunk touched.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length ({offset}, {length})")
        end = min(offset + length, self.size)
        if offset >= end:
            return []
        number = bisect_right(self._offsets, offset) - 1
        spans: list[Span] = []
        position = offset
        while position < end:
            chunk = self.chunks[number]
            start = position - chunk.offset
            stop = min(chunk.size, end - chunk.offset)
            spans.append(Span(number, chunk, start, stop))
            position = chunk.offset + stop
            number += 1
        return spans


@dataclass(frozen=True, slots=True)
class ChunkedFile:
    """A file stored as a chunk-index layer followed by its chunk layers.

    ``size`` and ``file_digest`` come from the index descriptor's annotations; ``chunks`` are the
    chunk layers in file order, whose sizes are known to sum to ``size``.
    """

    path: str
    size: int
    file_digest: Digest | None
    index: Descriptor
    chunks: tuple[Descriptor, ...]

    @property
    def kind(self) -> str:
        """``"chunked"`` (what ``user.ocifs.kind`` shows; a :class:`PlainFile` has its own)."""
        return KIND_CHUNKED


@dataclass(frozen=True, slots=True)
class PlainFile:
    """A file stored as one ordinary layer with a title (as ORAS writes it); also a builder input.

    ``kind`` is ``"plain"``, or ``"oras-directory"`` for an ORAS directory layer (spec R20): the
    gzip-compressed tar of a directory, presented unpacked by nothing, at ``<title>.tar.gz``.
    The builder writes only ``"plain"``.
    """

    path: str
    size: int
    digest: Digest
    media_type: str = DEFAULT_FILE_MEDIA_TYPE
    kind: str = KIND_PLAIN


File: TypeAlias = ChunkedFile | PlainFile
"""A file of an artifact, as :func:`parse_manifest` lists it."""


@dataclass(frozen=True, slots=True)
class ChunkedEntry:
    """Builder input: a file at ``path`` stored chunked as described by ``index``."""

    path: str
    index: ChunkIndex


@dataclass(frozen=True, slots=True)
class Artifact:
    """A parsed manifest: its files, the layers it ignored, and its metadata.

    ``manifest_digest`` is the sha256 of the manifest bytes parsed (``None`` only when built by
    hand). ``files`` keep manifest order; ``skipped`` are layers that are neither ours nor titled
    (R11); ``unrecognised`` says, one line each, why a layer was not recognised and was skipped
    (R19: a media type with parameters, a digest algorithm a reader cannot verify).
    """

    manifest_digest: Digest | None
    media_type: str
    artifact_type: str | None
    config: Descriptor
    files: tuple[File, ...]
    skipped: tuple[Descriptor, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    unrecognised: tuple[str, ...] = ()
    # The split layout (spec §14): the slices' descriptors, in order; empty for one manifest.
    slices: tuple[Descriptor, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", _frozen_mapping(self.annotations))

    @property
    def total_size(self) -> int:
        """The sum of the files' sizes."""
        return sum(f.size for f in self.files)


def canonical_json(obj: object) -> bytes:
    """Compact UTF-8 JSON with sorted keys: the one serialisation ocifs writes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
