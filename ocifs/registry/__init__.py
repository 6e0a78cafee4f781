"""The registry layer: HTTP, authentication and retries against any OCI distribution registry.

Third-party (httpx) errors are translated into :mod:`ocifs.errors` here and nowhere else.
This layer knows nothing of chunks, caches or filesystems.
"""
