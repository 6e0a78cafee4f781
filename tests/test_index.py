"""Tests of ocifs.format: the wire format of docs/spec.md, built, parsed, refused and mapped.

One small test per reader rule of spec §8 (the rule number is in the test name or id), round
trips from builder to parser, the worked example of the spec checked byte for byte, and
hypothesis properties: ``spans`` covers exactly what was asked, and the parsers raise nothing
but FormatError (IntegrityError for a wrong index digest) whatever the input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ocifs.format as format_package
from ocifs.digest import Digest
from ocifs.errors import FormatError, IntegrityError
from ocifs.format import checks as checks_module
from ocifs.format import parse as parse_module
from ocifs.format.build import build_chunk_index, build_manifest, chunked_file, fixed_layout, is_chunked
from ocifs.format.media import (
    ANNOTATION_DIGEST,
    ANNOTATION_TITLE,
    DEFAULT_ARTIFACT_TYPE,
    DEFAULT_CHUNK_SIZE,
    EMPTY_BLOB_DIGEST,
    EMPTY_JSON_DIGEST,
    MAX_CHUNK_SIZE,
    MAX_INDEX_BYTES,
    MAX_LAYERS,
    MAX_MANIFEST_BYTES,
    MEDIA_TYPE_CHUNK,
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_EMPTY,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_MANIFEST,
)
from ocifs.format.model import (
    EMPTY_CONFIG_DATA,
    EMPTY_DESCRIPTOR,
    ChunkedEntry,
    ChunkedFile,
    ChunkIndex,
    ChunkRef,
    Descriptor,
    PlainFile,
)
from ocifs.format.parse import parse_chunk_index, parse_descriptor, parse_manifest
from ocifs.format.paths import check_paths, part_title, validate_path
from ocifs.format.plan import plan_chunk_size

MiB = 1024 * 1024
SPEC = Path(__file__).resolve().parent.parent / "docs" / "spec.md"
SHA512 = "sha512:" + "ab" * 64


# --- helpers ----------------------------------------------------------------------------------------


def fake_digest(label: str) -> Digest:
    return Digest.of_bytes(label.encode())


def make_index(sizes: list[int], label: str = "f", file_digest: bool = True) -> ChunkIndex:
    refs, offset = [], 0
    for n, size in enumerate(sizes):
        refs.append(ChunkRef(fake_digest(f"{label}-{n}"), size, offset))
        offset += size
    return build_chunk_index(offset, refs, file_digest=fake_digest(label) if file_digest else None)


def plain(path: str, content: bytes = b"hello\n", media_type: str = "text/plain") -> PlainFile:
    return PlainFile(path, len(content), Digest.of_bytes(content), media_type)


BIG = make_index([4 * MiB, 4 * MiB, 2 * MiB], "big")


def valid_manifest() -> dict[str, Any]:
    """A manifest with a chunked file (layers 0-3), a plain file (4) and a foreign layer (5)."""
    data = build_manifest([ChunkedEntry("models/big.bin", BIG), plain("README.md")])
    doc: dict[str, Any] = json.loads(data)
    doc["layers"].append({"mediaType": "application/vnd.example.blob", "digest": str(fake_digest("x")), "size": 3})
    return doc


def dump(doc: object) -> bytes:
    return json.dumps(doc).encode()


def refused(data: bytes, *fragments: str, **kwargs: Any) -> FormatError:
    with pytest.raises(FormatError) as info:
        parse_manifest(data, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return info.value


def mutated(change: Callable[[dict[str, Any]], object]) -> bytes:
    doc = valid_manifest()
    change(doc)
    return dump(doc)


def layer(i: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda doc: doc["layers"][i]  # type: ignore[no-any-return]


def setitem(obj: dict[str, Any] | list[Any], key: Any, value: Any) -> None:
    obj[key] = value


def chunked_parsed() -> ChunkedFile:
    f = parse_manifest(dump(valid_manifest())).files[0]
    assert isinstance(f, ChunkedFile)
    return f


def index_refused(doc: object, *fragments: str, expected: ChunkedFile | None = None) -> None:
    """parse_chunk_index of ``doc`` against a descriptor that does match its bytes."""
    data = doc if isinstance(doc, bytes) else dump(doc)
    base = expected or chunked_parsed()
    desc = Descriptor(MEDIA_TYPE_CHUNK_INDEX, Digest.of_bytes(data), len(data), base.index.annotations)
    target = ChunkedFile(base.path, base.size, base.file_digest, desc, base.chunks)
    with pytest.raises(FormatError) as info:
        parse_chunk_index(data, target)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def valid_index_doc() -> dict[str, Any]:
    return json.loads(BIG.to_bytes())  # type: ignore[no-any-return]


def parse_index_doc(doc: object, base: ChunkedFile | None = None) -> ChunkIndex:
    data = dump(doc)
    base = base or chunked_parsed()
    desc = Descriptor(MEDIA_TYPE_CHUNK_INDEX, Digest.of_bytes(data), len(data), base.index.annotations)
    return parse_chunk_index(data, ChunkedFile(base.path, base.size, base.file_digest, desc, base.chunks))


# --- the spec's worked example ----------------------------------------------------------------------


def example() -> tuple[bytes, ChunkIndex, bytes]:
    """The example of docs/spec.md §10: (manifest bytes, chunk index, model.bin content)."""
    content = numpy.arange(10 * MiB, dtype=">u4").tobytes()  # 40 MiB: 0, 1, 2... as big-endian uint32
    refs = [ChunkRef(Digest.of_bytes(content[o : o + n]), n, o) for o, n in fixed_layout(len(content), 16 * MiB)]
    index = build_chunk_index(len(content), refs, file_digest=Digest.of_bytes(content))
    readme = b"# Example\n\nmodel.bin is 40 MiB stored as three chunks.\n"
    manifest = build_manifest(
        [
            ChunkedEntry("model.bin", index),
            PlainFile("README.md", len(readme), Digest.of_bytes(readme), "text/markdown"),
        ]
    )
    return manifest, index, content


def test_spec_example_is_exactly_what_the_builder_writes() -> None:
    manifest, index, content = example()
    spec = SPEC.read_text()
    assert json.dumps(json.loads(manifest), indent=2) in spec
    assert json.dumps(json.loads(index.to_bytes()), indent=2) in spec
    assert str(Digest.of_bytes(manifest)) in spec
    assert f"{len(manifest)} bytes" in spec
    assert str(Digest.of_bytes(index.to_bytes())) in spec
    assert str(Digest.of_bytes(content)) in spec
    artifact = parse_manifest(manifest)
    big = artifact.files[0]
    assert isinstance(big, ChunkedFile)
    assert parse_chunk_index(index.to_bytes(), big) == index
    # Old clients: the parts, concatenated in title order, are the file.
    parts = sorted(big.chunks, key=lambda d: d.title or "")
    assert b"".join(content[r.offset : r.end] for r in index.chunks) == content
    assert [p.digest for p in parts] == [r.digest for r in index.chunks]


def test_spec_names_every_rule_the_code_checks() -> None:
    spec = SPEC.read_text()
    code = "".join(p.read_text() for p in Path(format_package.__file__).parent.glob("*.py"))
    for rule in sorted(set(re.findall(r"\bR(\d+)\b", code)), key=int):
        assert re.search(rf"\*\*R{rule}\*\*", spec), f"R{rule} is checked in ocifs/format/ but not defined in spec.md"
    for rule in re.findall(r"\*\*R(\d+)\*\*", spec):
        assert re.search(rf"\bR{rule}\b", code), f"spec rule R{rule} has no check in ocifs/format/"


# --- round trips -------------------------------------------------------------------------------------


def test_build_then_parse_round_trips() -> None:
    small = plain("docs/a.txt")
    empty = PlainFile("empty", 0, EMPTY_BLOB_DIGEST)
    data = build_manifest([ChunkedEntry("m/big.bin", BIG), small, empty], annotations={"org.example": "yes"})
    artifact = parse_manifest(data)
    assert artifact.manifest_digest == Digest.of_bytes(data)
    assert artifact.artifact_type == DEFAULT_ARTIFACT_TYPE
    assert artifact.config == EMPTY_DESCRIPTOR
    assert artifact.annotations == {"org.example": "yes"}
    assert artifact.files == (chunked_file("m/big.bin", BIG), small, empty)
    assert artifact.skipped == ()
    by_path = {f.path: f for f in artifact.files}
    assert by_path["docs/a.txt"] == small and "docs" not in by_path  # a directory is no file
    assert artifact.total_size == BIG.size + small.size
    big = artifact.files[0]
    assert isinstance(big, ChunkedFile)
    assert parse_chunk_index(BIG.to_bytes(), big) == BIG
    # The manifest alone implies the layout: its chunk layers, at the running sums of their sizes.
    offsets = list(accumulate((d.size for d in big.chunks), initial=0))
    assert tuple(ChunkRef(d.digest, d.size, o) for d, o in zip(big.chunks, offsets[:-1], strict=True)) == BIG.chunks
    assert offsets[-1] == big.size == BIG.size


def test_manifest_bytes_are_canonical() -> None:
    data = build_manifest([plain("a")])
    doc = json.loads(data)
    assert data == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert doc["mediaType"] == MEDIA_TYPE_MANIFEST and doc["schemaVersion"] == 2
    assert doc["config"] == {"mediaType": MEDIA_TYPE_EMPTY, "digest": str(EMPTY_JSON_DIGEST), "size": 2}
    assert Digest.of_bytes(EMPTY_CONFIG_DATA) == EMPTY_JSON_DIGEST


def test_chunk_layers_follow_their_index_with_part_titles_and_the_index_has_no_title() -> None:
    layers = json.loads(build_manifest([ChunkedEntry("d/f.bin", BIG)]))["layers"]
    assert [x["mediaType"] for x in layers] == [MEDIA_TYPE_CHUNK_INDEX] + [MEDIA_TYPE_CHUNK] * 3
    assert layers[0]["annotations"] == {
        "dev.ocifs.path": "d/f.bin",
        "dev.ocifs.size": str(BIG.size),
        "dev.ocifs.digest": str(BIG.file_digest),
    }
    assert [x["annotations"] for x in layers[1:]] == [
        {"org.opencontainers.image.title": f"d/f.bin.part-0000{n}"} for n in range(3)
    ]
    assert layers[0]["digest"] == str(Digest.of_bytes(BIG.to_bytes()))


def test_index_without_file_digest_omits_annotation_and_field() -> None:
    index = make_index([3, 2], file_digest=False)
    assert "fileDigest" not in json.loads(index.to_bytes())
    f = parse_manifest(build_manifest([ChunkedEntry("f", index)])).files[0]
    assert isinstance(f, ChunkedFile) and f.file_digest is None
    assert ANNOTATION_DIGEST not in f.index.annotations
    assert parse_chunk_index(index.to_bytes(), f) == index


def test_index_blob_does_not_name_the_path_so_identical_files_share_it() -> None:
    a = chunked_file("a.bin", BIG)
    b = chunked_file("b/c.bin", BIG)
    assert a.index.digest == b.index.digest
    assert b"a.bin" not in BIG.to_bytes()


def test_repeated_chunk_content_is_allowed() -> None:
    same = fake_digest("zeros")
    index = build_chunk_index(6, [(same, 3, 0), (same, 3, 3)])
    f = parse_manifest(build_manifest([ChunkedEntry("zeros", index)])).files[0]
    assert isinstance(f, ChunkedFile)
    assert parse_chunk_index(index.to_bytes(), f) == index


def test_descriptor_json_round_trip_and_immutability() -> None:
    d = Descriptor("text/plain", fake_digest("d"), 5, {"k": "v"})
    assert parse_descriptor(d.to_json()) == d
    assert hash(d) == hash(Descriptor("text/plain", fake_digest("d"), 5, {"other": "x"}))
    with pytest.raises(TypeError):
        d.annotations["k"] = "w"  # type: ignore[index]
    assert "annotations" not in Descriptor("text/plain", fake_digest("d"), 5).to_json()


def test_docker_manifest_and_missing_media_type_are_read() -> None:
    docker = parse_manifest(mutated(lambda doc: setitem(doc, "mediaType", MEDIA_TYPE_DOCKER_MANIFEST)))
    assert docker.media_type == MEDIA_TYPE_DOCKER_MANIFEST and len(docker.files) == 2
    bare = parse_manifest(mutated(lambda doc: doc.pop("mediaType")))
    assert bare.media_type == MEDIA_TYPE_MANIFEST and len(bare.files) == 2


# --- reader rules on the manifest ----------------------------------------------------------------


def test_R1_manifest_size_is_checked_before_parsing() -> None:
    refused(b"x" * (MAX_MANIFEST_BYTES + 1), "above the limit of 4194304")


def test_R2_not_utf8() -> None:
    refused(b'{"a":"\xff"}', "not UTF-8")


def test_R2_byte_order_mark() -> None:
    refused(b"\xef\xbb\xbf" + dump(valid_manifest()), "not valid JSON")


def test_R2_not_json() -> None:
    refused(b'{"schemaVersion": 2,', "manifest is not valid JSON")


def test_R2_deep_nesting() -> None:
    refused(b"[" * 200_000, "nested too deeply")
    refused(b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply")


def test_R2_duplicate_keys() -> None:
    data = dump(valid_manifest())
    refused(data[:-1] + b', "layers": []}', "duplicate JSON key 'layers'")


def test_R2_nan() -> None:
    refused(mutated(lambda doc: setitem(layer(4)(doc), "size", float("nan"))), "NaN")


def test_R2_huge_integer_literal() -> None:
    refused(b'{"schemaVersion": ' + b"9" * 5000 + b"}", "not valid JSON")


def test_R3_unknown_fields_are_ignored() -> None:
    def add(doc: dict[str, Any]) -> None:
        doc["future"] = {"x": [1, 2]}
        doc["subject"] = {"anything": True}
        doc["layers"][0]["urls"] = ["https://example.com"]
        doc["layers"][1]["data"] = "e30="
        doc["config"]["platform"] = {}

    artifact = parse_manifest(mutated(add))
    assert [f.path for f in artifact.files] == ["models/big.bin", "README.md"]


def test_R4_top_level_must_be_object() -> None:
    refused(b"[]", "manifest must be a JSON object, got an array")


@pytest.mark.parametrize("version", [None, 1, 3, True, "2", 2.0])
def test_R4_schema_version(version: object) -> None:
    refused(mutated(lambda doc: setitem(doc, "schemaVersion", version)), "schemaVersion")


def test_R4_image_index_is_named_as_such() -> None:
    refused(mutated(lambda doc: setitem(doc, "mediaType", MEDIA_TYPE_IMAGE_INDEX)), "image index")
    refused(dump({"schemaVersion": 2, "manifests": []}), "image index")


def test_R4_other_media_type() -> None:
    refused(mutated(lambda doc: setitem(doc, "mediaType", "application/json")), "'application/json'", "mediaType")
    refused(mutated(lambda doc: setitem(doc, "mediaType", 7)), "mediaType 7")


def test_R5_config_required() -> None:
    refused(mutated(lambda doc: doc.pop("config")), "manifest config must be a JSON object")


def test_R5_layers_required_and_an_array() -> None:
    refused(mutated(lambda doc: doc.pop("layers")), "manifest layers must be an array, got null")
    refused(mutated(lambda doc: setitem(doc, "layers", {})), "manifest layers must be an array, got an object")


def test_R5_layer_cap() -> None:
    refused(dump(valid_manifest()), "6 layers, above the limit of 5", max_layers=5)


def test_R5_artifact_type_and_annotations() -> None:
    refused(mutated(lambda doc: setitem(doc, "artifactType", "nonsense")), "artifactType", "'nonsense'")
    refused(mutated(lambda doc: setitem(doc, "annotations", {"k": 1})), "manifest annotations", "'k'")
    refused(mutated(lambda doc: setitem(doc, "annotations", [])), "manifest annotations must be a JSON object")


# Refused on every descriptor. An unknown digest algorithm is refused on the config only: a layer
# with one is unrecognised and skipped (R19, tests/test_format_fixes.py).
DESCRIPTOR_CASES = [
    ("mediaType", None, "mediaType: missing"),
    ("mediaType", "text", "'text' is not a media type"),
    ("mediaType", "text/plain\n", "is not a media type"),
    ("mediaType", 5, "mediaType must be a string"),
    ("digest", None, "digest must be a string"),
    ("digest", "sha256:xyz", "malformed digest"),
    ("digest", "sha256:" + "A" * 64, "malformed digest"),
    ("digest", "sha256:" + "a" * 64 + "\n", "malformed digest"),
    ("digest", "sha256:" + "a" * 63, "wrong length"),
    ("size", -1, "size -1 outside"),
    ("size", True, "size must be an integer, got a boolean"),
    ("size", 5.0, "size must be an integer, got a number"),
    ("size", "5", "size must be an integer, got a string"),
    ("size", 2**63, "outside 0..9223372036854775807"),
    ("annotations", [], "annotations must be a JSON object"),
    ("annotations", {"org.opencontainers.image.title": None}, "must be a string, got null"),
]
UNKNOWN_ALGORITHM = ("digest", "md5:" + "a" * 32, "unsupported digest algorithm")


@pytest.mark.parametrize(("field", "value", "fragment"), DESCRIPTOR_CASES)
def test_R6_descriptor_fields(field: str, value: object, fragment: str) -> None:
    refused(mutated(lambda doc: setitem(layer(4)(doc), field, value)), "manifest layers[4]", fragment)


def test_R6_descriptor_must_be_object() -> None:
    refused(mutated(lambda doc: setitem(doc["layers"], 2, "x")), "manifest layers[2] must be a JSON object")


def test_R6_config_descriptor_fields_too() -> None:
    refused(mutated(lambda doc: setitem(doc["config"], "size", -2)), "manifest config size -2")


@pytest.mark.parametrize(("field", "value", "fragment"), [*DESCRIPTOR_CASES, UNKNOWN_ALGORITHM])
def test_R6_config_descriptor_fields(field: str, value: object, fragment: str) -> None:
    refused(mutated(lambda doc: setitem(doc["config"], field, value)), "manifest config", fragment)


def test_R6_unknown_digest_algorithm_of_a_layer_is_R19_not_R6() -> None:
    field, value, _ = UNKNOWN_ALGORITHM
    artifact = parse_manifest(mutated(lambda doc: setitem(layer(4)(doc), field, value)))
    assert [f.path for f in artifact.files] == ["models/big.bin"]
    assert artifact.unrecognised == ("manifest layers[4]: digest algorithm 'md5' is not one a reader verifies",)


def annotation(doc: dict[str, Any], key: str, value: str | None) -> None:
    annotations = doc["layers"][0]["annotations"]
    if value is None:
        del annotations[key]
    else:
        annotations[key] = value


def test_R7_index_needs_path_annotation() -> None:
    refused(mutated(lambda doc: annotation(doc, "dev.ocifs.path", None)), "layers[0]", "dev.ocifs.path")


def test_R7_index_path_is_validated() -> None:
    refused(mutated(lambda doc: annotation(doc, "dev.ocifs.path", "../etc/passwd")), "layers[0]", "'..'")


def test_R7_index_title_is_ignored() -> None:
    artifact = parse_manifest(mutated(lambda doc: annotation(doc, ANNOTATION_TITLE, "other")))
    assert artifact.files[0].path == "models/big.bin"


def test_R7_index_needs_size_annotation() -> None:
    refused(mutated(lambda doc: annotation(doc, "dev.ocifs.size", None)), "models/big.bin", "dev.ocifs.size: missing")


@pytest.mark.parametrize("value", ["", "1e7", "+10", "010", " 10", "10 ", "١٠", "0x10", "-1", "9" * 20])
def test_R7_size_annotation_is_a_canonical_decimal(value: str) -> None:
    refused(mutated(lambda doc: annotation(doc, "dev.ocifs.size", value)), "dev.ocifs.size", "not a decimal size")


def test_R7_size_annotation_above_cap() -> None:
    refused(mutated(lambda doc: annotation(doc, "dev.ocifs.size", str(2**63))), "not a decimal size")


def test_R7_size_annotation_zero() -> None:
    refused(mutated(lambda doc: annotation(doc, "dev.ocifs.size", "0")), "size 0", "plain layer")


def test_R7_digest_annotation() -> None:
    refused(mutated(lambda doc: annotation(doc, "dev.ocifs.digest", "sha256:1")), "dev.ocifs.digest", "malformed")
    refused(mutated(lambda doc: annotation(doc, "dev.ocifs.digest", SHA512)), "dev.ocifs.digest", "sha256")


def test_R7_index_blob_must_be_sha256() -> None:
    refused(mutated(lambda doc: setitem(layer(0)(doc), "digest", SHA512)), "layers[0]", "not sha256")


@pytest.mark.parametrize("size", [0, MAX_INDEX_BYTES + 1])
def test_R7_index_blob_size(size: int) -> None:
    refused(mutated(lambda doc: setitem(layer(0)(doc), "size", size)), "index of 'models/big.bin'", f"size {size}")


def test_R8_index_needs_chunks() -> None:
    refused(mutated(lambda doc: setitem(doc, "layers", doc["layers"][:1])), "no chunk layers follow")
    refused(mutated(lambda doc: setitem(doc, "layers", doc["layers"][:1] + doc["layers"][4:])), "no chunk layers")


def test_R8_chunk_digest_must_be_sha256() -> None:
    refused(mutated(lambda doc: setitem(layer(2)(doc), "digest", SHA512)), "layers[2] (chunk 1 of", "not sha256")


@pytest.mark.parametrize("size", [0, MAX_CHUNK_SIZE + 1])
def test_R8_chunk_size_bounds(size: int) -> None:
    refused(mutated(lambda doc: setitem(layer(3)(doc), "size", size)), "layers[3] (chunk 2 of", f"size {size} outside")


def test_R8_chunks_must_sum_to_size_annotation() -> None:
    refused(mutated(lambda doc: setitem(layer(3)(doc), "size", 1)), "sum to 8388609 bytes", "dev.ocifs.size")


def test_R8_chunk_count_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    data = dump(valid_manifest())
    monkeypatch.setattr(parse_module, "MAX_CHUNKS", 2)
    refused(data, "3 chunk layers, above the limit of 2")


def test_R9_orphan_chunk_layer() -> None:
    refused(mutated(lambda doc: doc["layers"].pop(0)), "manifest layers[0]", "does not follow a chunk-index")
    refused(mutated(lambda doc: doc["layers"].append(doc["layers"][1])), "manifest layers[6]", "chunk layer")


def test_R10_titled_layer_is_a_plain_file_whatever_its_media_type() -> None:
    def retype(doc: dict[str, Any]) -> None:
        doc["layers"][4]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"

    f = parse_manifest(mutated(retype)).files[1]
    assert f == PlainFile("README.md", 6, Digest.of_bytes(b"hello\n"), "application/vnd.oci.image.layer.v1.tar+gzip")


def test_R10_title_is_validated() -> None:
    refused(
        mutated(lambda doc: setitem(layer(4)(doc)["annotations"], ANNOTATION_TITLE, "/etc/passwd")),
        "layers[4] title",
        "absolute",
    )


def test_R10_empty_file_must_name_the_empty_blob() -> None:
    refused(mutated(lambda doc: setitem(layer(4)(doc), "size", 0)), "'README.md'", "not the empty blob")

    def empty(doc: dict[str, Any]) -> None:
        doc["layers"][4].update(size=0, digest=str(EMPTY_BLOB_DIGEST))

    assert parse_manifest(mutated(empty)).files[1].size == 0


def test_R11_untitled_foreign_layers_are_skipped() -> None:
    artifact = parse_manifest(dump(valid_manifest()))
    assert [d.media_type for d in artifact.skipped] == ["application/vnd.example.blob"]
    assert len(artifact.files) == 2


def test_R12_duplicate_paths() -> None:
    refused(mutated(lambda doc: doc["layers"].append(doc["layers"][4])), "'README.md' appears twice")

    def clash(doc: dict[str, Any]) -> None:
        layer(4)(doc)["annotations"][ANNOTATION_TITLE] = "models/big.bin"

    refused(mutated(clash), "'models/big.bin' appears twice")


def test_R12_file_and_directory() -> None:
    def clash(doc: dict[str, Any]) -> None:
        layer(4)(doc)["annotations"][ANNOTATION_TITLE] = "models"

    refused(mutated(clash), "'models' is both a file and a directory")


# --- R13: paths --------------------------------------------------------------------------------------

BAD_PATHS = [
    ("", "empty"),
    ("/abs", "absolute"),
    ("a//b", "empty component"),
    ("a/", "empty component"),
    ("./a", "'.' component"),
    ("a/./b", "'.' component"),
    ("..", "'..' component"),
    ("../x", "'..' component"),
    ("a/../b", "'..' component"),
    ("a\x00b", "control character"),
    ("a\nb", "control character"),
    ("a\x1bb", "control character"),
    ("a\x7fb", "control character"),
    ("a\x85b", "control character"),
    ("a\\b", "backslash"),
    ("..\\x", "backslash"),
    ("\ud800", "lone surrogate"),
    ("a" * 256, "longer than 255"),
    ("é" * 128, "longer than 255"),
    ("/".join(["d"] * 33), "deeper than 32"),
    ("/".join(["a" * 255] * 17), "longer than 4096"),
]


@pytest.mark.parametrize(("path", "fragment"), BAD_PATHS, ids=[repr(p)[:20] for p, _ in BAD_PATHS])
def test_R13_bad_paths(path: str, fragment: str) -> None:
    with pytest.raises(FormatError, match=re.escape(fragment)) as info:
        validate_path(path, "here")
    assert str(info.value).startswith("here: ")
    assert "\n" not in str(info.value) and "\x00" not in str(info.value)


@pytest.mark.parametrize("value", [None, 5, b"a", ["a"]])
def test_R13_path_must_be_a_string(value: object) -> None:
    with pytest.raises(FormatError, match="must be a string"):
        validate_path(value)


@pytest.mark.parametrize(
    "path",
    [
        "a",
        "a/b/c",
        "ünïcode/файл 文件",
        "..a",
        "a..",
        ".hidden",
        "a b",
        "a" * 255,
        "/".join(["d"] * 32),
        "/".join(["a" * 240] * 17),
    ],
)
def test_R13_good_paths(path: str) -> None:
    assert validate_path(path) == path


def test_R13_long_error_paths_are_shortened() -> None:
    with pytest.raises(FormatError) as info:
        validate_path("x" * 5000)
    assert len(str(info.value)) < 200


# --- reader rules on the chunk index --------------------------------------------------------------


def test_R1_index_size_cap_before_parsing() -> None:
    index_refused(b" " * (MAX_INDEX_BYTES + 1), "above the limit of 8388608")


def test_R1_index_length_must_match_descriptor() -> None:
    f = chunked_parsed()
    with pytest.raises(FormatError, match="bytes but its descriptor says"):
        parse_chunk_index(BIG.to_bytes() + b" ", f)


def test_R1_index_digest_must_match_descriptor() -> None:
    f = chunked_parsed()
    data = bytearray(BIG.to_bytes())
    data[-2] = ord("9")
    with pytest.raises(IntegrityError, match="does not match its digest"):
        parse_chunk_index(bytes(data), f)


def test_R2_index_json_rules() -> None:
    index_refused(b"{", "chunk index of 'models/big.bin' is not valid JSON")
    index_refused(b"[" * 100_000, "nested too deeply")
    index_refused(b'{"size": 1, "size": 1}', "duplicate JSON key 'size'")
    index_refused(b"\xfe", "not UTF-8")
    index_refused(b"[]", "must be a JSON object")


def test_R3_index_unknown_fields_are_ignored() -> None:
    doc = valid_index_doc()
    doc["future"] = [1]
    doc["chunks"][0]["hint"] = "x"
    assert parse_index_doc(doc) == BIG


@pytest.mark.parametrize("value", [None, "application/json", "application/vnd.ocifs.chunk-index.v2+json"])
def test_R14_index_media_type(value: object) -> None:
    doc = valid_index_doc()
    doc["mediaType"] = value
    index_refused(doc, "unsupported mediaType")


@pytest.mark.parametrize("value", [None, 0, 2, True, "1", 1.0])
def test_R14_index_schema_version(value: object) -> None:
    doc = valid_index_doc()
    doc["schemaVersion"] = value
    index_refused(doc, "unsupported schemaVersion")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(None, "must be an integer"), (True, "got a boolean"), (0, "size 0 outside"), (10 * MiB + 1, "the manifest says")],
)
def test_R15_index_size(value: object, fragment: str) -> None:
    doc = valid_index_doc()
    doc["size"] = value
    index_refused(doc, fragment)


@pytest.mark.parametrize(("value", "fragment"), [(None, "fileMediaType: missing"), ("bin", "not a media type")])
def test_R15_file_media_type(value: object, fragment: str) -> None:
    doc = valid_index_doc()
    doc["fileMediaType"] = value
    index_refused(doc, fragment)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("sha256:00", "malformed"),
        (SHA512, "sha512 digest where sha256 is required"),
        (str(fake_digest("other")), "but the manifest says"),
        (None, "digest must be a string"),
    ],
)
def test_R15_file_digest(value: object, fragment: str) -> None:
    doc = valid_index_doc()
    doc["fileDigest"] = value
    index_refused(doc, "fileDigest", fragment)


def test_R15_file_digest_from_either_side() -> None:
    doc = valid_index_doc()
    del doc["fileDigest"]
    assert parse_index_doc(doc).file_digest == BIG.file_digest  # the manifest's annotation is kept
    f = chunked_parsed()
    bare = ChunkedFile(f.path, f.size, None, f.index, f.chunks)
    assert parse_index_doc(valid_index_doc(), bare).file_digest == BIG.file_digest


def chunk_field(n: int, key: str, value: object) -> dict[str, Any]:
    doc = valid_index_doc()
    doc["chunks"][n][key] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({**valid_index_doc(), "chunks": None}, "chunks must be an array"),
        ({**valid_index_doc(), "chunks": {}}, "chunks must be an array"),
        ({**valid_index_doc(), "chunks": []}, "0 chunks, outside 1..99999"),
        ({**valid_index_doc(), "chunks": [5]}, "chunks[0] must be a JSON object"),
        (chunk_field(1, "digest", "sha256:zz"), "chunks[1] digest: malformed"),
        (chunk_field(1, "digest", SHA512), "chunks[1] digest: sha512"),
        (chunk_field(1, "size", 0), "chunks[1] size 0 outside"),
        (chunk_field(1, "size", False), "chunks[1] size must be an integer"),
        (chunk_field(1, "size", MAX_CHUNK_SIZE + 1), "chunks[1] size 1073741825 outside"),
        (chunk_field(1, "offset", -1), "chunks[1] offset -1 outside"),
        (chunk_field(1, "offset", 4.0 * MiB), "chunks[1] offset must be an integer"),
        (chunk_field(0, "offset", 1), "chunks[0]: offset 1, the first chunk must start at 0"),
        (chunk_field(1, "offset", 4 * MiB + 1), "chunks[1]: offset 4194305 leaves a gap"),
        (chunk_field(2, "offset", 8 * MiB - 1), "chunks[2]: offset 8388607 leaves an overlap"),
        (chunk_field(2, "size", 2 * MiB - 1), "chunks cover 10485759 bytes but size is 10485760"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_R16_chunk_layout(doc: dict[str, Any], fragment: str) -> None:
    index_refused(doc, fragment)


def test_R16_chunk_count_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = chunked_parsed()
    monkeypatch.setattr(checks_module, "MAX_CHUNKS", 2)
    index_refused(valid_index_doc(), "3 chunks, outside 1..2", expected=expected)


def test_R17_index_must_list_the_manifest_chunks() -> None:
    f = chunked_parsed()
    other = make_index([4 * MiB, 6 * MiB], "big")  # same size, fewer chunks
    index_refused(json.loads(other.to_bytes()), "2 chunks but the manifest has 3 chunk layers", expected=f)
    doc = valid_index_doc()
    doc["chunks"][1]["digest"] = str(fake_digest("evil"))
    index_refused(doc, "chunks[1]", "differs from the manifest's chunk layer")
    # Same digests, sizes in another order (offsets consistent): still refused.
    swapped = make_index([4 * MiB, 2 * MiB, 4 * MiB], "big")
    index_refused(json.loads(swapped.to_bytes()), "chunks[1]", "differs")


# --- builder ------------------------------------------------------------------------------------------


def test_build_refuses_duplicate_and_conflicting_paths() -> None:
    with pytest.raises(FormatError, match="'a' appears twice"):
        build_manifest([plain("a"), plain("a", b"other")])
    with pytest.raises(FormatError, match="'a' is both a file and a directory"):
        build_manifest([plain("a/b"), plain("a")])


def test_build_refuses_a_plain_file_named_like_a_part() -> None:
    with pytest.raises(FormatError, match=re.escape("'f.part-00001' is used twice")):
        build_manifest([ChunkedEntry("f", BIG), plain("f.part-00001")])


def test_build_refuses_bad_paths() -> None:
    with pytest.raises(FormatError, match=re.escape("'..'")):
        build_manifest([plain("../x")])
    with pytest.raises(FormatError, match="absolute"):
        build_manifest([ChunkedEntry("/x", BIG)])


def test_build_refuses_over_budget() -> None:
    with pytest.raises(FormatError, match="5 layers, above the layer budget of 4") as info:
        build_manifest([ChunkedEntry("f", BIG), plain("g")], layer_budget=4)
    assert info.value.hint and "chunk size" in info.value.hint
    with pytest.raises(ValueError):
        build_manifest([plain("g")], layer_budget=MAX_LAYERS + 1)


def test_build_refuses_over_4_mib() -> None:
    index = make_index([1] * 1000)
    with pytest.raises(FormatError, match="above the 4194304-byte limit"):
        build_manifest([ChunkedEntry("/".join(["p" * 200] * 20), index)])


def test_build_refuses_inconsistent_plain_files() -> None:
    with pytest.raises(FormatError, match="not the empty blob"):
        build_manifest([PlainFile("e", 0, fake_digest("x"))])
    with pytest.raises(FormatError, match="cannot use the media type"):
        build_manifest([plain("e", media_type=MEDIA_TYPE_CHUNK)])


def test_build_config_and_artifact_type() -> None:
    with pytest.raises(FormatError, match="artifactType is required"):
        build_manifest([plain("a")], artifact_type=None)
    config = Descriptor("application/vnd.example.config.v1+json", fake_digest("c"), 1)
    doc = json.loads(build_manifest([plain("a")], config=config, artifact_type=None))
    assert "artifactType" not in doc and doc["config"] == config.to_json()
    with pytest.raises(FormatError, match="artifactType"):
        build_manifest([plain("a")], artifact_type="bad")
    with pytest.raises(FormatError, match="config mediaType"):
        build_manifest([plain("a")], config=Descriptor("config", fake_digest("c"), 1))


@pytest.mark.parametrize(
    ("size", "chunks", "fragment"),
    [
        (3, [(fake_digest("a"), 3, 0)], None),
        (3, [], "0 chunks"),
        (0, [(fake_digest("a"), 3, 0)], "size 0 outside"),
        (3, [(Digest.parse(SHA512), 3, 0)], "not sha256"),
        (4, [(fake_digest("a"), 2, 0), (fake_digest("b"), 2, 1)], "overlap"),
        (5, [(fake_digest("a"), 2, 0), (fake_digest("b"), 2, 3)], "gap"),
        (5, [(fake_digest("a"), 2, 0), (fake_digest("b"), 2, 2)], "cover 4 bytes but size is 5"),
        (2, [(fake_digest("a"), 0, 0), (fake_digest("b"), 2, 0)], "size 0 outside"),
        (2**31, [(fake_digest("a"), 2**31, 0)], "outside 1..1073741824"),
    ],
)
def test_build_chunk_index_validates(size: int, chunks: list[tuple[Digest, int, int]], fragment: str | None) -> None:
    if fragment is None:
        assert build_chunk_index(size, chunks).size == size
    else:
        with pytest.raises(FormatError, match=fragment):
            build_chunk_index(size, chunks)


def test_build_chunk_index_file_digest_must_be_sha256() -> None:
    with pytest.raises(FormatError, match="fileDigest"):
        build_chunk_index(1, [(fake_digest("a"), 1, 0)], file_digest=Digest.parse(SHA512))


def test_part_title() -> None:
    assert part_title("a/b.bin", 0, 3) == "a/b.bin.part-00000"
    assert part_title("x", 99998, 99999) == "x.part-99998"
    assert part_title("x", 5, 100_001) == "x.part-000005"
    with pytest.raises(ValueError):
        part_title("x", 3, 3)


def test_fixed_layout_and_is_chunked() -> None:
    assert fixed_layout(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert fixed_layout(8, 4) == [(0, 4), (4, 4)]
    assert fixed_layout(0, 4) == []
    assert not is_chunked(16 * MiB, 16 * MiB) and is_chunked(16 * MiB + 1, 16 * MiB)


def test_plan_chunk_size() -> None:
    assert plan_chunk_size([("a", 10)]) == DEFAULT_CHUNK_SIZE
    assert plan_chunk_size([("m", 100 * 1024**3)]) == 16 * MiB  # 6,400 chunks
    assert plan_chunk_size([("m", 1024**4)]) == 128 * MiB  # 8,192 chunks, not 65,536
    assert plan_chunk_size([("m", 1024**4)], layer_budget=1100) == 1024 * MiB
    with pytest.raises(FormatError, match="1025 layers, above the layer budget of 300 even with"):
        plan_chunk_size([("m", 1024**4)], layer_budget=300)
    with pytest.raises(FormatError, match="11 layers, above the layer budget of 10"):
        plan_chunk_size([(f"f{n}", 1) for n in range(11)], layer_budget=10)
    with pytest.raises(FormatError, match="manifest bytes, above the 4194304-byte manifest limit"):
        plan_chunk_size([("/".join(["p" * 250] * 16) + str(n), 1) for n in range(1100)])


@pytest.mark.expected_log(r"file name is 250 bytes", count=1)  # spec §6.4: part names over 255 bytes
def test_plan_chunk_size_keeps_long_paths_under_4_mib() -> None:
    path = "/".join(["p" * 250] * 8)  # ~2 KB per chunk descriptor
    size = 50 * 1024**3
    chunk_size = plan_chunk_size([(path, size)])
    assert chunk_size > 16 * MiB  # 3,200 chunks of 2 KB would exceed 4 MiB
    layout = fixed_layout(size, chunk_size)
    index = build_chunk_index(size, [(fake_digest(str(o)), n, o) for o, n in layout], file_digest=fake_digest("f"))
    assert len(build_manifest([ChunkedEntry(path, index)])) <= MAX_MANIFEST_BYTES


# --- spans --------------------------------------------------------------------------------------------


def test_spans_examples() -> None:
    index = make_index([4, 4, 2])
    assert [(s.chunk_index, s.start, s.end) for s in index.spans(0, 10)] == [(0, 0, 4), (1, 0, 4), (2, 0, 2)]
    assert [(s.chunk_index, s.start, s.end) for s in index.spans(3, 2)] == [(0, 3, 4), (1, 0, 1)]
    assert [(s.chunk_index, s.start, s.end) for s in index.spans(8, 100)] == [(2, 0, 2)]
    assert index.spans(10, 1) == [] and index.spans(3, 0) == [] and index.spans(99, 5) == []
    # The chunk holding one byte: the first and last byte of each chunk, none past the end.
    assert [index.spans(o, 1)[0].chunk_index for o in (0, 3, 4, 7, 8, 9)] == [0, 0, 1, 1, 2, 2]
    assert index.spans(10, 1) == [] and index.spans(9, 5) == [index.spans(9, 1)[0]]
    with pytest.raises(ValueError):
        index.spans(-1, 3)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=40),
    offset=st.integers(0, 3000),
    length=st.integers(0, 3000),
)
def test_spans_cover_exactly_the_requested_range(sizes: list[int], offset: int, length: int) -> None:
    index = make_index(sizes)
    spans = index.spans(offset, length)
    end = min(offset + length, index.size)
    position = offset
    for span in spans:
        assert 0 <= span.start < span.end <= span.chunk.size
        assert span.chunk is index.chunks[span.chunk_index]
        assert span.chunk.offset + span.start == position
        position += span.length
    if spans:
        assert position == end
    else:
        assert offset >= index.size or length == 0
    if offset < index.size and length:
        assert spans[0].chunk.offset <= offset < spans[0].chunk.end  # starts in the chunk holding offset


# --- fuzzing: hostile input raises FormatError and nothing else ---------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            MEDIA_TYPE_CHUNK_INDEX,
            MEDIA_TYPE_CHUNK,
            MEDIA_TYPE_MANIFEST,
            ANNOTATION_TITLE,
            str(fake_digest("q")),
            "a/b",
            "..",
            "3",
        ]
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def only_format_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except FormatError as exc:
        assert "\n" not in str(exc)


def node_paths(value: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += node_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            paths += node_paths(item, (*prefix, n))
    return paths


def mutate(doc: Any, data: st.DataObject) -> Any:
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(node_paths(doc)))
        if not target:
            return data.draw(json_values)
        parent = doc
        for key in target[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[target[-1]]
        else:
            parent[target[-1]] = data.draw(json_values)
    return doc


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(json_values)
def test_fuzz_parse_manifest_any_json(value: object) -> None:
    only_format_errors(lambda: parse_manifest(json.dumps(value).encode()))


@FUZZ
@given(st.data())
def test_fuzz_parse_manifest_mutated(data: st.DataObject) -> None:
    doc = mutate(valid_manifest(), data)
    only_format_errors(lambda: parse_manifest(json.dumps(doc).encode()))


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 2000), st.integers(0, 64))
def test_fuzz_parse_manifest_spliced_bytes(junk: bytes, at: int, cut: int) -> None:
    data = dump(valid_manifest())
    only_format_errors(lambda: parse_manifest(data[:at] + junk + data[at + cut :]))


@FUZZ
@given(st.data())
def test_fuzz_parse_chunk_index_mutated(data: st.DataObject) -> None:
    doc = mutate(valid_index_doc(), data)
    only_format_errors(lambda: parse_index_doc(doc))


# --- property: any artifact the builder writes, the parser reads back ---------------------------------

components = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/\\"), min_size=1, max_size=8
).filter(lambda c: c not in (".", ".."))


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.lists(components, min_size=1, max_size=3).map("/".join),
        st.one_of(st.integers(0, 50), st.lists(st.integers(1, 20), min_size=1, max_size=6)),
        min_size=1,
        max_size=6,
    )
)
def test_round_trip_property(files: dict[str, int | list[int]]) -> None:
    paths = list(files)
    try:
        check_paths(paths)
    except FormatError:
        return  # a file that is also another's directory: not a valid input
    entries: list[ChunkedEntry | PlainFile] = []
    for path, spec in files.items():
        if isinstance(spec, int):
            content = bytes(spec)
            entries.append(PlainFile(path, spec, Digest.of_bytes(content)))
        else:
            entries.append(ChunkedEntry(path, make_index(spec, path)))
    titles = {
        part_title(e.path, n, len(e.index.chunks))
        for e in entries
        if isinstance(e, ChunkedEntry)
        for n in range(len(e.index.chunks))
    }
    if titles & set(paths):
        return  # a plain file named like another file's part: the builder refuses it (tested above)
    chunked = {e.path for e in entries if isinstance(e, ChunkedEntry)}
    if any(p.startswith(c + ".part-") for p in paths for c in chunked):
        return  # a file named like a part of a chunked file: refused by R18 (tests/test_format_fixes.py)
    artifact = parse_manifest(build_manifest(entries))
    assert [f.path for f in artifact.files] == paths
    for entry, f in zip(entries, artifact.files, strict=True):
        if isinstance(entry, ChunkedEntry):
            assert isinstance(f, ChunkedFile)
            assert parse_chunk_index(entry.index.to_bytes(), f) == entry.index
        else:
            assert f == entry
