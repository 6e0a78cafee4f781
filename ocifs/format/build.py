"""Build the format (docs/spec.md §4, §5): chunk indexes, their descriptors and manifests.

Must not: do I/O. Every value it returns is one a reader of :mod:`ocifs.format.parse` accepts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ocifs.digest import Digest
from ocifs.errors import FormatError
from ocifs.format.checks import check_annotations, check_integer, check_layout, check_media_type
from ocifs.format.media import (
    ANNOTATION_DIGEST,
    ANNOTATION_PATH,
    ANNOTATION_SIZE,
    ANNOTATION_TITLE,
    DEFAULT_ARTIFACT_TYPE,
    DEFAULT_CONFIG_MEDIA_TYPE,
    DEFAULT_FILE_MEDIA_TYPE,
    DEFAULT_LAYER_BUDGET,
    EMPTY_BLOB_DIGESTS,
    KIND_PLAIN,
    MANIFEST_SCHEMA_VERSION,
    MAX_CHUNK_SIZE,
    MAX_FILE_SIZE,
    MAX_LAYERS,
    MAX_MANIFEST_BYTES,
    MEDIA_TYPE_CHUNK,
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_MANIFEST,
    MIN_CHUNK_SIZE,
)
from ocifs.format.messages import show
from ocifs.format.model import (
    EMPTY_DESCRIPTOR,
    ChunkedEntry,
    ChunkedFile,
    ChunkIndex,
    ChunkRef,
    Descriptor,
    PlainFile,
    canonical_json,
)
from ocifs.format.parse import parse_descriptor
from ocifs.format.paths import check_part_names, check_paths, long_part_title_warning, part_title, validate_path

log = logging.getLogger(__name__)


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
    check_integer(size, f"{where} size", 1, MAX_FILE_SIZE)
    check_media_type(file_media_type, f"{where} fileMediaType")
    if file_digest is not None and file_digest.algorithm != "sha256":
        raise FormatError(f"{where}: fileDigest {file_digest} is not sha256")
    for number, ref in enumerate(refs):
        if ref.digest.algorithm != "sha256":
            raise FormatError(f"{where} chunk {number}: digest {ref.digest} is not sha256")
        check_integer(ref.size, f"{where} chunk {number} size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        check_integer(ref.offset, f"{where} chunk {number} offset", 0, MAX_FILE_SIZE)
    check_layout(size, refs, where)
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


def config_descriptor(data: bytes, media_type: str | None = None) -> Descriptor:
    """The config descriptor of a config blob the user supplies (spec §3).

    ``media_type`` defaults to ``application/vnd.ocifs.config.v1+json``, a type specific to ocifs
    artifacts as image-spec's "Guidelines for Artifact Usage" ask, never the image config's type.
    Raises :class:`FormatError` for an invalid media type.
    """
    media_type = DEFAULT_CONFIG_MEDIA_TYPE if media_type is None else media_type
    check_media_type(media_type, "config media type")
    return Descriptor(media_type, Digest.of_bytes(data), len(data))


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
    defaults to the OCI empty descriptor (:func:`config_descriptor` makes one for a user's blob).
    A chunked file whose part titles old clients cannot write (a last component over 244 bytes,
    spec §6.4) is built, with a warning logged for it. ``artifact_type=None`` omits the field, which the
    image-spec allows only with a non-empty config. Raises :class:`FormatError` if a path is
    invalid or collides (with another file, a directory of another file, or a part title), if
    the layers exceed ``layer_budget`` (at most ``MAX_LAYERS``), or the bytes exceed 4 MiB.
    """
    if not 1 <= layer_budget <= MAX_LAYERS:
        raise ValueError(f"layer budget {layer_budget} outside 1..{MAX_LAYERS}")
    config = config if config is not None else EMPTY_DESCRIPTOR
    parse_descriptor(config.to_json(), where="config")  # what a reader will check (R6)
    if artifact_type is None and config == EMPTY_DESCRIPTOR:
        raise FormatError("artifactType is required when the config is the empty descriptor (image-spec)")
    paths = [validate_path(entry.path, f"file {show(entry.path)}") for entry in files]
    check_paths(paths, "manifest")
    layers: list[Descriptor] = []
    titles: set[str] = set()
    for path, entry in zip(paths, files, strict=True):
        if isinstance(entry, ChunkedEntry):
            index = build_chunk_index(
                entry.index.size, entry.index.chunks, entry.index.file_media_type, entry.index.file_digest
            )
            file = chunked_file(path, index)
            warning = long_part_title_warning(path)
            if warning is not None:
                log.warning("%s", warning)
            layers.append(file.index)
            layers.extend(file.chunks)
            new_titles = [c.annotations[ANNOTATION_TITLE] for c in file.chunks]
        else:
            check_media_type(entry.media_type, f"file {show(path)} media type")
            if entry.media_type in (MEDIA_TYPE_CHUNK, MEDIA_TYPE_CHUNK_INDEX):
                raise FormatError(f"file {show(path)}: a plain file cannot use the media type {entry.media_type}")
            check_integer(entry.size, f"file {show(path)} size", 0, MAX_FILE_SIZE)
            if entry.kind != KIND_PLAIN:
                raise FormatError(f"file {show(path)}: a pusher writes plain files only, not {show(entry.kind)}")
            # What a reader checks (R10): the empty blob, and only it, is a zero-byte file.
            if entry.size == 0 and entry.digest not in EMPTY_BLOB_DIGESTS:
                raise FormatError(f"file {show(path)}: size 0 but digest {entry.digest} is not the empty blob's")
            if entry.size != 0 and entry.digest in EMPTY_BLOB_DIGESTS:
                raise FormatError(f"file {show(path)}: size {entry.size} but digest {entry.digest} is the empty blob's")
            layers.append(plain_descriptor(entry))
            new_titles = [path]
        for title in new_titles:
            # Old clients write every title as a file: two equal titles would overwrite each other.
            if title in titles:
                raise FormatError(f"file {show(path)}: layer title {show(title)} is used twice")
            titles.add(title)
    chunked = {path for path, entry in zip(paths, files, strict=True) if isinstance(entry, ChunkedEntry)}
    check_part_names(paths, chunked, "manifest")  # what a reader checks (R18)
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
        manifest["artifactType"] = check_media_type(artifact_type, "artifactType")
    if annotations:
        manifest["annotations"] = check_annotations(dict(annotations), "manifest annotations")
    data = canonical_json(manifest)
    if len(data) > MAX_MANIFEST_BYTES:
        raise FormatError(
            f"manifest would be {len(data)} bytes, above the {MAX_MANIFEST_BYTES}-byte limit of registries",
            hint="use a larger chunk size or shorter paths",
        )
    return data


# Bytes a manifest needs besides its layers (config, artifactType, a few annotations): reserved by
# plan_chunk_size so that its estimate errs on the safe side.
