"""Parse and validate untrusted manifests and chunk indexes against every reader rule of
docs/spec.md §8 (each check carries its rule number, ``R1``…``R17``, in a comment).

Every failure on untrusted input is a :class:`~ocifs.errors.FormatError` with one line naming
the culprit (the layer and the file path), except a chunk-index blob whose bytes do not match
its descriptor digest, which is an :class:`~ocifs.errors.IntegrityError`. Must not: do I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ocifs.digest import Digest
from ocifs.errors import FormatError, IntegrityError
from ocifs.format.checks import (
    check_annotations,
    check_decimal,
    check_digest,
    check_integer,
    check_layout,
    check_media_type,
    check_object,
    load_json,
    unrecognised_layer,
)
from ocifs.format.media import (
    ANNOTATION_DIGEST,
    ANNOTATION_LAYOUT,
    ANNOTATION_ORAS_UNPACK,
    ANNOTATION_PATH,
    ANNOTATION_SIZE,
    ANNOTATION_SLICE,
    EMPTY_BLOB_DIGESTS,
    INDEX_SCHEMA_VERSION,
    KIND_ORAS_DIRECTORY,
    KIND_PLAIN,
    LAYOUT_SLICES,
    MANIFEST_SCHEMA_VERSION,
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
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_MANIFEST,
    MIN_CHUNK_SIZE,
    MIN_SLICES,
    ORAS_DIRECTORY_SUFFIX,
)
from ocifs.format.messages import json_type, show
from ocifs.format.model import Artifact, ChunkedFile, ChunkIndex, ChunkRef, Descriptor, File, PlainFile
from ocifs.format.paths import check_part_names, check_paths, validate_path


def parse_manifest(data: bytes, *, max_layers: int = MAX_LAYERS) -> Artifact:
    """Parse and validate untrusted manifest bytes (rules R1–R13 of docs/spec.md §8).

    Returns the :class:`Artifact` with ``manifest_digest`` = sha256 of ``data``. Raises
    :class:`FormatError` (and nothing else, whatever the input) naming the culprit.
    """
    doc = check_object(load_json(data, "manifest", MAX_MANIFEST_BYTES), "manifest")  # R1, R2
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
        raise FormatError(f"manifest mediaType {show(media_type)} is not an OCI image manifest")
    version = doc.get("schemaVersion")
    if type(version) is not int or version != MANIFEST_SCHEMA_VERSION:
        raise FormatError(f"manifest schemaVersion {show(version)} is not supported (expected 2)")
    return _artifact_of(doc, Digest.of_bytes(data), media_type, max_layers)


def _artifact_of(doc: dict[str, object], digest: Digest, media_type: str, max_layers: int) -> Artifact:
    """R5–R13, R18–R20 on a manifest object whose R1–R4 have been checked."""
    # R5
    config = parse_descriptor(doc.get("config"), where="manifest config")
    # "when present" means present and not null: JSON null is refused wherever the spec names a type.
    artifact_type = None
    if "artifactType" in doc:
        artifact_type = check_media_type(doc["artifactType"], "manifest artifactType")
    annotations = check_annotations(doc["annotations"], "manifest annotations") if "annotations" in doc else {}
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise FormatError(f"manifest layers must be an array, got {json_type(raw_layers)}")
    if len(raw_layers) > max_layers:
        raise FormatError(f"manifest has {len(raw_layers)} layers, above the limit of {max_layers}")
    # R6, R19: a layer a reader does not recognise is skipped (a line saying why), never fatal.
    layers: list[Descriptor | str] = [_parse_layer(obj, f"manifest layers[{i}]") for i, obj in enumerate(raw_layers)]

    files: list[File] = []
    skipped: list[Descriptor] = []
    unrecognised: list[str] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        where = f"manifest layers[{i}]"
        if isinstance(layer, str):  # R19
            unrecognised.append(layer)
            i += 1
            continue
        if layer.media_type == MEDIA_TYPE_CHUNK_INDEX:
            run_end = i + 1
            while run_end < len(layers) and _is_chunk(layers[run_end]):
                run_end += 1
            chunks = [c for c in layers[i + 1 : run_end] if isinstance(c, Descriptor)]
            files.append(_chunked_file(layer, chunks, i, where))  # R7, R8
            i = run_end
            continue
        if layer.media_type == MEDIA_TYPE_CHUNK:  # R9
            raise FormatError(f"{where}: chunk layer does not follow a chunk-index layer or its chunks")
        title = layer.title
        if title is not None:  # R10
            files.append(_plain_file(layer, title, where))
        else:  # R11
            skipped.append(layer)
        i += 1
    paths = [f.path for f in files]
    check_paths(paths, "manifest")  # R12
    check_part_names(paths, {f.path for f in files if isinstance(f, ChunkedFile)}, "manifest")  # R18
    return Artifact(
        digest,
        media_type,
        artifact_type,
        config,
        tuple(files),
        tuple(skipped),
        annotations,
        tuple(unrecognised),
    )


def _parse_layer(obj: object, where: str) -> Descriptor | str:
    """A layer's descriptor (R6), or the line saying why a reader does not recognise it (R19)."""
    reason = unrecognised_layer(check_object(obj, where), where)
    return reason if reason is not None else parse_descriptor(obj, where=where)


def _is_chunk(layer: Descriptor | str) -> bool:
    return isinstance(layer, Descriptor) and layer.media_type == MEDIA_TYPE_CHUNK


def _plain_file(layer: Descriptor, title: str, where: str) -> PlainFile:
    """R10 (and R20 for an ORAS directory) for a titled layer that is not ours."""
    path = validate_path(title, f"{where} title")
    kind = KIND_PLAIN
    if layer.annotations.get(ANNOTATION_ORAS_UNPACK) == "true":  # R20
        # ORAS's tar+gzip of the directory `title`: presented as that archive, not unpacked.
        kind = KIND_ORAS_DIRECTORY
        path = validate_path(title + ORAS_DIRECTORY_SUFFIX, f"{where} title (an ORAS directory)")
    # R10: the empty blob, and only it, is a zero-byte file.
    if layer.size == 0 and layer.digest not in EMPTY_BLOB_DIGESTS:
        raise FormatError(f"{where} ({show(path)}): size 0 but digest {layer.digest} is not the empty blob's")
    if layer.size != 0 and layer.digest in EMPTY_BLOB_DIGESTS:
        raise FormatError(f"{where} ({show(path)}): size {layer.size} but digest {layer.digest} is the empty blob's")
    return PlainFile(path, layer.size, layer.digest, layer.media_type, kind)


def parse_descriptor(obj: object, *, where: str = "descriptor") -> Descriptor:
    """Validate and convert a parsed JSON descriptor (rule R6); unknown fields are ignored.

    Raises :class:`FormatError` whose message starts with ``where``.
    """
    d = check_object(obj, where)  # R3: only the fields below are read; any other is ignored
    media_type = check_media_type(d.get("mediaType"), f"{where} mediaType")
    digest = check_digest(d.get("digest"), f"{where} digest")
    size = check_integer(d.get("size"), f"{where} size", 0, MAX_FILE_SIZE)
    annotations = check_annotations(d["annotations"], f"{where} annotations") if "annotations" in d else {}
    return Descriptor(media_type, digest, size, annotations)


def _chunked_file(index: Descriptor, chunks: Sequence[Descriptor], position: int, where: str) -> ChunkedFile:
    """R7 and R8 for the chunk-index layer at ``position`` and the chunk layers after it."""
    path = validate_path(index.annotations.get(ANNOTATION_PATH), f"{where} annotation {ANNOTATION_PATH}")
    where = f"{where} (index of {show(path)})"
    size = check_decimal(index.annotations.get(ANNOTATION_SIZE), f"{where} annotation {ANNOTATION_SIZE}")
    if size < 1:
        raise FormatError(f"{where}: size 0; an empty file must be a plain layer")
    file_digest = None
    if ANNOTATION_DIGEST in index.annotations:
        file_digest = check_digest(
            index.annotations[ANNOTATION_DIGEST], f"{where} annotation {ANNOTATION_DIGEST}", True
        )
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
        chunk_where = f"manifest layers[{position + 1 + n}] (chunk {n} of {show(path)})"
        if chunk.digest.algorithm != "sha256":
            raise FormatError(f"{chunk_where}: digest {chunk.digest} is not sha256")
        check_integer(chunk.size, f"{chunk_where} size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        total += chunk.size
    if total != size:
        raise FormatError(f"{where}: chunk layers sum to {total} bytes but {ANNOTATION_SIZE} says {size}")
    return ChunkedFile(path, size, file_digest, index, tuple(chunks))


def parse_chunk_index(data: bytes, expected: ChunkedFile) -> ChunkIndex:
    """Parse and validate an untrusted chunk-index blob of ``expected`` (rules R1, R2, R14–R17).

    ``data`` must be exactly the blob ``expected.index`` names: a wrong length is a
    :class:`FormatError`, a wrong sha256 an :class:`IntegrityError`. Every other failure is a
    :class:`FormatError` naming the file. The result's chunks are exactly ``expected.chunks``
    (same digests and sizes, in order, at offsets that are the running sums of the sizes), so a
    reader may trust either; its ``file_digest`` is the index's when only the index states it
    (when both state it they are equal; when only the manifest does, the manifest's is kept).
    """
    where = f"chunk index of {show(expected.path)}"
    if len(data) > MAX_INDEX_BYTES:  # R1
        raise FormatError(f"{where} is {len(data)} bytes, above the limit of {MAX_INDEX_BYTES}")
    if len(data) != expected.index.size:
        raise FormatError(f"{where} is {len(data)} bytes but its descriptor says {expected.index.size}")
    if not expected.index.digest.matches(data):
        raise IntegrityError(f"{where} does not match its digest {expected.index.digest}")
    doc = check_object(load_json(data, where, MAX_INDEX_BYTES), where)  # R2
    # R14: refuse what we cannot understand rather than misread it.
    media_type = doc.get("mediaType")
    if media_type != MEDIA_TYPE_CHUNK_INDEX:
        raise FormatError(f"{where}: unsupported mediaType {show(media_type)} (expected {MEDIA_TYPE_CHUNK_INDEX})")
    version = doc.get("schemaVersion")
    if type(version) is not int or version != INDEX_SCHEMA_VERSION:
        raise FormatError(f"{where}: unsupported schemaVersion {show(version)} (expected {INDEX_SCHEMA_VERSION})")
    # R15
    size = check_integer(doc.get("size"), f"{where} size", 1, MAX_FILE_SIZE)
    if size != expected.size:
        raise FormatError(f"{where}: size {size} but the manifest says {expected.size}")
    file_media_type = check_media_type(doc.get("fileMediaType"), f"{where} fileMediaType")
    file_digest = None
    if "fileDigest" in doc:
        file_digest = check_digest(doc["fileDigest"], f"{where} fileDigest", True)
        if expected.file_digest is not None and file_digest != expected.file_digest:
            raise FormatError(f"{where}: fileDigest {file_digest} but the manifest says {expected.file_digest}")
    # R16
    raw_chunks = doc.get("chunks")
    if not isinstance(raw_chunks, list):
        raise FormatError(f"{where}: chunks must be an array, got {json_type(raw_chunks)}")
    if not 1 <= len(raw_chunks) <= MAX_CHUNKS:
        raise FormatError(f"{where}: {len(raw_chunks)} chunks, outside 1..{MAX_CHUNKS}")
    refs: list[ChunkRef] = []
    for n, raw in enumerate(raw_chunks):
        chunk_where = f"{where} chunks[{n}]"
        obj = check_object(raw, chunk_where)
        refs.append(
            ChunkRef(
                check_digest(obj.get("digest"), f"{chunk_where} digest", True),
                check_integer(obj.get("size"), f"{chunk_where} size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
                check_integer(obj.get("offset"), f"{chunk_where} offset", 0, MAX_FILE_SIZE),
            )
        )
    check_layout(size, refs, where)
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


# --- the split layout (spec §14) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SplitIndex:
    """An image index of ours (R21, R22): the slices to fetch, in order, and the index's metadata."""

    digest: Digest
    artifact_type: str | None
    annotations: Mapping[str, str]
    slices: tuple[Descriptor, ...]


def is_split_index(data: bytes) -> bool:
    """Whether ``data`` is an image index that says it is a split artifact (R21); False for anything
    else (a foreign index, a manifest, garbage): the caller refuses those as it always has."""
    try:
        doc = load_json(data, "image index", MAX_MANIFEST_BYTES)
    except FormatError:
        return False
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    return isinstance(annotations, dict) and ANNOTATION_LAYOUT in annotations


def parse_split_index(data: bytes) -> SplitIndex:
    """Parse and validate an untrusted image index of the split layout (rules R21, R22)."""
    where = "image index"
    doc = check_object(load_json(data, where, MAX_MANIFEST_BYTES), where)  # R21: R1, R2
    annotations = check_annotations(doc["annotations"], f"{where} annotations") if "annotations" in doc else {}
    layout = annotations.get(ANNOTATION_LAYOUT)
    if layout != LAYOUT_SLICES:  # R21
        raise FormatError(f"{where}: unsupported {ANNOTATION_LAYOUT} {show(layout)} (expected {LAYOUT_SLICES})")
    if doc.get("mediaType") != MEDIA_TYPE_IMAGE_INDEX:
        raise FormatError(f"{where}: mediaType {show(doc.get('mediaType'))} is not {MEDIA_TYPE_IMAGE_INDEX}")
    version = doc.get("schemaVersion")
    if type(version) is not int or version != MANIFEST_SCHEMA_VERSION:
        raise FormatError(f"{where}: schemaVersion {show(version)} is not supported (expected 2)")
    artifact_type = None
    if "artifactType" in doc:
        artifact_type = check_media_type(doc["artifactType"], f"{where} artifactType")
    raw = doc.get("manifests")  # R22
    if not isinstance(raw, list):
        raise FormatError(f"{where}: manifests must be an array, got {json_type(raw)}")
    if not MIN_SLICES <= len(raw) <= MAX_SLICES:
        raise FormatError(f"{where}: {len(raw)} manifests, outside {MIN_SLICES}..{MAX_SLICES}")
    slices: list[Descriptor] = []
    for n, obj in enumerate(raw):
        slice_where = f"{where} manifests[{n}]"
        d = parse_descriptor(obj, where=slice_where)
        if d.media_type != MEDIA_TYPE_MANIFEST:
            raise FormatError(f"{slice_where}: mediaType {d.media_type} is not {MEDIA_TYPE_MANIFEST}")
        if d.digest.algorithm != "sha256":
            raise FormatError(f"{slice_where}: digest {d.digest} is not sha256")
        check_integer(d.size, f"{slice_where} size", 1, MAX_MANIFEST_BYTES)
        if d.annotations.get(ANNOTATION_SLICE) != str(n):
            raise FormatError(f"{slice_where}: annotation {ANNOTATION_SLICE} is not {n}")
        slices.append(d)
    total = sum(d.size for d in slices)
    if total > MAX_SLICES_TOTAL_BYTES:
        raise FormatError(f"{where}: its manifests total {total} bytes, above the limit of {MAX_SLICES_TOTAL_BYTES}")
    return SplitIndex(Digest.of_bytes(data), artifact_type, annotations, tuple(slices))


def merge_slices(index: SplitIndex, slices: Sequence[bytes], *, max_layers: int = MAX_LAYERS) -> Artifact:
    """The one artifact of a split index and its slices' bytes, in order (rules R23, R24).

    Each slice must be exactly its descriptor's bytes (a wrong sha256 is an IntegrityError); the
    concatenated layers are validated as one manifest's (R5–R20). The artifact's digest is the
    index's, its ``slices`` the slices' descriptors.
    """
    if len(slices) != len(index.slices):
        raise FormatError(f"image index names {len(index.slices)} manifests, {len(slices)} given")
    layers: list[object] = []
    config: object = None
    artifact_type: object = None
    for n, (descriptor, data) in enumerate(zip(index.slices, slices, strict=True)):
        where = f"image index manifests[{n}]"
        if len(data) != descriptor.size:  # R23
            raise FormatError(f"{where} is {len(data)} bytes but its descriptor says {descriptor.size}")
        if not descriptor.digest.matches(data):
            raise IntegrityError(f"{where} does not match its digest {descriptor.digest}")
        doc = check_object(load_json(data, where, MAX_MANIFEST_BYTES), where)
        if doc.get("mediaType", MEDIA_TYPE_MANIFEST) != MEDIA_TYPE_MANIFEST or "manifests" in doc:
            raise FormatError(f"{where} is not an image manifest")
        version = doc.get("schemaVersion")
        if type(version) is not int or version != MANIFEST_SCHEMA_VERSION:
            raise FormatError(f"{where}: schemaVersion {show(version)} is not supported (expected 2)")
        slice_annotations = (
            check_annotations(doc["annotations"], f"{where} annotations") if "annotations" in doc else {}
        )
        if slice_annotations.get(ANNOTATION_SLICE) != str(n):
            raise FormatError(f"{where}: annotation {ANNOTATION_SLICE} is not {n}")
        parse_descriptor(doc.get("config"), where=f"{where} config")
        if n == 0:
            config = doc.get("config")
        elif doc.get("config") != config:
            raise FormatError(f"{where}: its config differs from that of manifests[0]")
        if n == 0:
            artifact_type = doc.get("artifactType")
        elif doc.get("artifactType") != artifact_type:
            raise FormatError(f"{where}: artifactType {show(doc.get('artifactType'))} differs from manifests[0]'s")
        # Copy tools may drop the index's artifactType when they re-serialise it (skopeo does).
        if index.artifact_type is not None and doc.get("artifactType") != index.artifact_type:
            raise FormatError(f"{where}: artifactType {show(doc.get('artifactType'))} differs from the index's")
        raw_layers = doc.get("layers")
        if not isinstance(raw_layers, list):
            raise FormatError(f"{where} layers must be an array, got {json_type(raw_layers)}")
        layers.extend(raw_layers)
        if len(layers) > max_layers:
            raise FormatError(f"image index: its manifests have more than {max_layers} layers")
    merged: dict[str, object] = {"config": config, "layers": layers}  # R24
    if artifact_type is not None:
        merged["artifactType"] = artifact_type
    merged["annotations"] = dict(index.annotations)
    artifact = _artifact_of(merged, index.digest, MEDIA_TYPE_IMAGE_INDEX, max_layers)
    return replace(artifact, slices=index.slices)
