"""The names the model ecosystem's OCI artifacts use: CNCF ModelPack (`modelpack/model-spec`,
built by modctl) and ollama. Reader and writer rules for them are in docs/spec.md.

Owns: the media types and annotation keys of those two formats, and the small predicates that
classify a layer by them. Must not: parse manifests or do I/O (format/parse.py reads layers;
this module only names what it sees).
"""

from __future__ import annotations

from typing import Final

# --- ModelPack (model-spec v1) -------------------------------------------------------------------

MODELPACK_ARTIFACT_TYPE: Final = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG_MEDIA_TYPE: Final = "application/vnd.cncf.model.config.v1+json"

# A layer's path inside the model (a file, or the directory a tar layer was packed from).
MODELPACK_ANNOTATION_FILEPATH: Final = "org.cncf.model.filepath"
# JSON {name, mode, uid, gid, size, mtime, typeflag} of the file the layer holds.
MODELPACK_ANNOTATION_FILE_METADATA: Final = "org.cncf.model.file.metadata+json"
# "true" when the writer could not tell the file's kind and picked a media type by guess.
MODELPACK_ANNOTATION_UNTESTED: Final = "org.cncf.model.file.mediatype.untested"

# The five kinds of content; each comes raw or as a tar (plain, gzip, zstd).
MODELPACK_KINDS: Final = ("weight", "weight.config", "doc", "code", "dataset")
MODELPACK_PACKINGS: Final = ("raw", "tar", "tar+gzip", "tar+zstd")
_MODELPACK_PREFIX: Final = "application/vnd.cncf.model."


def modelpack_media_type(kind: str, packing: str) -> str:
    """The media type of a ModelPack layer of `kind` (one of MODELPACK_KINDS) packed as `packing`."""
    if kind not in MODELPACK_KINDS or packing not in MODELPACK_PACKINGS:
        raise ValueError(f"not a ModelPack layer kind/packing: {kind!r}/{packing!r}")
    return f"{_MODELPACK_PREFIX}{kind}.v1.{packing}"


def modelpack_layer(media_type: str) -> tuple[str, str] | None:
    """(kind, packing) of a ModelPack layer media type, or None when it is not one."""
    if not media_type.startswith(_MODELPACK_PREFIX):
        return None
    kind, sep, packing = media_type[len(_MODELPACK_PREFIX) :].partition(".v1.")
    if not sep or kind not in MODELPACK_KINDS or packing not in MODELPACK_PACKINGS:
        return None
    return kind, packing


# --- ollama ------------------------------------------------------------------------------------------

OLLAMA_MEDIA_PREFIX: Final = "application/vnd.ollama.image."
OLLAMA_CONFIG_MEDIA_TYPE: Final = "application/vnd.docker.container.image.v1+json"
