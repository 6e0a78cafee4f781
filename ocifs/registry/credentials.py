"""Registry credentials as users already have them: podman's ``auth.json`` and docker's ``config.json``.

Files searched, in order (podman's and skopeo's order, docs/operations.md "Credentials"): the
``--authfile`` (flag, ``config.toml``, mount ``-o authfile=``) or else ``$REGISTRY_AUTH_FILE``
or else ``$XDG_RUNTIME_DIR/containers/auth.json``; then ``$XDG_CONFIG_HOME/containers/auth.json``
(``~/.config/…``); then docker's ``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``). The
first file that has credentials for the registry wins. Every file is read as docker's format
(a Kubernetes ``.dockerconfigjson`` secret is the same): ``credHelpers[host]`` wins over
``credsStore``, which wins over an ``auths`` entry (``auth`` base64 or ``username``/``password``,
``identitytoken``). Keys match as podman matches them: ``host/namespace/repo`` prefixes, then
``host``, then legacy ``https://host/v1/`` keys, Docker Hub under any of its names. Helper
programs speak docker's credential-helper protocol (``docker-credential-<suffix> get|store|erase``).
A username of ``<token>`` means the secret is an identity (refresh) token for the OAuth2 flow.

Credentials expire: a :class:`CredentialSource` asks the files and helpers again when a registry
refuses what it has (at most once per refusal, at most once per :data:`REFRESH_INTERVAL`), so a
mount running for days follows rotating credentials.

Secrets are held in :class:`Credentials` whose ``repr`` hides them; nothing here logs them.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ocifs.errors import ConfigError
from ocifs.reference import DOCKER_HUB

log = logging.getLogger(__name__)

# Docker Hub's credentials live under this historical key (docker/cli config file).
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
# Every name Docker Hub's credentials are stored under (docker, podman, skopeo).
DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "docker.io", "index.docker.io", "registry.hub.docker.com"})
IDENTITY_TOKEN_USER = "<token>"
_HELPER_TIMEOUT = 30.0
# mount(8) strips PATH; credential helpers still have to be found.
_FALLBACK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Credentials are looked up again at most this often (seconds) when a registry refuses them.
REFRESH_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and secret for one registry. ``identity_token`` set means OAuth2 refresh flow."""

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def docker_config_dir() -> Path:
    """``$DOCKER_CONFIG`` or ``~/.docker``."""
    env = os.environ.get("DOCKER_CONFIG")
    if env:
        return Path(env)
    return _home() / ".docker"


def primary_auth_file(auth_file: str | os.PathLike[str] | None = None) -> Path | None:
    """The first file of the search: ``auth_file``, ``$REGISTRY_AUTH_FILE`` or
    ``$XDG_RUNTIME_DIR/containers/auth.json`` (None when none of them is set)."""
    if auth_file:
        return Path(auth_file)
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "containers" / "auth.json"
    return None


def auth_file_paths(auth_file: str | os.PathLike[str] | None = None) -> list[Path]:
    """The credential files searched, in order (podman's order; see the module docstring)."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    config_home = Path(xdg) if xdg and os.path.isabs(xdg) else _home() / ".config"
    candidates = [
        primary_auth_file(auth_file),
        config_home / "containers" / "auth.json",
        docker_config_dir() / "config.json",
    ]
    paths: list[Path] = []
    for path in candidates:
        if path is not None and path not in paths:
            paths.append(path)
    return paths


def config_key(registry: str) -> str:
    """The key docker uses in ``auths`` for ``registry``."""
    return DOCKER_HUB_KEY if registry == DOCKER_HUB else registry


def normalize_key(key: str) -> str:
    """An ``auths`` key as podman compares it: ``https://host/v1/`` (docker's legacy form) is
    ``host``; any name of Docker Hub is :data:`~ocifs.reference.DOCKER_HUB`."""
    if "://" in key:
        key = key.split("://", 1)[1].split("/", 1)[0]
    key = key.rstrip("/")
    host, sep, rest = key.partition("/")
    if host in DOCKER_HUB_ALIASES:
        host = DOCKER_HUB
    return host + sep + rest


def load_docker_config(path: Path | None = None) -> dict[str, Any]:
    """The parsed config file, ``{}`` if it does not exist; ConfigError if it is malformed."""
    path = path or docker_config_dir() / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        return {}  # podman creates an empty file; an empty file holds no credentials
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def lookup_credentials(
    registry: str,
    config: dict[str, Any] | None = None,
    *,
    repository: str | None = None,
    auth_file: str | os.PathLike[str] | None = None,
) -> Credentials | None:
    """Credentials for ``registry`` (and ``repository``, for ``host/namespace`` keys), or None
    (anonymous). From ``config`` if given, else from the first file of :func:`auth_file_paths`
    that has some."""
    if config is not None:
        return _lookup_in(config, registry, repository, "docker config")
    for path in auth_file_paths(auth_file):
        found = _lookup_in(load_docker_config(path), registry, repository, str(path))
        if found is not None:
            return found
    return None


def helper_for(config: dict[str, Any], registry: str) -> str | None:
    """The credential helper suffix that holds ``registry``'s credentials in ``config``, as docker
    decides: ``credHelpers[host]``, else ``credsStore``; None for the file itself."""
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key in (config_key(registry), registry):
            helper = helpers.get(key)
            if isinstance(helper, str) and helper:
                return helper
    store = config.get("credsStore")
    return store if isinstance(store, str) and store else None


def _lookup_in(config: dict[str, Any], registry: str, repository: str | None, where: str) -> Credentials | None:
    key = config_key(registry)
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        helper = helpers.get(key) or helpers.get(registry)
        if isinstance(helper, str) and helper:
            return _from_helper(helper, key)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        found = _from_helper(store, key)
        if found is not None:
            return found
    auths = config.get("auths")
    if isinstance(auths, dict):
        entry = _auth_entry(auths, registry, repository)
        if isinstance(entry, dict):
            return _from_auth_entry(entry, registry, where)
    return None


def _auth_entry(auths: dict[str, Any], registry: str, repository: str | None) -> Any:
    """The ``auths`` entry for ``registry``: the longest ``host/namespace`` prefix of
    ``repository`` first (podman), then the host under any of its spellings."""
    host = normalize_key(registry)
    wanted = [host]
    if repository:
        parts = repository.split("/")
        wanted = [f"{host}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)] + wanted
    exact = {k: v for k, v in auths.items() if isinstance(k, str)}
    for candidate in (*wanted, config_key(registry), registry):
        if candidate in exact:
            return exact[candidate]
    normalized = {normalize_key(k): v for k, v in exact.items()}
    for candidate in wanted:
        if candidate in normalized:
            return normalized[candidate]
    return None


def _from_auth_entry(entry: dict[str, Any], registry: str, where: str) -> Credentials | None:
    token = entry.get("identitytoken")
    auth = entry.get("auth")
    username, password = entry.get("username"), entry.get("password")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(f"{where}: the auth entry for {registry} is not valid base64") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise ConfigError(f"{where}: the auth entry for {registry} is not user:password")
    if isinstance(token, str) and token:
        # Keep a password stored beside the token: a realm without the OAuth2 endpoint needs it.
        return Credentials(
            username if isinstance(username, str) else "",
            password if isinstance(password, str) else "",
            identity_token=token,
        )
    if isinstance(username, str) and isinstance(password, str) and username:
        return Credentials(username, password)
    return None


def _helper_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PATH", _FALLBACK_PATH)
    return env


def _run_helper(suffix: str, action: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    """``docker-credential-<suffix> <action>`` with ``data`` on stdin (secrets go only there)."""
    program = f"docker-credential-{suffix}"
    env = _helper_env()
    path = shutil.which(program, path=env["PATH"])
    if path is None:
        raise ConfigError(
            f"credential helper {program} not found on PATH",
            hint="install it or remove it from the credentials file (credsStore/credHelpers)",
        )
    try:
        return subprocess.run(
            [path, action], input=data, capture_output=True, timeout=_HELPER_TIMEOUT, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"credential helper {program} {action} failed: {exc}") from None


def _not_found(result: subprocess.CompletedProcess[bytes]) -> bool:
    text = (result.stdout + result.stderr).decode("utf-8", "replace").lower()
    return "credentials not found" in text


def _from_helper(suffix: str, server: str) -> Credentials | None:
    program = f"docker-credential-{suffix}"
    result = _run_helper(suffix, "get", server.encode())
    if result.returncode != 0:
        if _not_found(result):
            return None
        # Never echo the helper's output: it could contain a secret.
        raise ConfigError(f"credential helper {program} exited with status {result.returncode}")
    try:
        data = json.loads(result.stdout.decode("utf-8", "replace"))
        username, secret = data["Username"], data["Secret"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"credential helper {program} returned malformed output") from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise ConfigError(f"credential helper {program} returned malformed output")
    if username == IDENTITY_TOKEN_USER:
        return Credentials(username, "", identity_token=secret)
    return Credentials(username, secret)


def login_target(auth_file: str | os.PathLike[str] | None = None) -> Path:
    """The file ``ocifs login`` writes: ``auth_file`` or ``$REGISTRY_AUTH_FILE`` if given (as
    podman), else docker's ``config.json`` (docker's; it survives a reboot, unlike podman's
    default under ``$XDG_RUNTIME_DIR``)."""
    explicit = auth_file or os.environ.get("REGISTRY_AUTH_FILE")
    return Path(explicit) if explicit else docker_config_dir() / "config.json"


@dataclass(frozen=True, slots=True)
class Stored:
    """Where :func:`store_credentials` put a secret: a helper program or a file."""

    path: Path
    helper: str | None = None

    def __str__(self) -> str:
        return f"credential helper docker-credential-{self.helper}" if self.helper else str(self.path)


def store_credentials(
    registry: str, username: str, password: str, path: Path | None = None, *, auth_file: str | None = None
) -> Stored:
    """Store credentials as ``docker login`` would: through the file's ``credHelpers[host]`` or
    ``credsStore`` helper (``docker-credential-<x> store``) when it names one, else as
    ``auths[registry]`` in the file itself (plain-text base64, mode 0600, replaced atomically,
    other keys kept). ``path`` defaults to :func:`login_target`. Returns where it went."""
    path = path or login_target(auth_file)
    config = load_docker_config(path)
    key = config_key(registry)
    helper = helper_for(config, registry)
    if helper is not None:
        message = json.dumps({"ServerURL": key, "Username": username, "Secret": password}).encode()
        result = _run_helper(helper, "store", message)
        if result.returncode != 0:
            raise ConfigError(
                f"credential helper docker-credential-{helper} store exited with status {result.returncode}"
            )
        return Stored(path, helper)
    auths = config.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise ConfigError(f"{path}: 'auths' is not an object")
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    auths[key] = {"auth": token}
    _write_config(path, config)
    return Stored(path)


def erase_credentials(registry: str, path: Path | None = None, *, auth_file: str | None = None) -> list[Stored]:
    """Remove ``registry``'s credentials from the login file (:func:`login_target`): from its
    helper (``docker-credential-<x> erase``) and from its ``auths`` under any spelling of the
    host. Returns where something was removed (empty: there was nothing)."""
    path = path or login_target(auth_file)
    config = load_docker_config(path)
    key = config_key(registry)
    erased: list[Stored] = []
    helper = helper_for(config, registry)
    if helper is not None:
        result = _run_helper(helper, "erase", key.encode())
        if result.returncode == 0:
            erased.append(Stored(path, helper))
        elif not _not_found(result):
            raise ConfigError(
                f"credential helper docker-credential-{helper} erase exited with status {result.returncode}"
            )
    auths = config.get("auths")
    if isinstance(auths, dict):
        host = normalize_key(registry)
        doomed = [k for k in auths if isinstance(k, str) and normalize_key(k) == host]
        if doomed:
            for k in doomed:
                del auths[k]
            _write_config(path, config)
            erased.append(Stored(path))
    return erased


def _write_config(path: Path, config: dict[str, Any]) -> None:
    """Replace ``path`` with ``config`` atomically, mode 0600, its directory created 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(config, f, indent="\t")
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CredentialSource:
    """The credentials of one registry for the life of a client, asked again when refused.

    ``current`` is what requests use. :meth:`refresh` is called when the registry or its token
    service refused ``current``: it asks the files and helpers again (``lookup``, in a worker
    thread: it may run a helper) unless another task already replaced the refused credentials
    or the last lookup is less than ``interval`` seconds old. It says whether there is
    something new to try, so each refusal leads to at most one more attempt.
    """

    def __init__(
        self,
        initial: Credentials | None,
        lookup: Callable[[], Credentials | None] | None = None,
        *,
        interval: float = REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.current = initial
        self._lookup = lookup
        self._interval = interval
        self._clock = clock
        self._last = -float("inf")
        self._lock = trio.Lock()
        self.refreshes = 0  # lookups made by refresh() (tests)

    @classmethod
    def fixed(cls, credentials: Credentials | None) -> CredentialSource:
        """Credentials given by the caller (``ocifs login`` checking a password): never asked again."""
        return cls(credentials)

    @classmethod
    def from_files(
        cls, registry: str, *, repository: str | None = None, auth_file: str | os.PathLike[str] | None = None
    ) -> CredentialSource:
        """Looked up now (a broken file or helper fails here) and again when refused."""

        def lookup() -> Credentials | None:
            return lookup_credentials(registry, repository=repository, auth_file=auth_file)

        return cls(lookup(), lookup)

    async def refresh(self, refused: Credentials | None) -> bool:
        """Whether credentials other than ``refused`` are now ``current`` (see the class)."""
        async with self._lock:
            if self.current != refused:
                return True  # another task already found new ones
            if self._lookup is None or self._clock() - self._last < self._interval:
                return False
            self._last = self._clock()
            self.refreshes += 1
            try:
                found = await trio.to_thread.run_sync(self._lookup)
            except ConfigError as exc:  # a file half written, a helper failing: keep what we had
                log.warning("asking for credentials again failed: %s", exc)
                return False
            if found == refused:
                return False
            log.info("credentials changed: retrying with the new ones")
            self.current = found
            return True
