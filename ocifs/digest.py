"""Content digests (``algorithm:hex``) as a validated value type.

Only ``sha256`` and ``sha512`` are accepted (OCI image-spec, "Digests"); ocifs writes sha256.
A :class:`Digest` is always well formed, so it is safe to use as a file name in the cache.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from ocifs.errors import InvalidDigest

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"([a-z0-9]+):([a-f0-9]+)")


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated ``algorithm:hex`` digest."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: object) -> Digest:
        """Parse ``text``; raise :class:`InvalidDigest` unless it is sha256/sha512 lowercase hex."""
        if not isinstance(text, str):
            raise InvalidDigest(f"digest must be a string, got {type(text).__name__}")
        match = _DIGEST_RE.fullmatch(text)
        if match is None:
            raise InvalidDigest(f"malformed digest {_excerpt(text)!s}")
        algorithm, hexpart = match.groups()
        expected = _HEX_LENGTH.get(algorithm)
        if expected is None:
            raise InvalidDigest(f"unsupported digest algorithm {algorithm!r} (sha256 and sha512 only)")
        if len(hexpart) != expected:
            raise InvalidDigest(f"malformed {algorithm} digest {_excerpt(text)} (wrong length)")
        return cls(algorithm, hexpart)

    @classmethod
    def of_bytes(cls, data: bytes | bytearray | memoryview) -> Digest:
        """The sha256 digest of ``data``."""
        return cls("sha256", hashlib.sha256(data).hexdigest())

    def hasher(self) -> Any:
        """A fresh hashlib object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def matches(self, data: bytes | bytearray | memoryview) -> bool:
        """Whether ``data`` hashes to this digest (hashlib releases the GIL on large buffers)."""
        h = self.hasher()
        h.update(data)
        return bool(h.hexdigest() == self.hex)

    @property
    def short(self) -> str:
        """A 12-hex-digit abbreviation for humans (``sha256:0123456789ab``)."""
        return f"{self.algorithm}:{self.hex[:12]}"

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def _excerpt(text: str, limit: int = 80) -> str:
    """A printable, bounded excerpt of untrusted text for error messages."""
    shown = text if len(text) <= limit else text[:limit] + "…"
    return repr(shown)
