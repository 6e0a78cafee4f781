"""Open a :class:`RegistryClient` for a registry with the user's credentials."""

from __future__ import annotations

from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.registry.credentials import Credentials, CredentialSource


def connect(
    registry: str, options: ClientOptions, credentials: Credentials | None = None, *, repository: str | None = None
) -> RegistryClient:
    """A client for ``registry``. Credentials are the given ones, else those of the credential
    files and helpers (``options.auth_file`` first; ``repository`` for ``host/namespace`` keys),
    looked up now and again whenever the registry refuses them (a mount outlives a password)."""
    source = (
        CredentialSource.fixed(credentials)
        if credentials is not None
        else CredentialSource.from_files(registry, repository=repository, auth_file=options.auth_file)
    )
    return RegistryClient(registry, credentials=source, options=options)
