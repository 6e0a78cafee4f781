"""Tests of the format fixes of issue 13 item 6 (docs/spec.md): part names next to a chunked file
(R18) and the exact rebuild glob, layers a reader does not recognise (R19), JSON null, the empty
blob (§6.1, R10), the warning for part titles old clients cannot write (§6.4), a user's config
media type (§3) and ORAS directory layers (R20).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ocifs.digest import Digest
from ocifs.errors import FormatError
from ocifs.format.build import build_chunk_index, build_manifest, config_descriptor
from ocifs.format.media import (
    ANNOTATION_ORAS_UNPACK,
    ANNOTATION_TITLE,
    DEFAULT_CONFIG_MEDIA_TYPE,
    EMPTY_BLOB_DIGEST,
    EMPTY_BLOB_DIGESTS,
    KIND_CHUNKED,
    KIND_ORAS_DIRECTORY,
    KIND_PLAIN,
    MEDIA_TYPE_CHUNK,
)
from ocifs.format.model import ChunkedEntry, ChunkedFile, ChunkIndex, ChunkRef, PlainFile
from ocifs.format.parse import parse_chunk_index, parse_manifest
from ocifs.format.paths import check_part_names, long_part_title_warning, part_title
from ocifs.fs.tree import ROOT_INODE, Tree

SPEC = Path(__file__).resolve().parent.parent / "docs" / "spec.md"
EXACT_GLOB = "[0-9][0-9][0-9][0-9][0-9]"
SHA512_EMPTY = next(d for d in EMPTY_BLOB_DIGESTS if d.algorithm == "sha512")


def index_of(sizes: list[int], label: str = "f") -> ChunkIndex:
    refs, offset = [], 0
    for n, size in enumerate(sizes):
        refs.append(ChunkRef(Digest.of_bytes(f"{label}-{n}".encode()), size, offset))
        offset += size
    return build_chunk_index(offset, refs, file_digest=Digest.of_bytes(label.encode()))


def plain(path: str, content: bytes = b"hello\n", media_type: str = "text/plain") -> PlainFile:
    return PlainFile(path, len(content), Digest.of_bytes(content), media_type)


BIG = index_of([3, 3, 2], "big")


def manifest_doc(*extra_layers: dict[str, Any]) -> dict[str, Any]:
    """A chunked ``model.bin`` (layers 0-3) and a plain ``README.md`` (4), then ``extra_layers``."""
    doc: dict[str, Any] = json.loads(build_manifest([ChunkedEntry("model.bin", BIG), plain("README.md")]))
    doc["layers"].extend(extra_layers)
    return doc


def parse(doc: object) -> Any:
    return parse_manifest(json.dumps(doc).encode())


def refused(doc: object, *fragments: str) -> str:
    with pytest.raises(FormatError) as info:
        parse(doc)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def titled(title: str, content: bytes = b"x", media_type: str = "text/plain", **annotations: str) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": str(Digest.of_bytes(content)),
        "size": len(content),
        "annotations": {ANNOTATION_TITLE: title, **annotations},
    }


# --- 1. R18: nothing named like a part of a chunked file; the exact glob ----------------------------

PART_LIKE = ["model.bin.part-00001", "model.bin.part-00007", "model.bin.part-notes", "model.bin.part-d/f"]


@pytest.mark.parametrize("path", PART_LIKE)
def test_R18_reader_refuses_a_plain_file_named_like_a_part(path: str) -> None:
    refused(manifest_doc(titled(path)), repr(path), "part of the chunked file 'model.bin'")


def test_R18_reader_refuses_a_chunked_file_named_like_a_part() -> None:
    doc = manifest_doc()
    other: dict[str, Any] = json.loads(build_manifest([ChunkedEntry("model.bin.part-x", index_of([2, 2], "x"))]))
    doc["layers"].extend(other["layers"])
    refused(doc, "'model.bin.part-x'", "part of the chunked file 'model.bin'")


@pytest.mark.parametrize("path", ["model.bin.parts", "model.bin-part-00001", "model.part-00001", "x/model.bin.part-1"])
def test_R18_similar_names_are_fine(path: str) -> None:
    assert path in [f.path for f in parse(manifest_doc(titled(path))).files]


def test_R18_a_plain_file_named_like_a_part_of_a_plain_file_is_fine() -> None:
    # Only chunked files have parts: a plain `a` has no part to be mistaken for.
    paths = [f.path for f in parse_manifest(build_manifest([plain("a"), plain("a.part-00000")])).files]
    assert paths == ["a", "a.part-00000"]


@pytest.mark.parametrize("path", PART_LIKE)
def test_R18_builder_refuses_a_file_named_like_a_part(path: str) -> None:
    # A name equal to one of the part titles is caught first as a title used twice.
    for files in ([ChunkedEntry("model.bin", BIG), plain(path)], [plain(path), ChunkedEntry("model.bin", BIG)]):
        with pytest.raises(FormatError, match=r"named like a part of the chunked file 'model\.bin'|is used twice"):
            build_manifest(files)
    with pytest.raises(FormatError, match="named like a part"):
        build_manifest([ChunkedEntry("model.bin", BIG), ChunkedEntry(path, index_of([1, 1], "o"))])


def test_check_part_names_finds_any_occurrence() -> None:
    check_part_names(["a.part-1.part-2", "b"], set())
    for owner in ("a.part-1", "a"):
        with pytest.raises(
            FormatError, match=re.escape(f"'a.part-1.part-2' is named like a part of the chunked file '{owner}'")
        ):
            check_part_names(["a.part-1.part-2"], {owner})


def test_spec_recipe_uses_the_exact_glob() -> None:
    spec = SPEC.read_text()
    assert "part-*" not in spec, "docs/spec.md still shows the inexact glob"
    assert f"cat model.bin.part-{EXACT_GLOB} > model.bin" in spec


def test_exact_glob_rebuilds_the_file_and_matches_only_the_parts(tmp_path: Path) -> None:
    """What an old client's pull leaves, rebuilt with the recipe of spec §9 by a real shell."""
    content = bytes(range(256)) * 3
    sizes = [300, 300, 168]
    total = len(sizes)
    offset = 0
    for n, size in enumerate(sizes):
        (tmp_path / part_title("model.bin", n, total)).write_bytes(content[offset : offset + size])
        offset += size
    (tmp_path / "model.bin.part-notes").write_bytes(b"not a part")  # R18 refuses it; the glob ignores it
    (tmp_path / "model.bin.part-000001").write_bytes(b"six digits")
    subprocess.run(["sh", "-c", f"cat model.bin.part-{EXACT_GLOB} > model.bin"], cwd=tmp_path, check=True)
    assert (tmp_path / "model.bin").read_bytes() == content


# --- 2. R19: layers a reader does not recognise are skipped ------------------------------------------

UNRECOGNISED = [
    ({"mediaType": "application/vnd.foo+json; charset=utf-8"}, "has parameters"),
    ({"mediaType": "text/plain;charset=utf-8"}, "has parameters"),
    ({"digest": "blake3:" + "a" * 64}, "digest algorithm 'blake3'"),
    ({"digest": "md5:" + "a" * 32}, "digest algorithm 'md5'"),
    ({"digest": "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"}, "'multihash+base58'"),
    ({"mediaType": MEDIA_TYPE_CHUNK + "; x=1"}, "has parameters"),
]


@pytest.mark.parametrize(("change", "reason"), UNRECOGNISED)
@pytest.mark.parametrize("with_title", [True, False])
def test_R19_unrecognised_layers_are_skipped_not_fatal(change: dict[str, Any], reason: str, with_title: bool) -> None:
    layer = (
        titled("extra.txt") if with_title else {"mediaType": "text/plain", "digest": str(EMPTY_BLOB_DIGEST), "size": 1}
    )
    layer.update(change)
    artifact = parse(manifest_doc(layer))
    assert [f.path for f in artifact.files] == ["model.bin", "README.md"]
    assert artifact.skipped == ()
    assert len(artifact.unrecognised) == 1
    assert artifact.unrecognised[0].startswith("manifest layers[5]: ") and reason in artifact.unrecognised[0]


def test_R19_unrecognised_layer_ends_a_chunk_run() -> None:
    doc = manifest_doc()
    odd = dict(doc["layers"][2], mediaType="text/plain; a=b")
    doc["layers"].insert(2, odd)
    # The run of model.bin's chunks ends at the unrecognised layer: its chunks fall short (R8).
    refused(doc, "index of 'model.bin'", "chunk layers sum to 3 bytes")
    doc["layers"][0]["annotations"]["dev.ocifs.size"] = "3"
    refused(doc, "manifest layers[3]", "does not follow a chunk-index")  # and the chunk after it is an orphan (R9)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"digest": "blake3:"}, "malformed digest"),
        ({"digest": "BLAKE3:" + "a" * 64}, "malformed digest"),
        ({"digest": None, "mediaType": "text/plain; a=b"}, "malformed digest"),
        ({"digest": "sha256:" + "A" * 64, "mediaType": "text/plain; a=b"}, "malformed digest"),
        ({"mediaType": "text; a=b", "digest": "md5:" + "a" * 32}, "is not a media type"),
        ({"mediaType": None, "digest": "md5:" + "a" * 32}, "mediaType: missing or null"),
        ({"mediaType": "text/plain; a=b", "size": -1}, "size -1 outside"),
        ({"mediaType": "text/plain; a=b", "size": None}, "must be an integer"),
        ({"digest": "md5:" + "a" * 32, "annotations": None}, "annotations must be a JSON object"),
        ({"digest": "md5:" + "a" * 32, "annotations": {"k": None}}, "value of 'k' must be a string"),
    ],
)
def test_R19_unrecognised_layers_must_still_be_descriptors(change: dict[str, Any], fragment: str) -> None:
    layer = titled("extra.txt")
    layer.update(change)
    refused(manifest_doc(layer), "manifest layers[5]", fragment)


@pytest.mark.parametrize(("change", "reason"), UNRECOGNISED)
def test_R19_does_not_apply_to_the_config(change: dict[str, Any], reason: str) -> None:
    doc = manifest_doc()
    doc["config"].update(change)
    refused(doc, "manifest config")


def test_R19_spec_says_so() -> None:
    spec = SPEC.read_text()
    assert "**R19** A layer a reader does not recognise never refuses the manifest" in spec


# --- 3. JSON null is refused wherever the spec names a type -----------------------------------------

NULLABLE_MANIFEST_FIELDS: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (lambda d: d.__setitem__("mediaType", None), "manifest mediaType null"),
    (lambda d: d.__setitem__("schemaVersion", None), "schemaVersion null"),
    (lambda d: d.__setitem__("artifactType", None), "manifest artifactType: missing or null"),
    (lambda d: d.__setitem__("annotations", None), "manifest annotations must be a JSON object, got null"),
    (lambda d: d.__setitem__("annotations", {"k": None}), "value of 'k' must be a string, got null"),
    (lambda d: d.__setitem__("config", None), "manifest config must be a JSON object, got null"),
    (lambda d: d["config"].__setitem__("mediaType", None), "config mediaType: missing or null"),
    (lambda d: d["config"].__setitem__("digest", None), "config digest"),
    (lambda d: d["config"].__setitem__("size", None), "config size must be an integer, got null"),
    (lambda d: d["config"].__setitem__("annotations", None), "config annotations must be a JSON object"),
    (lambda d: d.__setitem__("layers", None), "layers must be an array, got null"),
    (lambda d: d["layers"].__setitem__(4, None), "layers[4] must be a JSON object, got null"),
    (lambda d: d["layers"][4].__setitem__("mediaType", None), "layers[4] mediaType: missing or null"),
    (lambda d: d["layers"][4].__setitem__("digest", None), "layers[4] digest"),
    (lambda d: d["layers"][4].__setitem__("size", None), "layers[4] size must be an integer, got null"),
    (lambda d: d["layers"][4].__setitem__("annotations", None), "layers[4] annotations must be a JSON object"),
    (lambda d: d["layers"][4]["annotations"].__setitem__(ANNOTATION_TITLE, None), "must be a string, got null"),
    (lambda d: d["layers"][0].__setitem__("annotations", None), "layers[0] annotations must be a JSON object"),
    (lambda d: d["layers"][0]["annotations"].__setitem__("dev.ocifs.path", None), "must be a string, got null"),
    (lambda d: d["layers"][0]["annotations"].__setitem__("dev.ocifs.size", None), "must be a string, got null"),
    (lambda d: d["layers"][0]["annotations"].__setitem__("dev.ocifs.digest", None), "must be a string, got null"),
    (lambda d: d["layers"][1].__setitem__("annotations", None), "layers[1] annotations must be a JSON object"),
]


@pytest.mark.parametrize(("change", "fragment"), NULLABLE_MANIFEST_FIELDS)
def test_R3_null_is_refused_in_the_manifest(change: Callable[[dict[str, Any]], None], fragment: str) -> None:
    doc = manifest_doc()
    change(doc)
    refused(doc, fragment)


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("mediaType", "unsupported mediaType null"),
        ("schemaVersion", "unsupported schemaVersion null"),
        ("size", "size must be an integer, got null"),
        ("fileMediaType", "fileMediaType: missing or null"),
        ("fileDigest", "fileDigest: digest must be a string"),
        ("chunks", "chunks must be an array, got null"),
        ("chunks.0", "chunks[0] must be a JSON object, got null"),
        ("chunks.0.digest", "chunks[0] digest"),
        ("chunks.0.size", "chunks[0] size must be an integer, got null"),
        ("chunks.0.offset", "chunks[0] offset must be an integer, got null"),
    ],
)
def test_R3_null_is_refused_in_the_chunk_index(key: str, fragment: str) -> None:
    f = parse(manifest_doc()).files[0]
    assert isinstance(f, ChunkedFile)
    doc: Any = json.loads(BIG.to_bytes())
    *parents, last = key.split(".")
    target = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[int(last) if isinstance(target, list) else last] = None
    data = json.dumps(doc).encode()
    index = type(f.index)(f.index.media_type, Digest.of_bytes(data), len(data), f.index.annotations)
    with pytest.raises(FormatError, match=re.escape(fragment)):
        parse_chunk_index(data, ChunkedFile(f.path, f.size, f.file_digest, index, f.chunks))


def test_R3_absent_optional_fields_are_still_fine() -> None:
    doc = manifest_doc()
    for key in ("artifactType", "annotations", "mediaType"):
        doc.pop(key, None)
    del doc["layers"][1]["annotations"]  # a chunk layer's title is only a SHOULD
    artifact = parse(doc)
    assert artifact.artifact_type is None and dict(artifact.annotations) == {}


# --- 4. §6.1 and R10: the empty blob, and only it, is a zero-byte file ---------------------------------


@pytest.mark.parametrize("digest", sorted(EMPTY_BLOB_DIGESTS, key=str))
def test_R10_zero_byte_file_names_either_empty_blob(digest: Digest) -> None:
    layer = {"mediaType": "text/plain", "digest": str(digest), "size": 0, "annotations": {ANNOTATION_TITLE: "e"}}
    empty = parse(manifest_doc(layer)).files[-1]
    assert empty == PlainFile("e", 0, digest, "text/plain")
    assert parse_manifest(build_manifest([PlainFile("e", 0, digest)])).files[0].size == 0


@pytest.mark.parametrize("digest", sorted(EMPTY_BLOB_DIGESTS, key=str))
def test_R10_the_empty_blob_has_size_zero(digest: Digest) -> None:
    layer = {"mediaType": "text/plain", "digest": str(digest), "size": 5, "annotations": {ANNOTATION_TITLE: "e"}}
    refused(manifest_doc(layer), "layers[5] ('e'): size 5", "is the empty blob's")
    with pytest.raises(FormatError, match="is the empty blob's"):
        build_manifest([PlainFile("e", 5, digest)])


def test_spec_6_1_names_both_empty_blobs() -> None:
    spec = SPEC.read_text()
    section = spec[spec.index("### 6.1") : spec.index("### 6.2")]
    for digest in EMPTY_BLOB_DIGESTS:
        assert str(digest) in section


# --- 5. §6.4: part titles old clients cannot write ---------------------------------------------------


def test_long_part_title_warning_threshold() -> None:
    assert long_part_title_warning("d/" + "a" * 244) is None
    assert len(part_title("a" * 244, 0, 1).encode()) == 255
    warning = long_part_title_warning("d/" + "a" * 245)
    assert warning is not None and "245 bytes" in warning and "exceed 255 bytes" in warning and "\n" not in warning
    assert long_part_title_warning("é" * 122) is None  # 244 bytes
    assert long_part_title_warning("é" * 123) is not None  # 246 bytes
    assert long_part_title_warning("a" * 245 + "/b") is None  # only the last component gets the suffix


def test_build_warns_for_a_chunked_file_with_a_long_name(expect_log: Any) -> None:
    name = "m" * 250
    with expect_log(r"its file name is 250 bytes", count=1, logger="ocifs.format.build") as expectation:
        data = build_manifest([ChunkedEntry(name, BIG), plain("p" * 250)])  # a plain file needs no warning
    assert expectation.records[0].levelno == logging.WARNING
    assert [f.path for f in parse_manifest(data).files] == [name, "p" * 250]  # still valid


def test_build_is_silent_for_short_names(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="ocifs.format"):
        build_manifest([ChunkedEntry("m" * 244, BIG)])
    assert caplog.records == []


# --- 6a. §3: the media type of a config the user supplies ----------------------------------------------


def test_config_descriptor_defaults_to_an_artifact_specific_type() -> None:
    data = b'{"model": "x"}'
    config = config_descriptor(data)
    assert config.media_type == DEFAULT_CONFIG_MEDIA_TYPE == "application/vnd.ocifs.config.v1+json"
    assert config.media_type != "application/vnd.oci.image.config.v1+json"
    assert config.digest == Digest.of_bytes(data) and config.size == len(data)
    assert config_descriptor(data, "application/vnd.example.config.v1+json").media_type.startswith("application/vnd.ex")
    with pytest.raises(FormatError, match="config media type"):
        config_descriptor(data, "nonsense")
    doc = json.loads(build_manifest([plain("a")], config=config))
    assert doc["config"]["mediaType"] == DEFAULT_CONFIG_MEDIA_TYPE and doc["artifactType"]
    assert DEFAULT_CONFIG_MEDIA_TYPE in SPEC.read_text()


# --- 6b. R20: ORAS directory layers ----------------------------------------------------------------------

ORAS_DIR = titled(
    "models", b"\x1f\x8b tar+gzip", "application/vnd.oci.image.layer.v1.tar+gzip", **{ANNOTATION_ORAS_UNPACK: "true"}
)


def test_R20_oras_directory_is_presented_as_its_archive() -> None:
    artifact = parse(manifest_doc(ORAS_DIR))
    archive = artifact.files[-1]
    assert isinstance(archive, PlainFile)
    assert archive.path == "models.tar.gz" and archive.kind == KIND_ORAS_DIRECTORY
    assert archive.size == ORAS_DIR["size"] and str(archive.digest) == ORAS_DIR["digest"]
    assert [f.kind for f in artifact.files[:2]] == [KIND_CHUNKED, KIND_PLAIN]


def test_R20_only_the_value_true_marks_a_directory() -> None:
    layer = dict(ORAS_DIR, annotations={ANNOTATION_TITLE: "models", ANNOTATION_ORAS_UNPACK: "false"})
    assert parse(manifest_doc(layer)).files[-1] == PlainFile(
        "models", ORAS_DIR["size"], Digest.parse(ORAS_DIR["digest"]), ORAS_DIR["mediaType"]
    )


def test_R20_archive_path_follows_the_path_rules() -> None:
    refused(manifest_doc(ORAS_DIR, titled("models.tar.gz")), "'models.tar.gz' appears twice")
    long_dir = dict(ORAS_DIR, annotations={ANNOTATION_TITLE: "d" * 250, ANNOTATION_ORAS_UNPACK: "true"})
    refused(manifest_doc(long_dir), "an ORAS directory", "longer than 255")
    bad = dict(ORAS_DIR, annotations={ANNOTATION_TITLE: "../x", ANNOTATION_ORAS_UNPACK: "true"})
    refused(manifest_doc(bad), "'..'")


def test_R20_tree_names_the_kind_in_an_xattr() -> None:
    tree = Tree(parse(manifest_doc(ORAS_DIR)), uid=0, gid=0, mtime_ns=0)
    inode = tree.lookup(ROOT_INODE, "models.tar.gz").inode
    xattrs = tree.file_xattrs(inode)
    assert xattrs["user.ocifs.kind"] == b"oras-directory"
    assert xattrs["user.ocifs.digest"] == ORAS_DIR["digest"].encode()
    assert tree.file_xattrs(tree.lookup(ROOT_INODE, "README.md").inode)["user.ocifs.kind"] == b"plain"
    assert tree.file_xattrs(tree.lookup(ROOT_INODE, "model.bin").inode)["user.ocifs.kind"] == b"chunked"


def test_R20_the_builder_writes_plain_files_only() -> None:
    with pytest.raises(FormatError, match="plain files only"):
        build_manifest([PlainFile("d", 1, Digest.of_bytes(b"x"), kind=KIND_ORAS_DIRECTORY)])
