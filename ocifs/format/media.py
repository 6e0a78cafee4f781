"""The names and limits of the ocifs wire format (docs/spec.md §3, §5, §7): media types,
annotation keys, schema versions, size and count limits, and the well-known empty blobs.

Owns: every constant a reader or writer of the format (or the registry client, which asks for
manifests by media type and caps their size) must agree on. Must not: hold logic.
"""

from __future__ import annotations

from ocifs.digest import Digest

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
# The config's media type when the user supplies a config blob but no media type: image-spec's
# "Guidelines for Artifact Usage" want a value specific to the artifact type (never the image
# config's application/vnd.oci.image.config.v1+json, which tells runtimes the artifact is an image).
DEFAULT_CONFIG_MEDIA_TYPE = "application/vnd.ocifs.config.v1+json"

# --- Annotation keys (spec §5) ----------------------------------------------------------------

ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_PATH = "dev.ocifs.path"
ANNOTATION_SIZE = "dev.ocifs.size"
ANNOTATION_DIGEST = "dev.ocifs.digest"
# ORAS marks a directory it packed as a gzip-compressed tar with this annotation set to "true".
ANNOTATION_ORAS_UNPACK = "io.deis.oras.content.unpack"
# The split layout (spec §14): on the image index, marks it as one artifact cut into slices; on
# each slice manifest and its descriptor in the index, the slice's position (canonical decimal).
ANNOTATION_LAYOUT = "dev.ocifs.layout"
LAYOUT_SLICES = "slices.v1"
ANNOTATION_SLICE = "dev.ocifs.slice"

# --- File kinds (what a reader presents a file as: user.ocifs.kind) -----------------------------

KIND_CHUNKED = "chunked"
KIND_PLAIN = "plain"
KIND_ORAS_DIRECTORY = "oras-directory"  # an ORAS directory layer, presented as <title>.tar.gz (R20)
ORAS_DIRECTORY_SUFFIX = ".tar.gz"

# Digest algorithms a reader verifies (image-spec's registered sha256 and sha512); a layer whose
# digest names another algorithm is unrecognised and skipped (R19).
VERIFIED_DIGEST_ALGORITHMS = frozenset({"sha256", "sha512"})

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
# at a few hundred layers, so the pusher makes it configurable (docs/platform.md "Registries in
# the field").
DEFAULT_LAYER_BUDGET = 10_000
# Readers' hard cap: bounds parsing work; a 4 MiB manifest holds at most ~20,000 descriptors anyway.
MAX_LAYERS = 100_000
# One chunk-index layer plus its chunks fit the reader's layer cap; it also keeps part numbers
# within five digits (00000..99998), so `cat path.part-[0-9][0-9][0-9][0-9][0-9]` lists them in order.
MAX_CHUNKS = MAX_LAYERS - 1
# 16 MiB: a lazy read fetches little; large enough for line-rate throughput; far below the
# ~100 MB single uploads some registries fail (Docker Hub, Harbor behind proxies).
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
MIN_CHUNK_SIZE = 1
# Bounds a reader's buffer per chunk; registries cope badly with single uploads of >= 100 MB.
MAX_CHUNK_SIZE = 1024 * 1024 * 1024
# Sizes are signed 64-bit integers in image-spec and in every registry implementation.
MAX_FILE_SIZE = 2**63 - 1
# The split layout (spec §14): one request per slice when an artifact is opened bounds the count;
# the slices' total bytes bound what a reader fetches before it validates (100,000 layers of
# ~250 bytes are ~25 MB).
MIN_SLICES = 2
MAX_SLICES = 1000
MAX_SLICES_TOTAL_BYTES = 64 * 1024 * 1024
# A pusher grows the chunk size only up to this before it splits an artifact over several
# manifests: larger chunks make every lazy read fetch more, and registries cope badly with single
# uploads of >= 100 MB (Docker Hub, Harbor behind proxies); an extra manifest costs one request.
SPLIT_CHUNK_SIZE = 64 * 1024 * 1024
MAX_PATH_BYTES = 4096  # Linux PATH_MAX
MAX_COMPONENT_BYTES = 255  # Linux NAME_MAX
MAX_PATH_DEPTH = 32
# The part number is zero padded to this many digits (more only if a count ever needs it).
PART_DIGITS = 5

# --- Well-known blobs ----------------------------------------------------------------------------

EMPTY_JSON_DIGEST = Digest("sha256", "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
EMPTY_BLOB_DIGEST = Digest("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
EMPTY_BLOB_DIGESTS = frozenset(
    {
        EMPTY_BLOB_DIGEST,
        Digest(
            "sha512",
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
            "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
        ),
    }
)


# Manifest media types the registry client asks for (Accept) and recognises.
MANIFEST_MEDIA_TYPES = (
    MEDIA_TYPE_MANIFEST,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
)
