"""Build the format (docs/spec.md §4, §5): chunk indexes, their descriptors and manifests.

Must not: do I/O. Every value it returns is one a reader of :mod:`ocifs.format.parse` accepts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ocifs.digest import Digest
from ocifs.errors import FormatError
from ocifs.format.checks import check_annotations, check_integer, check_layout, check_media_type
from ocifs.format.media import (
    ANNOTATION_DIGEST,
    ANNOTATION_LAYOUT,
    ANNOTATION_PATH,
    ANNOTATION_SIZE,
    ANNOTATION_SLICE,
    ANNOTATION_TITLE,
    DEFAULT_ARTIFACT_TYPE,
    DEFAULT_CONFIG_MEDIA_TYPE,
    DEFAULT_FILE_MEDIA_TYPE,
    DEFAULT_LAYER_BUDGET,
    EMPTY_BLOB_DIGESTS,
    KIND_PLAIN,
    LAYOUT_SLICES,
    MANIFEST_SCHEMA_VERSION,
    MAX_CHUNK_SIZE,
    MAX_FILE_SIZE,
    MAX_INDEX_BYTES,
    MAX_LAYERS,
    MAX_MANIFEST_BYTES,
    MAX_SLICES,
    MAX_SLICES_TOTAL_BYTES,
    MEDIA_TYPE_CHUNK,
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_IMAGE_INDEX,
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
    config = _check_config(config, artifact_type)
    layers = logical_layers(files)
    if len(layers) > layer_budget:
        raise FormatError(
            f"manifest would have {len(layers)} layers, above the layer budget of {layer_budget}",
            hint="use a larger chunk size (see plan_chunk_size) or raise the layer budget",
        )
    data = _manifest_bytes(layers, config, artifact_type, annotations)
    if len(data) > MAX_MANIFEST_BYTES:
        raise FormatError(
            f"manifest would be {len(data)} bytes, above the {MAX_MANIFEST_BYTES}-byte limit of registries",
            hint="use a larger chunk size or shorter paths",
        )
    return data


def _check_config(config: Descriptor | None, artifact_type: str | None) -> Descriptor:
    config = config if config is not None else EMPTY_DESCRIPTOR
    parse_descriptor(config.to_json(), where="config")  # what a reader will check (R6)
    if artifact_type is None and config == EMPTY_DESCRIPTOR:
        raise FormatError("artifactType is required when the config is the empty descriptor (image-spec)")
    return config


def logical_layers(files: Sequence[ChunkedEntry | PlainFile]) -> list[Descriptor]:
    """The layers of ``files`` in order, as one manifest (or the slices of §14 together) lists
    them; FormatError for what a reader would refuse (paths, titles, R10, R18, index size)."""
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
            if file.index.size > MAX_INDEX_BYTES:  # what a reader checks (R7)
                raise FormatError(
                    f"file {show(path)}: its chunk index would be {file.index.size} bytes, above {MAX_INDEX_BYTES}",
                    hint="use a larger chunk size",
                )
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
    return layers


def _manifest_bytes(
    layers: Sequence[Descriptor],
    config: Descriptor,
    artifact_type: str | None,
    annotations: Mapping[str, str] | None,
) -> bytes:
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
    return canonical_json(manifest)


@dataclass(frozen=True, slots=True)
class BuiltArtifact:
    """What a push PUTs: ``slices`` by digest first (none for one manifest), then ``top`` under
    the tag; ``top`` is a manifest or, for the split layout (spec §14), the image index."""

    top: bytes
    media_type: str
    slices: tuple[bytes, ...] = ()


def build_artifact(
    files: Sequence[ChunkedEntry | PlainFile],
    *,
    config: Descriptor | None = None,
    artifact_type: str | None = DEFAULT_ARTIFACT_TYPE,
    annotations: Mapping[str, str] | None = None,
    layer_budget: int = DEFAULT_LAYER_BUDGET,
    split: bool = True,
) -> BuiltArtifact:
    """One manifest for ``files`` when it fits ``layer_budget`` and 4 MiB (exactly
    :func:`build_manifest`), else (``split``) the layout of spec §14: slices of consecutive
    layers, each filled in order up to the budget and 4 MiB, and the image index naming them.
    FormatError when even that cannot hold them (slices, their bytes, layers: spec §14)."""
    if not 1 <= layer_budget <= MAX_LAYERS:
        raise ValueError(f"layer budget {layer_budget} outside 1..{MAX_LAYERS}")
    config = _check_config(config, artifact_type)
    layers = logical_layers(files)
    if len(layers) <= layer_budget:
        data = _manifest_bytes(layers, config, artifact_type, annotations)
        if len(data) <= MAX_MANIFEST_BYTES:
            return BuiltArtifact(data, MEDIA_TYPE_MANIFEST)
    if not split:
        build_manifest(
            files, config=config, artifact_type=artifact_type, annotations=annotations, layer_budget=layer_budget
        )  # raises, saying which limit
        raise AssertionError("unreachable")
    if len(layers) > MAX_LAYERS:
        raise FormatError(f"artifact would have {len(layers)} layers, above the limit of {MAX_LAYERS} of readers")
    # Bytes of a slice without its layers, with room for its slice number; each layer adds its JSON and a comma.
    user = dict(annotations or {})
    base = len(_manifest_bytes([], config, artifact_type, {**user, ANNOTATION_SLICE: str(MAX_SLICES)}))
    groups: list[list[Descriptor]] = [[]]
    used = base
    for layer in layers:
        cost = len(canonical_json(layer.to_json())) + 1
        if groups[-1] and (len(groups[-1]) >= layer_budget or used + cost > MAX_MANIFEST_BYTES):
            groups.append([])
            used = base
        if base + cost > MAX_MANIFEST_BYTES:
            raise FormatError(f"layer {layer.digest.short} alone does not fit a {MAX_MANIFEST_BYTES}-byte manifest")
        groups[-1].append(layer)
        used += cost
    if len(groups) > MAX_SLICES:
        raise FormatError(
            f"artifact would need {len(groups)} manifests of at most {layer_budget} layers,"
            f" above the limit of {MAX_SLICES} manifests",
            hint="use a larger chunk size or raise the layer budget",
        )
    slices = tuple(
        _manifest_bytes(group, config, artifact_type, {**user, ANNOTATION_SLICE: str(n)})
        for n, group in enumerate(groups)
    )
    if sum(len(s) for s in slices) > MAX_SLICES_TOTAL_BYTES:
        raise FormatError(
            f"artifact's manifests would take {sum(len(s) for s in slices)} bytes, above the"
            f" {MAX_SLICES_TOTAL_BYTES}-byte limit of readers",
            hint="use a larger chunk size or shorter paths",
        )
    entries: list[dict[str, Any]] = []
    for n, data in enumerate(slices):
        entry: dict[str, Any] = {
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": str(Digest.of_bytes(data)),
            "size": len(data),
            "annotations": {ANNOTATION_SLICE: str(n)},
        }
        if artifact_type is not None:
            entry["artifactType"] = artifact_type
        entries.append(entry)
    index: dict[str, Any] = {
        "schemaVersion": MANIFEST_SCHEMA_VERSION,
        "mediaType": MEDIA_TYPE_IMAGE_INDEX,
        "manifests": entries,
        "annotations": check_annotations({**user, ANNOTATION_LAYOUT: LAYOUT_SLICES}, "index annotations"),
    }
    if artifact_type is not None:
        index["artifactType"] = artifact_type
    top = canonical_json(index)
    if len(top) > MAX_MANIFEST_BYTES:
        raise FormatError(f"image index would be {len(top)} bytes, above the {MAX_MANIFEST_BYTES}-byte limit")
    return BuiltArtifact(top, MEDIA_TYPE_IMAGE_INDEX, slices)


# Bytes a manifest needs besides its layers (config, artifactType, a few annotations): reserved by
# plan_chunk_size so that its estimate errs on the safe side.
