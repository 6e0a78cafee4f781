"""Path rules of the format (docs/spec.md §6): what a file path in an artifact may be, and
the part titles old clients write chunks under.

Must not: do I/O.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from ocifs.errors import FormatError
from ocifs.format.media import MAX_COMPONENT_BYTES, MAX_PATH_BYTES, MAX_PATH_DEPTH, PART_DIGITS
from ocifs.format.messages import json_type, show

# C0 controls, DEL, C1 controls, and the backslash (a separator on Windows clients such as oras).
_FORBIDDEN_PATH_CHARS_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def validate_path(path: object, where: str = "path") -> str:
    """Return ``path`` if it is a valid artifact path (rule R13), else raise :class:`FormatError`.

    Valid: a non-empty string of ``/``-separated components, relative, none of them empty,
    ``.`` or ``..``; at most 32 components of at most 255 UTF-8 bytes each, 4096 bytes in all;
    no NUL, C0/C1 control characters, DEL or backslash; encodable as UTF-8 (no lone surrogates).
    """
    if not isinstance(path, str):
        raise FormatError(f"{where}: must be a string, got {json_type(path)}")
    shown = show(path)
    if not path:
        raise FormatError(f"{where}: path is empty")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{where}: path {shown} is not valid Unicode (lone surrogate)") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise FormatError(f"{where}: path {shown} is longer than {MAX_PATH_BYTES} bytes")
    bad = _FORBIDDEN_PATH_CHARS_RE.search(path)
    if bad is not None:
        what = "backslash" if bad.group() == "\\" else f"control character {bad.group()!r}"
        raise FormatError(f"{where}: path {shown} contains a {what}")
    if path.startswith("/"):
        raise FormatError(f"{where}: path {shown} is absolute")
    components = path.split("/")
    if len(components) > MAX_PATH_DEPTH:
        raise FormatError(f"{where}: path {shown} is deeper than {MAX_PATH_DEPTH} levels")
    for component in components:
        if component == "":
            raise FormatError(f"{where}: path {shown} has an empty component")
        if component in (".", ".."):
            raise FormatError(f"{where}: path {shown} has a {component!r} component")
        if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise FormatError(f"{where}: path {shown} has a component longer than {MAX_COMPONENT_BYTES} bytes")
    return path


def check_paths(paths: Sequence[str], where: str = "artifact") -> None:
    """Rule R12: no path twice, and no path that is also a directory of another path.

    The paths are assumed valid (:func:`validate_path`). Raises :class:`FormatError`.
    """
    files: set[str] = set()
    directories: set[str] = set()
    for path in paths:
        if path in files:
            raise FormatError(f"{where}: path {show(path)} appears twice")
        files.add(path)
        slash = path.find("/")
        while slash != -1:
            directories.add(path[:slash])
            slash = path.find("/", slash + 1)
    clash = files & directories
    if clash:
        path = min(clash)
        raise FormatError(f"{where}: {show(path)} is both a file and a directory of another file")


PART_INFIX = ".part-"
"""What joins a chunked file's path and its part number in a part title (spec §6.2)."""


def check_part_names(paths: Sequence[str], chunked: Collection[str], where: str = "artifact") -> None:
    """Rule R18: no path starts with a chunked file's path followed by ``.part-``.

    Old clients write a chunked file ``p`` as its parts ``p.part-NNNNN`` and rebuild it from them
    with a glob: another file named ``p.part-…`` (a plain ``p.part-00001``, or ``p.part-x``, which
    the older recipe ``cat p.part-*`` also matched, or a directory ``p.part-d/…``) would be taken
    for a part or overwrite one. ``chunked`` are the paths of the chunked files among ``paths``.
    Cost: one set lookup per occurrence of ``.part-`` in each path. Raises :class:`FormatError`.
    """
    chunked_set = chunked if isinstance(chunked, set | frozenset) else set(chunked)
    if not chunked_set:
        return
    for path in paths:
        at = path.find(PART_INFIX)
        while at != -1:
            owner = path[:at]
            if owner in chunked_set:
                raise FormatError(
                    f"{where}: {show(path)} is named like a part of the chunked file {show(owner)}"
                    f" (old clients would take it for one)"
                )
            at = path.find(PART_INFIX, at + 1)


def long_part_title_warning(path: str) -> str | None:
    """A one-line warning when old clients cannot write the part titles of a chunked ``path``.

    A part title adds ``.part-NNNNN`` (11 bytes) to the last component, so a last component of
    more than 244 bytes makes part names over the 255-byte limit of file names (spec §6.4): the
    artifact is valid and mounts, but ``oras pull`` cannot write its parts. ``None`` otherwise.
    """
    last = path.rpartition("/")[2]
    size = len(last.encode("utf-8", "surrogatepass"))
    limit = MAX_COMPONENT_BYTES - len(PART_INFIX) - PART_DIGITS
    if size <= limit:
        return None
    return (
        f"{show(path)}: its file name is {size} bytes, so the names of its parts (the name and"
        f" {PART_INFIX}NNNNN) exceed {MAX_COMPONENT_BYTES} bytes and old clients such as oras pull cannot"
        f" write them; a file name of at most {limit} bytes avoids it"
    )


def part_title(path: str, n: int, total_chunks: int) -> str:
    """The title of chunk ``n`` (from 0) of ``total_chunks``: ``<path>.part-NNNNN``.

    Five digits, more only when ``total_chunks - 1`` needs more, so that every part name of a
    file has the same width and a shell glob lists them in order.
    """
    if not 0 <= n < total_chunks:
        raise ValueError(f"part {n} outside 0..{total_chunks - 1}")
    width = max(PART_DIGITS, len(str(total_chunks - 1)))
    return f"{path}{PART_INFIX}{n:0{width}d}"
