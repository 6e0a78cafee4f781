"""Layer 2 — talking to OCI registries: the distribution API (``client``) on one request engine
(``engine``: auth and the one retry loop under ``retry``'s policy) over two transports behind
one protocol (``transport``: httpx in ``general``, ``http.client`` threads in ``blobio``),
authentication and credentials, and resolving a reference to a validated artifact
(``resolve``). docs/requests.md is the map.

Third-party (httpx, http.client) errors are translated into :mod:`ocifs.errors` in ``failures``
and nowhere else. Must not: know about caches or filesystems. Start with ``client``.
"""
