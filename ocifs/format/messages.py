"""How the format's error messages show untrusted values: bounded, one line, escaped.

Shared by :mod:`ocifs.format.parse` and :mod:`ocifs.format.paths`; must not raise.
"""

from __future__ import annotations

import json

EXCERPT_CHARS = 80  # a value shown in a message is cut here: a hostile manifest's strings can be megabytes


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null or nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def show(value: object) -> str:
    """A bounded, one-line, escaped rendering of untrusted data for messages."""
    text = value if isinstance(value, str) else json.dumps(value) if _is_scalar(value) else json_type(value)
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS] + "…"
    return repr(text) if isinstance(value, str) else text


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float)
