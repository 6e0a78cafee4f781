"""Layer 3 — the data layer: the verified content-addressed chunk store shared by every process
of the host (``store``), the single-flight verified fetcher (``fetcher``) and the read-ahead
policy (``prefetch``).

Must not: import httpx or the registry package (a registry client satisfies the fetcher's
``BlobSource`` protocol structurally), or pyfuse3. Start with ``fetcher``.
"""
