"""Sizes as people write and read them: ``16M``, ``1.5GiB`` ↔ bytes (binary units throughout,
as ``--cache-max-size`` and config.toml take them). Pure functions, no imports from ocifs.
"""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$")


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """``16M``, ``1.5GiB``, ``4096`` (or an int) → bytes, binary units. ValueError if malformed."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"negative size {text}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"not a size: {text!r}")
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"invalid size {text!r} (examples: 16M, 2G, 4096)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def format_size(n: int) -> str:
    """``1536`` → ``1.5 KiB`` (binary units, like ``--cache-max-size`` takes them)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n:,} B" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
