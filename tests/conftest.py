"""Suite-wide fixtures: real registries (Debian's docker-registry), a docker config, log checks.

Every registry fixture yields a started :class:`support.registry.RegistryServer` on
127.0.0.1 with its own storage, and stops it by PID at teardown. A missing tool fails the test
with what to install; nothing here skips. Startup takes ~50 ms, so per-test registries are
the default; ``shared_registry`` (module scope) is for read-mostly tests that use distinct
repository names.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support.checklogs import check_logs, expect_log, register
from support.registry import (
    DockerConfig,
    MissingToolError,
    RegistryFactory,
    RegistryServer,
    RegistryStartError,
    free_port,
    new_secret,
)
from support.token_server import TokenServer

__all__ = ["check_logs", "expect_log", "free_port"]  # re-exported fixtures and helper


def pytest_configure(config: pytest.Config) -> None:
    register(config)


def start_or_fail(server: RegistryServer) -> RegistryServer:
    """Start ``server``; turn a missing tool or a failed start into a clear test failure."""
    try:
        server.start()
    except (MissingToolError, RegistryStartError) as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


class _Factory:
    """Builds registries under one directory and tears all of them (and token servers) down."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.servers: list[RegistryServer] = []
        self.token_servers: list[TokenServer] = []

    def __call__(
        self,
        *,
        basic: bool | Mapping[str, str] = False,
        token: bool | Mapping[str, Any] = False,
        start: bool = True,
        **kwargs: Any,
    ) -> RegistryServer:
        work = self.base / f"registry-{len(self.servers)}"
        if basic:
            kwargs["basic_auth"] = basic if isinstance(basic, Mapping) else {"ocifs": new_secret()}
        if token:
            options = dict(token) if isinstance(token, Mapping) else {}
            token_server = TokenServer(work / "token", **options)
            self.token_servers.append(token_server)
            token_server.start()
            kwargs["token_server"] = token_server
        server = RegistryServer(work, **kwargs)
        self.servers.append(server)
        return start_or_fail(server) if start else server

    def close(self) -> None:
        for server in reversed(self.servers):
            server.close()
        for token_server in self.token_servers:
            token_server.stop()


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[RegistryFactory]:
    """``make(**options) -> RegistryServer``, started unless ``start=False``; all closed at teardown.

    Options: ``basic=True`` (user ``ocifs``, random password) or ``basic={user: pw}``;
    ``token=True`` or ``token={TokenServer kwargs}`` (a started token server, reachable as
    ``.token_server``); and any :class:`RegistryServer` keyword (``tls``, ``proxy_remote``,
    ``storage_in_shm``, ``relative_urls``, ``extra_config``, ``port``...).
    """
    factory = _Factory(tmp_path / "registries")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def shared_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain-HTTP, no-auth registry shared by one test module. Do not stop or corrupt it."""
    factory = _Factory(tmp_path_factory.mktemp("shared-registry"))
    try:
        yield factory()
    finally:
        factory.close()


@pytest.fixture
def registry(registry_factory: RegistryFactory) -> RegistryServer:
    """A fresh plain-HTTP, no-auth registry; the test may stop, restart or corrupt it."""
    return registry_factory()


@pytest.fixture
def registry_basic(registry_factory: RegistryFactory) -> RegistryServer:
    """Plain HTTP with htpasswd Basic auth; ``username``/``password`` may push and pull."""
    return registry_factory(basic=True)


@pytest.fixture
def registry_tls(registry_factory: RegistryFactory) -> RegistryServer:
    """HTTPS with a test CA (``ca_file``; ``tls.ca_dir`` for skopeo), no auth."""
    return registry_factory(tls=True)


@pytest.fixture
def registry_token(registry_factory: RegistryFactory) -> RegistryServer:
    """Plain HTTP with Bearer token auth; ``token_server`` is the running :class:`TokenServer`.

    ``username``/``password`` get pull+push+delete everywhere; anonymous gets pull only.
    """
    return registry_factory(token=True)


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DockerConfig:
    """An empty ``$DOCKER_CONFIG`` for this test (env set), with its helper bin dir on ``PATH``;
    the credential files searched before docker's (``$REGISTRY_AUTH_FILE``,
    ``$XDG_RUNTIME_DIR/containers/auth.json``) are the test's own, and empty."""
    config = DockerConfig(tmp_path / "docker-config")
    monkeypatch.setenv("DOCKER_CONFIG", str(config.path))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("PATH", os.pathsep.join([str(config.bin_dir), os.environ.get("PATH", "")]))
    return config


@pytest.fixture(scope="session")
def skopeo() -> str:
    """Path of the skopeo binary (fails with an install hint if missing)."""
    path = shutil.which("skopeo")
    if path is None:
        pytest.fail("skopeo not found: apt-get install skopeo", pytrace=False)
    return path
