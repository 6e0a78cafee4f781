"""Checks of JSON values from untrusted bytes, shared by the parser and the builder (so a
builder never writes what a reader would refuse). Each raises
:class:`~ocifs.errors.FormatError` with a message that starts with ``where``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ocifs.digest import Digest
from ocifs.errors import FormatError, InvalidDigest
from ocifs.format.media import MAX_CHUNKS, MAX_FILE_SIZE, VERIFIED_DIGEST_ALGORITHMS
from ocifs.format.messages import json_type, show
from ocifs.format.model import ChunkRef

# image-spec schema/defs-descriptor.json "mediaType" pattern (RFC 6838 type/subtype names).
_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
# A media type followed by parameters (RFC 6838 §4.3, RFC 9110 §8.3.1: `type/subtype; name=value`).
_MEDIA_TYPE_WITH_PARAMETERS_RE = re.compile(_MEDIA_TYPE_RE.pattern + r"[ \t]*;.*", re.DOTALL)
# image-spec descriptor.md "Digests": the grammar of every digest, whatever its algorithm.
_DIGEST_GRAMMAR_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]{0,18}")  # ASCII only: \d would accept other scripts' digits


def check_layout(size: int, refs: Sequence[ChunkRef], where: str) -> None:
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


def load_json(data: bytes, what: str, limit: int) -> object:
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
        return json.loads(text, object_pairs_hook=unique_keys, parse_constant=no_constant)
    except RecursionError:
        raise FormatError(f"{what} is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        raise FormatError(f"{what} is not valid JSON: {show(str(exc))}") from None


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that keep different duplicates would see different artifacts: refuse them.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise FormatError(f"duplicate JSON key {show(key)}")
        obj[key] = value
    return obj


def no_constant(name: str) -> Any:
    raise FormatError(f"{name} is not a JSON number")


def check_object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"{where} must be a JSON object, got {json_type(value)}")
    return value


def check_integer(value: object, where: str, low: int, high: int) -> int:
    # type() rather than isinstance(): JSON true/false parse to bool, a subclass of int.
    if type(value) is not int:
        raise FormatError(f"{where} must be an integer, got {json_type(value)}")
    if not low <= value <= high:
        raise FormatError(f"{where} {value} outside {low}..{high}")
    return value


def check_decimal(value: object, where: str) -> int:
    """A size written as an annotation: canonical ASCII decimal, 0 .. 2**63-1."""
    if not isinstance(value, str):
        raise FormatError(f"{where}: missing or null" if value is None else f"{where}: must be a string")
    if _DECIMAL_RE.fullmatch(value) is None or int(value) > MAX_FILE_SIZE:
        raise FormatError(f"{where}: {show(value)} is not a decimal size in 0..{MAX_FILE_SIZE}")
    return int(value)


def check_digest(value: object, where: str, sha256_only: bool = False) -> Digest:
    try:
        digest = Digest.parse(value)
    except InvalidDigest as exc:
        raise FormatError(f"{where}: {exc.message}") from None
    if str(digest) != value:  # Digest.parse tolerates a trailing newline; the format does not
        raise FormatError(f"{where}: malformed digest {show(str(value))}")
    if sha256_only and digest.algorithm != "sha256":
        raise FormatError(f"{where}: {digest.algorithm} digest where sha256 is required")
    return digest


def check_media_type(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where}: missing or null" if value is None else f"{where} must be a string")
    if _MEDIA_TYPE_RE.fullmatch(value) is None:
        raise FormatError(f"{where}: {show(value)} is not a media type")
    return value


def check_annotations(value: object, where: str) -> dict[str, str]:
    """An annotations map: a JSON object of strings. JSON null is refused (R5, R6): callers pass
    only a value that is present, and use ``{}`` when the key is absent."""
    obj = check_object(value, where)
    for key, item in obj.items():
        if not isinstance(item, str):
            raise FormatError(f"{where}: value of {show(key)} must be a string, got {json_type(item)}")
    return obj


def unrecognised_layer(d: dict[str, Any], where: str) -> str | None:
    """R19: why the layer descriptor ``d`` (a JSON object) is one a reader does not recognise, or
    ``None`` when it is to be read as usual (and checked by R6).

    Unrecognised: a ``mediaType`` that is a media type followed by parameters
    (``application/vnd.foo+json; charset=utf-8``), or a ``digest`` of the image-spec grammar whose
    algorithm is neither sha256 nor sha512. Such a layer must still be a well-formed descriptor (R6:
    a string media type, a digest of the grammar, a valid size and annotations), else
    :class:`FormatError`; it is then skipped, titled or not, and the returned line says why.
    """
    media_type = d.get("mediaType")
    digest = d.get("digest")
    reason = None
    if isinstance(media_type, str) and _MEDIA_TYPE_WITH_PARAMETERS_RE.fullmatch(media_type) is not None:
        reason = f"{where}: media type {show(media_type)} has parameters"
    elif isinstance(digest, str) and _DIGEST_GRAMMAR_RE.fullmatch(digest) is not None:
        algorithm = digest.partition(":")[0]
        if algorithm not in VERIFIED_DIGEST_ALGORITHMS:
            reason = f"{where}: digest algorithm {show(algorithm)} is not one a reader verifies"
    if reason is None:
        return None
    # R6 on what every descriptor has, whatever a reader understands of it.
    if not isinstance(media_type, str) or (
        _MEDIA_TYPE_RE.fullmatch(media_type) is None and _MEDIA_TYPE_WITH_PARAMETERS_RE.fullmatch(media_type) is None
    ):
        check_media_type(media_type, f"{where} mediaType")
    if not isinstance(digest, str) or _DIGEST_GRAMMAR_RE.fullmatch(digest) is None:
        raise FormatError(f"{where} digest: malformed digest {show(digest)}")
    if digest.partition(":")[0] in VERIFIED_DIGEST_ALGORITHMS:
        check_digest(digest, f"{where} digest")
    check_integer(d.get("size"), f"{where} size", 0, MAX_FILE_SIZE)
    if "annotations" in d:
        check_annotations(d["annotations"], f"{where} annotations")
    return reason
