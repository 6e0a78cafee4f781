"""Load the chunk index of a chunked file: fetched through the :class:`Fetcher`, validated.

Owns: the one way ``pull`` and the mount turn a :class:`~ocifs.format.model.ChunkedFile`'s
index descriptor into a validated :class:`~ocifs.format.model.ChunkIndex`. The blob comes
through the fetcher (verified against its digest, single-flight, cached like a chunk so a
remount or a resumed pull finds it on disk) and is checked against the manifest by
:func:`~ocifs.format.parse.parse_chunk_index` (docs/spec.md R14–R17). Must not: remember
indexes or errors (callers decide: the mount keeps them for its life, pull for one run), or
block the trio loop on a large parse.
"""

from __future__ import annotations

import trio

from ocifs.cache.fetcher import Fetcher
from ocifs.errors import OcifsError, in_context
from ocifs.format.messages import show
from ocifs.format.model import ChunkedFile, ChunkIndex
from ocifs.format.parse import parse_chunk_index

#: Chunk indexes above this size are parsed in a worker thread: a 100,000-chunk index is
#: ~12 MB of JSON, ~100 ms of parsing that would stall every other request of a mount.
PARSE_IN_THREAD_ABOVE = 256 * 1024


async def load_chunk_index(fetcher: Fetcher, repository: str, file: ChunkedFile) -> ChunkIndex:
    """The validated chunk index of ``file`` from ``repository``.

    A failed fetch raises the fetcher's error (same type, status and hint) with "chunk index
    of '<path>'" in front of its message; an invalid index raises
    :class:`~ocifs.errors.FormatError` (or :class:`~ocifs.errors.IntegrityError`) from the
    parser, whose message names the file already.
    """
    try:
        data = await fetcher.get(repository, file.index.digest, file.index.size)
    except OcifsError as exc:
        raise in_context(exc, f"chunk index of {show(file.path)}") from None
    if len(data) > PARSE_IN_THREAD_ABOVE:
        return await trio.to_thread.run_sync(parse_chunk_index, data, file)
    return parse_chunk_index(data, file)
