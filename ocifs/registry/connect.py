"""Open a :class:`RegistryClient` for a registry with the user's credentials."""

from __future__ import annotations

from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.registry.credentials import Credentials, lookup_credentials


def connect(registry: str, options: ClientOptions, credentials: Credentials | None = None) -> RegistryClient:
    """A client for ``registry``; credentials from the docker config unless given."""
    if credentials is None:
        credentials = lookup_credentials(registry)
    return RegistryClient(registry, credentials=credentials, options=options)
