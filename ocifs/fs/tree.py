"""The read-only tree of one artifact: inodes, names, attributes, extended attributes, statfs.

Owns: the directories the file paths imply, inode numbers (stable across mounts of the same
artifact), and what ``stat``, ``readdir``, ``getxattr`` and ``statfs`` show — all from the
manifest alone, so ``ls -lR`` fetches nothing. Must not: fetch, read file contents or know
about open handles (``ocifs.fs.filesystem`` puts those together), or import pyfuse3.

The tree never changes for the life of a mount (the reference is pinned to a digest), so
nodes are never freed and the kernel's lookup counts (``forget``) change nothing here: the
FUSE adapter answers ``forget`` without calling in. Start with :class:`Tree`.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ocifs.errors import IsADirectory, NotFound
from ocifs.format.media import MAX_COMPONENT_BYTES
from ocifs.format.model import Artifact, ChunkedFile, File, PlainFile

#: The inode of the root directory: FUSE_ROOT_ID, fixed by the kernel protocol.
ROOT_INODE = 1

#: ``st_blksize``: the I/O size `cp` and stdio pick for the files. 1 MiB is the largest FUSE
#: read request (min(read_ahead_kb, 1 MiB); docs/platform.md, "FUSE on Linux").
BLOCK_SIZE = 1024 * 1024

#: ``f_bsize`` of statfs: the page size, what ``df`` expects; the figure only scales the total.
STATFS_BLOCK = 4096


@dataclass(frozen=True, slots=True)
class Attributes:
    """What ``stat`` shows of one inode. ``mtime_ns`` also serves as atime and ctime."""

    inode: int
    mode: int
    nlink: int
    size: int
    uid: int
    gid: int
    mtime_ns: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def blocks(self) -> int:
        """512-byte blocks, as ``du`` counts them."""
        return (self.size + 511) // 512


@dataclass(slots=True)
class Node:
    """One inode of the tree: a directory (``file is None``) or a file of the artifact."""

    inode: int
    path: str  # "" for the root
    parent: int
    file: File | None = None
    children: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.file is None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class Tree:
    """The inodes of ``artifact``, owned by ``uid``/``gid``, all with time ``mtime_ns``.

    Inode numbers are assigned in sorted path order from 2 (1 is the root), so they are the
    same for every mount of the same artifact.
    """

    def __init__(self, artifact: Artifact, *, uid: int, gid: int, mtime_ns: int) -> None:
        self.artifact = artifact
        self.uid = uid
        self.gid = gid
        self.mtime_ns = mtime_ns
        self._nodes = _build_tree(artifact)
        self._subdirs = collections.Counter(
            n.parent for n in self._nodes.values() if n.is_dir and n.inode != ROOT_INODE
        )

    def __len__(self) -> int:
        """The number of inodes, the root included."""
        return len(self._nodes)

    def node(self, inode: int) -> Node:
        """The node of ``inode``; :class:`NotFound` for an inode this tree never had."""
        node = self._nodes.get(inode)
        if node is None:
            raise NotFound(f"no inode {inode}")
        return node

    def file(self, inode: int) -> File:
        """The file of ``inode``; :class:`NotFound` for an unknown inode, :class:`IsADirectory`
        for a directory."""
        f = self.node(inode).file
        if f is None:
            raise IsADirectory(f"{self.path_of(inode)} is a directory")
        return f

    def path_of(self, inode: int | None) -> str:
        """The path of ``inode`` for messages ("/" for the root, "?" for an unknown inode)."""
        node = None if inode is None else self._nodes.get(inode)
        return "?" if node is None else "/" + node.path

    def lookup(self, parent: int, name: str) -> Attributes:
        """The attributes of entry ``name`` of directory ``parent``; ``.`` and ``..`` are
        answered. :class:`NotFound` if there is no such entry."""
        node = self._directory(parent)
        if name == ".":
            inode = parent
        elif name == "..":
            inode = node.parent
        else:
            found = node.children.get(name)
            if found is None:
                raise NotFound(f"{self.path_of(parent).rstrip('/')}/{name}: no such file")
            inode = found
        return self.getattr(inode)

    def getattr(self, inode: int) -> Attributes:
        """The attributes of ``inode``, from the manifest alone (no blob is fetched)."""
        node = self.node(inode)
        if node.file is None:
            nlink = 2 + self._subdirs[inode]
            return Attributes(inode, stat.S_IFDIR | 0o555, nlink, 0, self.uid, self.gid, self.mtime_ns)
        return Attributes(inode, stat.S_IFREG | 0o444, 1, node.file.size, self.uid, self.gid, self.mtime_ns)

    def readdir(self, inode: int, start: int = 0) -> Iterator[tuple[str, Attributes, int]]:
        """Entries of directory ``inode`` from position ``start``: ``(name, attributes, next)``
        where ``next`` is the position to resume after that entry. Sorted by name, so
        positions are stable for the life of the mount."""
        node = self._directory(inode)
        names = sorted(node.children)
        for position in range(start, len(names)):
            name = names[position]
            yield name, self.getattr(node.children[name]), position + 1

    def file_xattrs(self, inode: int) -> dict[str, bytes]:
        """The extended attributes of a file (none for a directory): ``user.ocifs.digest`` (the
        whole file's sha256 when recorded; a plain layer's digest), ``user.ocifs.chunks``
        (number of chunks; 1 for a plain layer) and ``user.ocifs.kind`` (``chunked``, ``plain``, or
        ``oras-directory`` for the ``<title>.tar.gz`` of a directory ORAS packed: spec R20)."""
        f = self.node(inode).file
        attrs: dict[str, bytes] = {}
        if isinstance(f, ChunkedFile):
            if f.file_digest is not None:
                attrs["user.ocifs.digest"] = str(f.file_digest).encode()
            attrs["user.ocifs.chunks"] = str(len(f.chunks)).encode()
            attrs["user.ocifs.kind"] = f.kind.encode()
        elif isinstance(f, PlainFile):
            attrs["user.ocifs.digest"] = str(f.digest).encode()
            attrs["user.ocifs.chunks"] = b"1"
            attrs["user.ocifs.kind"] = f.kind.encode()
        return attrs

    def statfs(self) -> dict[str, int]:
        """``statvfs`` figures: total size in ``bsize`` blocks, nothing free, one inode per node."""
        blocks = (self.artifact.total_size + STATFS_BLOCK - 1) // STATFS_BLOCK
        return {
            "bsize": STATFS_BLOCK,
            "frsize": STATFS_BLOCK,
            "blocks": blocks,
            "bfree": 0,
            "bavail": 0,
            "files": len(self._nodes),
            "ffree": 0,
            "favail": 0,
            "namemax": MAX_COMPONENT_BYTES,
        }

    def _directory(self, inode: int) -> Node:
        node = self.node(inode)
        if not node.is_dir:
            raise NotFound(f"{self.path_of(inode)} is not a directory")
        return node


def _build_tree(artifact: Artifact) -> dict[int, Node]:
    """Nodes for every file and every directory its path implies; inodes in sorted path order.

    The manifest parser already refused duplicate paths and files that are directories of
    other files (R12), so every path here is either a file or a directory, never both.
    """
    files = {f.path: f for f in artifact.files}
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            dirs.add("/".join(parts[:depth]))
    nodes: dict[int, Node] = {ROOT_INODE: Node(ROOT_INODE, "", ROOT_INODE)}
    by_path: dict[str, int] = {"": ROOT_INODE}
    # Sorting by UTF-8 bytes gives the same order whatever the locale: stable inode numbers.
    for inode, path in enumerate(sorted(files.keys() | dirs, key=lambda p: p.encode()), start=2):
        by_path[path] = inode
        nodes[inode] = Node(inode, path, 0, files.get(path))
    for path, inode in by_path.items():
        if inode == ROOT_INODE:
            continue
        parent_path = path.rsplit("/", 1)[0] if "/" in path else ""
        parent = by_path[parent_path]
        nodes[inode].parent = parent
        nodes[parent].children[nodes[inode].name] = inode
    return nodes


def created_ns(artifact: Artifact) -> int:
    """The manifest's ``org.opencontainers.image.created`` (RFC 3339) in ns, else now."""
    created = artifact.annotations.get("org.opencontainers.image.created")
    if created:
        try:
            when = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            return int(when.timestamp() * 1_000_000_000)
    return time.time_ns()
