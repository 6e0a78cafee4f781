"""The live counters of one mounted filesystem (``user.ocifs.stats`` of the mount root).

Owns: :class:`FsStats`, the one mutable record the read-path modules of ``ocifs.fs`` count
into. Must not: compute anything or do I/O; :meth:`ocifs.fs.filesystem.FileSystem.stats`
reports it with the fetcher's and the prefetcher's counters.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class FsStats:
    """Counters of one filesystem since it was created.

    ``reads``/``bytes_read``: read requests served and bytes returned; ``read_errors``: reads
    that failed; ``opens``/``open_files``: opens so far / handles open now;
    ``index_loads``: chunk indexes fetched and validated; ``piece_fetches``: Range pieces of
    large plain layers fetched; ``plain_verified``/``plain_verify_failures``: large plain
    layers whose whole-blob digest was checked after a complete in-order read, and how many
    of those did not match.
    """

    reads: int = 0
    bytes_read: int = 0
    read_errors: int = 0
    opens: int = 0
    open_files: int = 0
    index_loads: int = 0
    piece_fetches: int = 0
    plain_verified: int = 0
    plain_verify_failures: int = 0
