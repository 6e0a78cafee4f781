"""Value types for command-line flags and ``-o`` mount options: each turns a string into a
value or raises :class:`argparse.ArgumentTypeError` with the reason (argparse prints it).
"""

from __future__ import annotations

import argparse

from ocifs import units


def parse_size(text: str) -> int:
    """``16M``, ``1.5GiB``, ``4096`` → bytes (binary units), for argparse."""
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
