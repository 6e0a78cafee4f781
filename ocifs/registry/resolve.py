"""Resolve a reference to a validated :class:`~ocifs.format.model.Artifact`.

Shared by ``inspect``, ``pull`` and the mount daemon: one place turns registry bytes into
spec-checked values. A tag is resolved once to a digest; everything after uses the digest, so
a tag moved meanwhile cannot mix two versions. Chunk indexes are not loaded here but through
the fetcher (:func:`ocifs.cache.chunk_index.load_chunk_index`): verified and cached like chunks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ocifs.errors import FormatError
from ocifs.format.media import MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_IMAGE_INDEX
from ocifs.format.model import Artifact
from ocifs.format.parse import parse_manifest
from ocifs.reference import Reference
from ocifs.registry.client import RegistryClient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Resolved:
    """An artifact pinned to its manifest digest."""

    reference: Reference  # carries the digest
    artifact: Artifact


async def resolve(client: RegistryClient, ref: Reference) -> Resolved:
    """Fetch and validate the manifest ``ref`` names; raise FormatError for anything but an artifact."""
    manifest = await client.get_manifest(ref.repository, ref.selector)
    if manifest.media_type in (MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST):
        raise FormatError(
            f"{ref} is an image index (multi-platform image), not a single artifact",
            hint="name one of its manifests by digest",
        )
    artifact = parse_manifest(manifest.data)
    pinned = ref.with_digest(manifest.digest)
    if ref.digest is None:
        log.debug("%s resolved to %s", ref, manifest.digest)
    return Resolved(pinned, artifact)
