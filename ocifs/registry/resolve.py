"""Resolve a reference to a validated :class:`~ocifs.format.model.Artifact`.

Shared by ``inspect``, ``pull`` and the mount daemon: one place turns registry bytes into
spec-checked values. A tag is resolved once to a digest; everything after uses the digest, so
a tag moved meanwhile cannot mix two versions. Chunk indexes are not loaded here but through
the fetcher (:func:`ocifs.cache.chunk_index.load_chunk_index`): verified and cached like chunks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from ocifs.errors import FormatError, collapse_groups
from ocifs.format.media import MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_MANIFEST
from ocifs.format.model import Artifact
from ocifs.format.parse import is_split_index, merge_slices, parse_manifest, parse_split_index
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
        if not is_split_index(manifest.data):  # R21: only our index is one artifact
            raise FormatError(
                f"{ref} is an image index (multi-platform image), not a single artifact",
                hint="name one of its manifests by digest",
            )
        artifact = await _resolve_split(client, ref, manifest.data)
    else:
        artifact = parse_manifest(manifest.data)
    pinned = ref.with_digest(manifest.digest)
    if ref.digest is None:
        log.debug("%s resolved to %s", ref, manifest.digest)
    return Resolved(pinned, artifact)


# Slices fetched at once when a split artifact is opened (docs/spec.md §14).
SLICE_FETCHES = 8


async def _resolve_split(client: RegistryClient, ref: Reference, data: bytes) -> Artifact:
    """A split artifact (docs/spec.md §14): the index checked (R21, R22) before any slice is
    fetched, each slice fetched by digest (verified by the client and again by merge_slices),
    then one artifact validated as if it were one manifest (R23, R24)."""
    index = parse_split_index(data)
    slices: list[bytes] = [b""] * len(index.slices)
    limiter = trio.CapacityLimiter(SLICE_FETCHES)

    async def fetch(n: int) -> None:
        async with limiter:
            got = await client.get_manifest(ref.repository, str(index.slices[n].digest), (MEDIA_TYPE_MANIFEST,))
            slices[n] = got.data

    with collapse_groups():
        async with trio.open_nursery() as nursery:
            for n in range(len(index.slices)):
                nursery.start_soon(fetch, n)
    log.debug("%s: %d manifests under one image index", ref, len(slices))
    return merge_slices(index, slices)
