"""Test support for ocifs: real registries, a token server, and the log checker.

``tests`` is not a package; pytest puts ``tests/`` on ``sys.path`` (rootdir conftest,
"prepend" import mode), so test modules import ``from support.registry import ...``.
Nothing here is imported by ``ocifs`` itself.
"""

from .registry import (
    DockerConfig,
    MissingToolError,
    RegistryServer,
    RegistryStartError,
    TLSMaterial,
    free_port,
    make_tls_material,
)
from .token_server import TokenRequest, TokenServer

__all__ = [
    "DockerConfig",
    "MissingToolError",
    "RegistryServer",
    "RegistryStartError",
    "TLSMaterial",
    "TokenRequest",
    "TokenServer",
    "free_port",
    "make_tls_material",
]
