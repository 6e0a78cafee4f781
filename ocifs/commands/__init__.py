"""Layer 5 — the commands a user runs: the argument parser and entry points (``cli``), push,
pull, inspect, cache, status, mount/umount, and the progress display.

Owns: user-facing output and exit codes. Must not: be imported by any lower layer. Start with
``cli``.
"""
