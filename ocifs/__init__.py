"""ocifs: push large artifacts to any OCI registry in parallel chunks, and mount them lazily.

The import package and the command are ``ocifs``; the distribution on PyPI is ``ocifs-chunked``
(``ocifs`` there is an unrelated project).
"""

__version__ = "0.1.0"
