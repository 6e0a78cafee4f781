"""Layer 1 — the wire format of docs/spec.md, pure: media types and limits (``media``), value
types (``model``), path rules (``paths``), building (``build``, ``plan``), parsing untrusted bytes
(``parse``, ``checks``), and the safetensors header reader-ahead hints (``safetensors``).

Must not: do I/O, use trio, or import anything of ocifs but the leaves (``errors``, ``digest``).
Start with ``model``.
"""
