"""Layer 2 — talking to OCI registries: HTTP, authentication, credentials, one retry policy, and
resolving a reference to a validated artifact (``resolve``).

Third-party (httpx) errors are translated into :mod:`ocifs.errors` here and nowhere else. Must
not: know about caches or filesystems. Start with ``client``.
"""
