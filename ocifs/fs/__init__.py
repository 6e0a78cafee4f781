"""Layer 4 — the mount: the read-only filesystem without a kernel (``filesystem``, a façade over
``tree``, ``handles``, ``chunked``, ``plain``, ``hints`` and ``counters``), the thin
pyfuse3 adapter (``fuse_ops``), the daemon's life from fork to unmount (``daemon``), the ``-o``
vocabulary (``options``) and the host's mount table (``mounts``).

Only ``fuse_ops`` and ``daemon`` import pyfuse3: importing this package does not. Start with
``filesystem``.
"""
