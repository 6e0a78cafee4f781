"""The ocifs wire format of docs/spec.md, both ways: build it, parse and validate it, map reads.

Owns: the media types, annotation keys and limits of the format; the value types a parsed
artifact is made of (:class:`Descriptor`, :class:`ChunkIndex`, :class:`ChunkedFile`,
:class:`PlainFile`, :class:`Artifact`); canonical serialisation of chunk indexes and manifests;
parsing of untrusted manifests and chunk indexes, checking every reader rule of docs/spec.md §8
(each check carries its rule number, ``R1``…``R17``, in a comment); mapping a byte range of a
file to slices of its chunks.

Must not: do I/O, touch the network, log, read configuration, or import anything but the leaves
``ocifs.errors`` and ``ocifs.digest`` and the standard library. Every failure on untrusted
input is a :class:`~ocifs.errors.FormatError` with one line naming the culprit (the layer and
the file path), except a chunk-index blob whose bytes do not match its descriptor digest, which
is an :class:`~ocifs.errors.IntegrityError`. Misuse by a caller (negative offsets) is a
``ValueError``.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

from ocifs.digest import Digest
from ocifs.errors import FormatError, IntegrityError, InvalidDigest

# --- Media types (spec §3) --------------------------------------------------------------------

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_CHUNK_INDEX = "application/vnd.ocifs.chunk-index.v1+json"
MEDIA_TYPE_CHUNK = "application/vnd.ocifs.chunk.v1"
MEDIA_TYPE_EMPTY = "application/vnd.oci.empty.v1+json"
DEFAULT_ARTIFACT_TYPE = "application/vnd.ocifs.artifact.v1"
DEFAULT_FILE_MEDIA_TYPE = "application/octet-stream"

# --- Annotation keys (spec §5) ----------------------------------------------------------------

ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_PATH = "dev.ocifs.path"
ANNOTATION_SIZE = "dev.ocifs.size"
ANNOTATION_DIGEST = "dev.ocifs.digest"

# --- Versions -----------------------------------------------------------------------------------

MANIFEST_SCHEMA_VERSION = 2
INDEX_SCHEMA_VERSION = 1

# --- Limits (spec §7; each with the fact behind it) -----------------------------------------------

# distribution, zot, Harbor and oras-go refuse manifests above 4 MiB (HTTP 413).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# An index entry (~120 bytes) is smaller than the chunk's manifest descriptor (~250 bytes with a
# 40-byte path), so the index of any manifest that fits 4 MiB is under 4 MiB: 8 MiB is headroom.
MAX_INDEX_BYTES = 8 * 1024 * 1024
# Pushers keep a manifest within this many layers by growing the chunk size; ECR refuses images
# at a few hundred layers, so the pusher makes it configurable (../shared/registries.md).
DEFAULT_LAYER_BUDGET = 10_000
# Readers' hard cap: bounds parsing work; a 4 MiB manifest holds at most ~20,000 descriptors anyway.
MAX_LAYERS = 100_000
# One chunk-index layer plus its chunks fit the reader's layer cap; it also keeps part numbers
# within five digits (00000..99998), so `cat path.part-*` always sorts them right.
MAX_CHUNKS = MAX_LAYERS - 1
# 16 MiB: a lazy read fetches little; large enough for line-rate throughput; far below the
# ~100 MB single uploads some registries fail (Docker Hub, Harbor behind proxies).
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
MIN_CHUNK_SIZE = 1
# Bounds a reader's buffer per chunk; registries cope badly with single uploads of >= 100 MB.
MAX_CHUNK_SIZE = 1024 * 1024 * 1024
# Sizes are signed 64-bit integers in image-spec and in every registry implementation.
MAX_FILE_SIZE = 2**63 - 1
MAX_PATH_BYTES = 4096  # Linux PATH_MAX
MAX_COMPONENT_BYTES = 255  # Linux NAME_MAX
MAX_PATH_DEPTH = 32
# The part number is zero padded to this many digits (more only if a count ever needs it).
PART_DIGITS = 5

# --- Well-known blobs ----------------------------------------------------------------------------

EMPTY_JSON_DIGEST = Digest("sha256", "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
EMPTY_BLOB_DIGEST = Digest("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
_EMPTY_BLOB_DIGESTS = frozenset(
    {
        EMPTY_BLOB_DIGEST,
        Digest(
            "sha512",
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
            "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
        ),
    }
)

# image-spec schema/defs-descriptor.json "mediaType" pattern (RFC 6838 type/subtype names).
_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]{0,18}")  # ASCII only: \d would accept other scripts' digits
# C0 controls, DEL, C1 controls, and the backslash (a separator on Windows clients such as oras).
_FORBIDDEN_PATH_CHARS_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_EXCERPT = 80


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

    @classmethod
    def from_json(cls, obj: object, *, where: str = "descriptor") -> Descriptor:
        """Validate and convert a parsed JSON descriptor (rule R6); unknown fields are ignored.

        Raises :class:`FormatError` whose message starts with ``where``.
        """
        d = _object(obj, where)  # R3: only the fields below are read; any other is ignored
        media_type = _media_type(d.get("mediaType"), f"{where} mediaType")
        digest = _digest(d.get("digest"), f"{where} digest")
        size = _integer(d.get("size"), f"{where} size", 0, MAX_FILE_SIZE)
        annotations = _annotations(d.get("annotations"), f"{where} annotations")
        return cls(media_type, digest, size, annotations)


EMPTY_CONFIG_DATA = b"{}"
"""The bytes of the OCI empty blob (``application/vnd.oci.empty.v1+json``)."""

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

    @property
    def file_offset(self) -> int:
        """Where this slice starts in the file."""
        return self.chunk.offset + self.start


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

    def chunk_at(self, offset: int) -> int:
        """The number of the chunk holding byte ``offset``; ``ValueError`` outside ``[0, size)``."""
        if not 0 <= offset < self.size:
            raise ValueError(f"offset {offset} outside the file (size {self.size})")
        return bisect_right(self._offsets, offset) - 1

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

    def layout(self) -> ChunkIndex:
        """The chunk layout the manifest alone implies (offsets are the running sums of sizes).

        Readers may serve reads with it before (or without) fetching the index blob;
        :func:`parse_chunk_index` guarantees the index agrees. ``file_media_type`` is
        ``application/octet-stream`` because only the index blob knows the real one.
        """
        refs: list[ChunkRef] = []
        offset = 0
        for chunk in self.chunks:
            refs.append(ChunkRef(chunk.digest, chunk.size, offset))
            offset += chunk.size
        return ChunkIndex(self.size, DEFAULT_FILE_MEDIA_TYPE, self.file_digest, tuple(refs))


@dataclass(frozen=True, slots=True)
class PlainFile:
    """A file stored as one ordinary layer with a title (as ORAS writes it); also a builder input."""

    path: str
    size: int
    digest: Digest
    media_type: str = DEFAULT_FILE_MEDIA_TYPE


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
    hand). ``files`` keep manifest order; ``skipped`` are layers that are neither ours nor titled.
    """

    manifest_digest: Digest | None
    media_type: str
    artifact_type: str | None
    config: Descriptor
    files: tuple[File, ...]
    skipped: tuple[Descriptor, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", _frozen_mapping(self.annotations))

    def find(self, path: str) -> File | None:
        """The file at ``path``, or ``None`` (linear scan; index the files yourself for many)."""
        for f in self.files:
            if f.path == path:
                return f
        return None

    @property
    def total_size(self) -> int:
        """The sum of the files' sizes."""
        return sum(f.size for f in self.files)


# =================================================================================================
# Paths and part titles
# =================================================================================================


def validate_path(path: object, where: str = "path") -> str:
    """Return ``path`` if it is a valid artifact path (rule R13), else raise :class:`FormatError`.

    Valid: a non-empty string of ``/``-separated components, relative, none of them empty,
    ``.`` or ``..``; at most 32 components of at most 255 UTF-8 bytes each, 4096 bytes in all;
    no NUL, C0/C1 control characters, DEL or backslash; encodable as UTF-8 (no lone surrogates).
    """
    if not isinstance(path, str):
        raise FormatError(f"{where}: must be a string, got {_json_type(path)}")
    shown = _show(path)
    if not path:
        raise FormatError(f"{where}: path is empty")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{where}: path {shown} is not valid Unicode (lone surrogate)") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise FormatError(f"{where}: path {shown} is longer than {MAX_PATH_BYTES} bytes")
    bad = _FORBIDDEN_PATH_CHARS_RE.search(path)
    if bad is not None:
        what = "backslash" if bad.group() == "\\" else f"control character {bad.group()!r}"
        raise FormatError(f"{where}: path {shown} contains a {what}")
    if path.startswith("/"):
        raise FormatError(f"{where}: path {shown} is absolute")
    components = path.split("/")
    if len(components) > MAX_PATH_DEPTH:
        raise FormatError(f"{where}: path {shown} is deeper than {MAX_PATH_DEPTH} levels")
    for component in components:
        if component == "":
            raise FormatError(f"{where}: path {shown} has an empty component")
        if component in (".", ".."):
            raise FormatError(f"{where}: path {shown} has a {component!r} component")
        if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise FormatError(f"{where}: path {shown} has a component longer than {MAX_COMPONENT_BYTES} bytes")
    return path


def check_paths(paths: Sequence[str], where: str = "artifact") -> None:
    """Rule R12: no path twice, and no path that is also a directory of another path.

    The paths are assumed valid (:func:`validate_path`). Raises :class:`FormatError`.
    """
    files: set[str] = set()
    directories: set[str] = set()
    for path in paths:
        if path in files:
            raise FormatError(f"{where}: path {_show(path)} appears twice")
        files.add(path)
        slash = path.find("/")
        while slash != -1:
            directories.add(path[:slash])
            slash = path.find("/", slash + 1)
    clash = files & directories
    if clash:
        path = min(clash)
        raise FormatError(f"{where}: {_show(path)} is both a file and a directory of another file")


def part_title(path: str, n: int, total_chunks: int) -> str:
    """The title of chunk ``n`` (from 0) of ``total_chunks``: ``<path>.part-NNNNN``.

    Five digits, more only when ``total_chunks - 1`` needs more, so that every part name of a
    file has the same width and a shell glob lists them in order.
    """
    if not 0 <= n < total_chunks:
        raise ValueError(f"part {n} outside 0..{total_chunks - 1}")
    width = max(PART_DIGITS, len(str(total_chunks - 1)))
    return f"{path}.part-{n:0{width}d}"


# =================================================================================================
# Building (pusher side)
# =================================================================================================


def canonical_json(obj: object) -> bytes:
    """Compact UTF-8 JSON with sorted keys: the one serialisation ocifs writes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def fixed_layout(size: int, chunk_size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of each fixed-size chunk of a ``size``-byte file (the last may be short)."""
    if size < 0 or chunk_size < 1:
        raise ValueError(f"bad size {size} or chunk size {chunk_size}")
    return [(offset, min(chunk_size, size - offset)) for offset in range(0, size, chunk_size)]


def is_chunked(size: int, chunk_size: int) -> bool:
    """The pusher's rule (spec §6): files larger than one chunk are chunked, others are plain."""
    return size > chunk_size


def build_chunk_index(
    size: int,
    chunks: Sequence[ChunkRef] | Sequence[tuple[Digest, int, int]],
    file_media_type: str = DEFAULT_FILE_MEDIA_TYPE,
    file_digest: Digest | None = None,
) -> ChunkIndex:
    """A validated :class:`ChunkIndex`; ``chunks`` are ChunkRefs or ``(digest, size, offset)``.

    Raises :class:`FormatError` if the result would break any rule a reader checks (R15, R16):
    chunk digests and ``file_digest`` must be sha256, chunks contiguous from 0, 1 B..1 GiB each,
    at most ``MAX_CHUNKS``, summing to ``size`` (1 .. 2**63-1).
    """
    refs = tuple(c if isinstance(c, ChunkRef) else ChunkRef(*c) for c in chunks)
    where = "chunk index"
    _integer(size, f"{where} size", 1, MAX_FILE_SIZE)
    _media_type(file_media_type, f"{where} fileMediaType")
    if file_digest is not None and file_digest.algorithm != "sha256":
        raise FormatError(f"{where}: fileDigest {file_digest} is not sha256")
    for number, ref in enumerate(refs):
        if ref.digest.algorithm != "sha256":
            raise FormatError(f"{where} chunk {number}: digest {ref.digest} is not sha256")
        _integer(ref.size, f"{where} chunk {number} size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        _integer(ref.offset, f"{where} chunk {number} offset", 0, MAX_FILE_SIZE)
    _check_layout(size, refs, where)
    return ChunkIndex(size, file_media_type, file_digest, refs)


def index_descriptor(path: str, index: ChunkIndex) -> Descriptor:
    """The chunk-index layer of the file at ``path`` (no title, by design: spec §5)."""
    blob = index.to_bytes()
    annotations = {ANNOTATION_PATH: path, ANNOTATION_SIZE: str(index.size)}
    if index.file_digest is not None:
        annotations[ANNOTATION_DIGEST] = str(index.file_digest)
    return Descriptor(MEDIA_TYPE_CHUNK_INDEX, Digest.of_bytes(blob), len(blob), annotations)


def chunk_descriptors(path: str, index: ChunkIndex) -> tuple[Descriptor, ...]:
    """The chunk layers of the file at ``path``, titled ``<path>.part-NNNNN``, in file order."""
    total = len(index.chunks)
    return tuple(
        Descriptor(MEDIA_TYPE_CHUNK, c.digest, c.size, {ANNOTATION_TITLE: part_title(path, n, total)})
        for n, c in enumerate(index.chunks)
    )


def chunked_file(path: str, index: ChunkIndex) -> ChunkedFile:
    """What a reader will parse for ``path`` stored with ``index`` (the descriptors to upload)."""
    return ChunkedFile(
        path, index.size, index.file_digest, index_descriptor(path, index), chunk_descriptors(path, index)
    )


def plain_descriptor(file: PlainFile) -> Descriptor:
    """The layer of a plain file: its blob, titled with its path."""
    return Descriptor(file.media_type, file.digest, file.size, {ANNOTATION_TITLE: file.path})


def build_manifest(
    files: Sequence[ChunkedEntry | PlainFile],
    *,
    config: Descriptor | None = None,
    artifact_type: str | None = DEFAULT_ARTIFACT_TYPE,
    annotations: Mapping[str, str] | None = None,
    layer_budget: int = DEFAULT_LAYER_BUDGET,
) -> bytes:
    """The canonical manifest bytes for ``files``, in the order given; its digest is their sha256.

    Each :class:`ChunkedEntry` becomes its chunk-index layer followed by its chunk layers; each
    :class:`PlainFile` one titled layer (a zero-byte file must name the empty blob). ``config``
    defaults to the OCI empty descriptor. ``artifact_type=None`` omits the field, which the
    image-spec allows only with a non-empty config. Raises :class:`FormatError` if a path is
    invalid or collides (with another file, a directory of another file, or a part title), if
    the layers exceed ``layer_budget`` (at most ``MAX_LAYERS``), or the bytes exceed 4 MiB.
    """
    if not 1 <= layer_budget <= MAX_LAYERS:
        raise ValueError(f"layer budget {layer_budget} outside 1..{MAX_LAYERS}")
    config = config if config is not None else EMPTY_DESCRIPTOR
    Descriptor.from_json(config.to_json(), where="config")  # what a reader will check (R6)
    if artifact_type is None and config == EMPTY_DESCRIPTOR:
        raise FormatError("artifactType is required when the config is the empty descriptor (image-spec)")
    paths = [validate_path(entry.path, f"file {_show(entry.path)}") for entry in files]
    check_paths(paths, "manifest")
    layers: list[Descriptor] = []
    titles: set[str] = set()
    for path, entry in zip(paths, files, strict=True):
        if isinstance(entry, ChunkedEntry):
            index = build_chunk_index(
                entry.index.size, entry.index.chunks, entry.index.file_media_type, entry.index.file_digest
            )
            file = chunked_file(path, index)
            layers.append(file.index)
            layers.extend(file.chunks)
            new_titles = [c.annotations[ANNOTATION_TITLE] for c in file.chunks]
        else:
            _media_type(entry.media_type, f"file {_show(path)} media type")
            if entry.media_type in (MEDIA_TYPE_CHUNK, MEDIA_TYPE_CHUNK_INDEX):
                raise FormatError(f"file {_show(path)}: a plain file cannot use the media type {entry.media_type}")
            _integer(entry.size, f"file {_show(path)} size", 0, MAX_FILE_SIZE)
            if entry.size == 0 and entry.digest not in _EMPTY_BLOB_DIGESTS:
                raise FormatError(f"file {_show(path)}: size 0 but digest {entry.digest} is not the empty blob's")
            layers.append(plain_descriptor(entry))
            new_titles = [path]
        for title in new_titles:
            # Old clients write every title as a file: two equal titles would overwrite each other.
            if title in titles:
                raise FormatError(f"file {_show(path)}: layer title {_show(title)} is used twice")
            titles.add(title)
    if len(layers) > layer_budget:
        raise FormatError(
            f"manifest would have {len(layers)} layers, above the layer budget of {layer_budget}",
            hint="use a larger chunk size (see plan_chunk_size) or raise the layer budget",
        )
    manifest: dict[str, Any] = {
        "schemaVersion": MANIFEST_SCHEMA_VERSION,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config.to_json(),
        "layers": [d.to_json() for d in layers],
    }
    if artifact_type is not None:
        manifest["artifactType"] = _media_type(artifact_type, "artifactType")
    if annotations:
        manifest["annotations"] = _annotations(dict(annotations), "manifest annotations")
    data = canonical_json(manifest)
    if len(data) > MAX_MANIFEST_BYTES:
        raise FormatError(
            f"manifest would be {len(data)} bytes, above the {MAX_MANIFEST_BYTES}-byte limit of registries",
            hint="use a larger chunk size or shorter paths",
        )
    return data


# Bytes a manifest needs besides its layers (config, artifactType, a few annotations): reserved by
# plan_chunk_size so that its estimate errs on the safe side.
_MANIFEST_RESERVE = 64 * 1024


def plan_chunk_size(
    files: Sequence[tuple[str, int]],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    layer_budget: int = DEFAULT_LAYER_BUDGET,
) -> int:
    """The chunk size a pusher should use for ``files`` (``(path, size)`` pairs).

    Starts at ``chunk_size`` and doubles (capped at 1 GiB) until the manifest fits both the
    layer budget and, by an upper-bound estimate, 4 MiB less a 64 KiB reserve. Files of at most
    one chunk are counted as plain layers (:func:`is_chunked`). Raises :class:`FormatError` when
    even 1 GiB chunks do not fit.
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
        if chunk_size >= MAX_CHUNK_SIZE:
            if layers > layer_budget:
                why = f"{layers} layers, above the layer budget of {layer_budget}"
            else:
                why = f"~{estimate} manifest bytes, above the {MAX_MANIFEST_BYTES}-byte manifest limit"
            raise FormatError(
                f"{len(files)} file(s) need {why} even with {MAX_CHUNK_SIZE}-byte chunks",
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


# =================================================================================================
# Parsing (reader side)
# =================================================================================================


def parse_manifest(data: bytes, *, max_layers: int = MAX_LAYERS) -> Artifact:
    """Parse and validate untrusted manifest bytes (rules R1–R13 of docs/spec.md §8).

    Returns the :class:`Artifact` with ``manifest_digest`` = sha256 of ``data``. Raises
    :class:`FormatError` (and nothing else, whatever the input) naming the culprit.
    """
    doc = _object(_load_json(data, "manifest", MAX_MANIFEST_BYTES), "manifest")  # R1, R2
    # R4: an OCI (or Docker schema 2, same shape) image manifest, nothing else.
    media_type = doc.get("mediaType", MEDIA_TYPE_MANIFEST)
    if media_type in (MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST) or (
        "manifests" in doc and "layers" not in doc
    ):
        raise FormatError(
            "manifest is an image index, not an image manifest",
            hint="name one of its manifests by digest",
        )
    if media_type not in (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST):
        raise FormatError(f"manifest mediaType {_show(media_type)} is not an OCI image manifest")
    version = doc.get("schemaVersion")
    if type(version) is not int or version != MANIFEST_SCHEMA_VERSION:
        raise FormatError(f"manifest schemaVersion {_show(version)} is not supported (expected 2)")
    # R5
    config = Descriptor.from_json(doc.get("config"), where="manifest config")
    artifact_type = doc.get("artifactType")
    if artifact_type is not None:
        artifact_type = _media_type(artifact_type, "manifest artifactType")
    annotations = _annotations(doc.get("annotations"), "manifest annotations")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise FormatError(f"manifest layers must be an array, got {_json_type(raw_layers)}")
    if len(raw_layers) > max_layers:
        raise FormatError(f"manifest has {len(raw_layers)} layers, above the limit of {max_layers}")
    layers = [Descriptor.from_json(obj, where=f"manifest layers[{i}]") for i, obj in enumerate(raw_layers)]  # R6

    files: list[File] = []
    skipped: list[Descriptor] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        where = f"manifest layers[{i}]"
        if layer.media_type == MEDIA_TYPE_CHUNK_INDEX:
            run_end = i + 1
            while run_end < len(layers) and layers[run_end].media_type == MEDIA_TYPE_CHUNK:
                run_end += 1
            files.append(_chunked_file(layer, layers[i + 1 : run_end], i, where))  # R7, R8
            i = run_end
            continue
        if layer.media_type == MEDIA_TYPE_CHUNK:  # R9
            raise FormatError(f"{where}: chunk layer does not follow a chunk-index layer or its chunks")
        title = layer.title
        if title is not None:  # R10
            path = validate_path(title, f"{where} title")
            if layer.size == 0 and layer.digest not in _EMPTY_BLOB_DIGESTS:
                raise FormatError(f"{where} ({_show(path)}): size 0 but digest {layer.digest} is not the empty blob's")
            files.append(PlainFile(path, layer.size, layer.digest, layer.media_type))
        else:  # R11
            skipped.append(layer)
        i += 1
    check_paths([f.path for f in files], "manifest")  # R12
    return Artifact(Digest.of_bytes(data), media_type, artifact_type, config, tuple(files), tuple(skipped), annotations)


def _chunked_file(index: Descriptor, chunks: Sequence[Descriptor], position: int, where: str) -> ChunkedFile:
    """R7 and R8 for the chunk-index layer at ``position`` and the chunk layers after it."""
    path = validate_path(index.annotations.get(ANNOTATION_PATH), f"{where} annotation {ANNOTATION_PATH}")
    where = f"{where} (index of {_show(path)})"
    size = _decimal(index.annotations.get(ANNOTATION_SIZE), f"{where} annotation {ANNOTATION_SIZE}")
    if size < 1:
        raise FormatError(f"{where}: size 0; an empty file must be a plain layer")
    file_digest = None
    if ANNOTATION_DIGEST in index.annotations:
        file_digest = _digest(index.annotations[ANNOTATION_DIGEST], f"{where} annotation {ANNOTATION_DIGEST}", True)
    if index.digest.algorithm != "sha256":
        raise FormatError(f"{where}: digest {index.digest} is not sha256")
    if not 1 <= index.size <= MAX_INDEX_BYTES:
        raise FormatError(f"{where}: size {index.size} outside 1..{MAX_INDEX_BYTES}")
    if not chunks:
        raise FormatError(f"{where}: no chunk layers follow it")
    if len(chunks) > MAX_CHUNKS:
        raise FormatError(f"{where}: {len(chunks)} chunk layers, above the limit of {MAX_CHUNKS}")
    total = 0
    for n, chunk in enumerate(chunks):
        chunk_where = f"manifest layers[{position + 1 + n}] (chunk {n} of {_show(path)})"
        if chunk.digest.algorithm != "sha256":
            raise FormatError(f"{chunk_where}: digest {chunk.digest} is not sha256")
        _integer(chunk.size, f"{chunk_where} size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        total += chunk.size
    if total != size:
        raise FormatError(f"{where}: chunk layers sum to {total} bytes but {ANNOTATION_SIZE} says {size}")
    return ChunkedFile(path, size, file_digest, index, tuple(chunks))


def parse_chunk_index(data: bytes, expected: ChunkedFile) -> ChunkIndex:
    """Parse and validate an untrusted chunk-index blob of ``expected`` (rules R1, R2, R14–R17).

    ``data`` must be exactly the blob ``expected.index`` names: a wrong length is a
    :class:`FormatError`, a wrong sha256 an :class:`IntegrityError`. Every other failure is a
    :class:`FormatError` naming the file. The result equals ``expected.layout()`` except for
    ``file_media_type``, and ``file_digest`` when only the index states it (the index's wins;
    when both state it they are equal; when only the manifest does, the manifest's is kept).
    """
    where = f"chunk index of {_show(expected.path)}"
    if len(data) > MAX_INDEX_BYTES:  # R1
        raise FormatError(f"{where} is {len(data)} bytes, above the limit of {MAX_INDEX_BYTES}")
    if len(data) != expected.index.size:
        raise FormatError(f"{where} is {len(data)} bytes but its descriptor says {expected.index.size}")
    if not expected.index.digest.matches(data):
        raise IntegrityError(f"{where} does not match its digest {expected.index.digest}")
    doc = _object(_load_json(data, where, MAX_INDEX_BYTES), where)  # R2
    # R14: refuse what we cannot understand rather than misread it.
    media_type = doc.get("mediaType")
    if media_type != MEDIA_TYPE_CHUNK_INDEX:
        raise FormatError(f"{where}: unsupported mediaType {_show(media_type)} (expected {MEDIA_TYPE_CHUNK_INDEX})")
    version = doc.get("schemaVersion")
    if type(version) is not int or version != INDEX_SCHEMA_VERSION:
        raise FormatError(f"{where}: unsupported schemaVersion {_show(version)} (expected {INDEX_SCHEMA_VERSION})")
    # R15
    size = _integer(doc.get("size"), f"{where} size", 1, MAX_FILE_SIZE)
    if size != expected.size:
        raise FormatError(f"{where}: size {size} but the manifest says {expected.size}")
    file_media_type = _media_type(doc.get("fileMediaType"), f"{where} fileMediaType")
    file_digest = None
    if "fileDigest" in doc:
        file_digest = _digest(doc["fileDigest"], f"{where} fileDigest", True)
        if expected.file_digest is not None and file_digest != expected.file_digest:
            raise FormatError(f"{where}: fileDigest {file_digest} but the manifest says {expected.file_digest}")
    # R16
    raw_chunks = doc.get("chunks")
    if not isinstance(raw_chunks, list):
        raise FormatError(f"{where}: chunks must be an array, got {_json_type(raw_chunks)}")
    if not 1 <= len(raw_chunks) <= MAX_CHUNKS:
        raise FormatError(f"{where}: {len(raw_chunks)} chunks, outside 1..{MAX_CHUNKS}")
    refs: list[ChunkRef] = []
    for n, raw in enumerate(raw_chunks):
        chunk_where = f"{where} chunks[{n}]"
        obj = _object(raw, chunk_where)
        refs.append(
            ChunkRef(
                _digest(obj.get("digest"), f"{chunk_where} digest", True),
                _integer(obj.get("size"), f"{chunk_where} size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
                _integer(obj.get("offset"), f"{chunk_where} offset", 0, MAX_FILE_SIZE),
            )
        )
    _check_layout(size, refs, where)
    # R17: the index must describe exactly the chunk layers the manifest keeps alive.
    if len(refs) != len(expected.chunks):
        raise FormatError(f"{where}: {len(refs)} chunks but the manifest has {len(expected.chunks)} chunk layers")
    for n, (ref, layer) in enumerate(zip(refs, expected.chunks, strict=True)):
        if ref.digest != layer.digest or ref.size != layer.size:
            raise FormatError(
                f"{where} chunks[{n}]: {ref.digest.short} ({ref.size} bytes) differs from the manifest's "
                f"chunk layer {layer.digest.short} ({layer.size} bytes)"
            )
    if file_digest is None:
        file_digest = expected.file_digest
    return ChunkIndex(size, file_media_type, file_digest, tuple(refs))


# =================================================================================================
# Shared checks
# =================================================================================================


def _check_layout(size: int, refs: Sequence[ChunkRef], where: str) -> None:
    """R16: at least one chunk, at most MAX_CHUNKS, contiguous from 0, ending exactly at ``size``."""
    if not 1 <= len(refs) <= MAX_CHUNKS:
        raise FormatError(f"{where}: {len(refs)} chunks, outside 1..{MAX_CHUNKS}")
    expected_offset = 0
    for n, ref in enumerate(refs):
        if ref.offset != expected_offset:
            if n == 0:
                raise FormatError(f"{where} chunks[0]: offset {ref.offset}, the first chunk must start at 0")
            kind = "a gap" if ref.offset > expected_offset else "an overlap"
            raise FormatError(
                f"{where} chunks[{n}]: offset {ref.offset} leaves {kind} (previous chunk ends at {expected_offset})"
            )
        expected_offset += ref.size
    if expected_offset != size:
        raise FormatError(f"{where}: chunks cover {expected_offset} bytes but size is {size}")


def _load_json(data: bytes, what: str, limit: int) -> object:
    """R1 and R2: size before parsing, strict UTF-8 and RFC 8259 JSON, no duplicate keys."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise FormatError(f"{what} is {len(data)} bytes, above the limit of {limit}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{what} is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise FormatError(f"{what} is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        raise FormatError(f"{what} is not valid JSON: {_show(str(exc))}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that keep different duplicates would see different artifacts: refuse them.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise FormatError(f"duplicate JSON key {_show(key)}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise FormatError(f"{name} is not a JSON number")


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"{where} must be a JSON object, got {_json_type(value)}")
    return value


def _integer(value: object, where: str, low: int, high: int) -> int:
    # type() rather than isinstance(): JSON true/false parse to bool, a subclass of int.
    if type(value) is not int:
        raise FormatError(f"{where} must be an integer, got {_json_type(value)}")
    if not low <= value <= high:
        raise FormatError(f"{where} {value} outside {low}..{high}")
    return value


def _decimal(value: object, where: str) -> int:
    """A size written as an annotation: canonical ASCII decimal, 0 .. 2**63-1."""
    if not isinstance(value, str):
        raise FormatError(f"{where}: missing" if value is None else f"{where}: must be a string")
    if _DECIMAL_RE.fullmatch(value) is None or int(value) > MAX_FILE_SIZE:
        raise FormatError(f"{where}: {_show(value)} is not a decimal size in 0..{MAX_FILE_SIZE}")
    return int(value)


def _digest(value: object, where: str, sha256_only: bool = False) -> Digest:
    try:
        digest = Digest.parse(value)
    except InvalidDigest as exc:
        raise FormatError(f"{where}: {exc.message}") from None
    if str(digest) != value:  # Digest.parse tolerates a trailing newline; the format does not
        raise FormatError(f"{where}: malformed digest {_show(str(value))}")
    if sha256_only and digest.algorithm != "sha256":
        raise FormatError(f"{where}: {digest.algorithm} digest where sha256 is required")
    return digest


def _media_type(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where}: missing" if value is None else f"{where} must be a string")
    if _MEDIA_TYPE_RE.fullmatch(value) is None:
        raise FormatError(f"{where}: {_show(value)} is not a media type")
    return value


def _annotations(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    obj = _object(value, where)
    for key, item in obj.items():
        if not isinstance(item, str):
            raise FormatError(f"{where}: value of {_show(key)} must be a string, got {_json_type(item)}")
    return obj


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null or nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: object) -> str:
    """A bounded, one-line, escaped rendering of untrusted data for messages."""
    text = value if isinstance(value, str) else json.dumps(value) if _is_scalar(value) else _json_type(value)
    if len(text) > _EXCERPT:
        text = text[:_EXCERPT] + "…"
    return repr(text) if isinstance(value, str) else text


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float)
