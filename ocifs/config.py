"""Settings from configuration files: ``/etc/ocifs/config.toml`` then ``~/.config/ocifs/config.toml``.

Every command reads them; command-line flags override them; a later file overrides an earlier
one key by key. ``$OCIFS_CONFIG`` names one file to use instead of both. A malformed file is a
:class:`~ocifs.errors.ConfigError` naming the file and line.

Schema (all keys optional)::

    [cache]
    dir = "/var/cache/ocifs"     # chunk cache directory
    max_size = "50G"             # evict least recently used chunks beyond this
    memory = "256M"              # in-memory hot-chunk budget per process

    [transfer]
    jobs = 8                     # parallel connections
    retries = 5                  # attempts per request
    read_timeout = 60            # seconds without a byte before a request is abandoned and retried

    [tls]
    certs_d = "/etc/ocifs/certs.d"   # read <dir>/<host[:port]>/ like /etc/docker/certs.d

    [credentials]
    authfile = "/etc/ocifs/auth.json"  # searched first (as --authfile), then podman's and docker's

    [registry."registry.example.com:5000"]
    plain_http = false
    ca_file = "/etc/ocifs/ca.pem"    # trusted in addition to the system store
    cert_file = "/etc/ocifs/client.pem"   # client certificate (mTLS) ...
    key_file = "/etc/ocifs/client.key"    # ... and its key
    insecure = false
    max_layers = 250             # layers per manifest this registry accepts (push grows chunks to fit)
    artifact_type = "application/vnd.ocifs.artifact.v1"  # or "none": omit artifactType
    config_media_type = "application/vnd.oci.image.config.v1+json"  # for allow-listing registries
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ocifs.errors import ConfigError
from ocifs.units import parse_size

SYSTEM_CONFIG = Path("/etc/ocifs/config.toml")


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """Per-registry defaults."""

    plain_http: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    # push: the layer budget, artifactType and config media type (docs/operations.md "Registry limits")
    max_layers: int | None = None
    artifact_type: str | None = None
    config_media_type: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """The merged configuration. ``None`` means "not configured: use the built-in default"."""

    cache_dir: str | None = None
    cache_max_size: int | None = None
    cache_memory: int | None = None
    jobs: int | None = None
    retries: int | None = None
    read_timeout: float | None = None
    certs_d: str | None = None
    auth_file: str | None = None
    registries: dict[str, RegistrySettings] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def registry(self, host: str) -> RegistrySettings:
        """The settings for ``host`` (defaults if the files say nothing about it)."""
        return self.registries.get(host, RegistrySettings())


def config_paths() -> list[Path]:
    """The files read, in order (later wins)."""
    override = os.environ.get("OCIFS_CONFIG")
    if override:
        return [Path(override)]
    xdg = os.environ.get("XDG_CONFIG_HOME")
    home = os.environ.get("HOME")
    user_dir = Path(xdg) if xdg and os.path.isabs(xdg) else (Path(home) / ".config" if home else None)
    paths = [SYSTEM_CONFIG]
    if user_dir is not None:
        paths.append(user_dir / "ocifs" / "config.toml")
    return paths


def load_settings(paths: list[Path] | None = None) -> Settings:
    """Read and merge the configuration files that exist; ConfigError naming file and line if bad."""
    explicit = paths is not None or bool(os.environ.get("OCIFS_CONFIG"))
    settings = Settings()
    for path in paths if paths is not None else config_paths():
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if explicit:
                raise ConfigError(f"configuration file {path} does not exist") from None
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
        settings = _merge(settings, _parse(path, text))
    return settings


def _parse(path: Path, text: str) -> Settings:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    checker = _Checker(path, text)
    checker.keys(data, {"cache", "transfer", "credentials", "registry", "tls"}, "")
    cache = checker.table(data, "cache")
    checker.keys(cache, {"dir", "max_size", "memory"}, "cache")
    transfer = checker.table(data, "transfer")
    checker.keys(transfer, {"jobs", "retries", "read_timeout"}, "transfer")
    tls = checker.table(data, "tls")
    checker.keys(tls, {"certs_d"}, "tls")
    credentials = checker.table(data, "credentials")
    checker.keys(credentials, {"authfile"}, "credentials")
    registries: dict[str, RegistrySettings] = {}
    for host, table in checker.table(data, "registry").items():
        where = f'registry."{host}"'
        if not isinstance(table, dict):
            raise checker.error(host, f"{where} must be a table")
        push_keys = {"max_layers", "artifact_type", "config_media_type"}
        checker.keys(table, {"plain_http", "ca_file", "cert_file", "key_file", "insecure"} | push_keys, where)
        registries[host] = RegistrySettings(
            plain_http=checker.boolean(table, "plain_http", where),
            ca_file=checker.string(table, "ca_file", where),
            cert_file=checker.string(table, "cert_file", where),
            key_file=checker.string(table, "key_file", where),
            insecure=checker.boolean(table, "insecure", where),
            max_layers=checker.positive(table, "max_layers", where),
            artifact_type=checker.string(table, "artifact_type", where),
            config_media_type=checker.string(table, "config_media_type", where),
        )
    return Settings(
        cache_dir=checker.string(cache, "dir", "cache"),
        cache_max_size=checker.size(cache, "max_size", "cache"),
        cache_memory=checker.size(cache, "memory", "cache"),
        jobs=checker.positive(transfer, "jobs", "transfer"),
        retries=checker.positive(transfer, "retries", "transfer"),
        read_timeout=checker.seconds(transfer, "read_timeout", "transfer"),
        certs_d=checker.string(tls, "certs_d", "tls"),
        auth_file=checker.string(credentials, "authfile", "credentials"),
        registries=registries,
        sources=(str(path),),
    )


def _merge(base: Settings, top: Settings) -> Settings:
    registries = dict(base.registries)
    registries.update(top.registries)
    return replace(
        base,
        cache_dir=top.cache_dir or base.cache_dir,
        cache_max_size=top.cache_max_size if top.cache_max_size is not None else base.cache_max_size,
        cache_memory=top.cache_memory if top.cache_memory is not None else base.cache_memory,
        jobs=top.jobs or base.jobs,
        retries=top.retries or base.retries,
        read_timeout=top.read_timeout or base.read_timeout,
        certs_d=top.certs_d or base.certs_d,
        auth_file=top.auth_file or base.auth_file,
        registries=registries,
        sources=base.sources + top.sources,
    )


class _Checker:
    """Type checks with errors that name the file and the line where the key appears."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, key: str) -> int | None:
        pattern = re.compile(r'^\s*(?:\[+\s*)?(?:[\w."-]*\.)?"?' + re.escape(key) + r'"?\s*(?:=|\]|\.)')
        for number, line in enumerate(self.lines, 1):
            if pattern.search(line):
                return number
        return None

    def error(self, key: str, message: str) -> ConfigError:
        line = self.line_of(key)
        where = f"{self.path} line {line}" if line else str(self.path)
        return ConfigError(f"{where}: {message}")

    def keys(self, table: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                name = f"{where}.{key}" if where else key
                raise self.error(key, f"unknown setting {name!r} (known: {', '.join(sorted(allowed))})")

    def table(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"[{key}] must be a table")
        return value

    def string(self, table: dict[str, Any], key: str, where: str) -> str | None:
        value = table.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.error(key, f"{where}.{key} must be a non-empty string")
        return value

    def boolean(self, table: dict[str, Any], key: str, where: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise self.error(key, f"{where}.{key} must be true or false")
        return value

    def positive(self, table: dict[str, Any], key: str, where: str) -> int | None:
        value = table.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise self.error(key, f"{where}.{key} must be a whole number of at least 1")
        return value

    def seconds(self, table: dict[str, Any], key: str, where: str) -> float | None:
        value = table.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise self.error(key, f"{where}.{key} must be a number of seconds above 0")
        return float(value) if value is not None else None

    def size(self, table: dict[str, Any], key: str, where: str) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        try:
            return parse_size(value)
        except ValueError as exc:
            raise self.error(key, f"{where}.{key}: {exc}") from None
