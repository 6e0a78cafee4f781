"""Registry credentials as users already have them: docker's ``config.json``.

Read order (docker's): ``credHelpers[host]`` wins over ``credsStore``, which wins over an
``auths[host]`` entry. Helper programs speak docker's credential-helper protocol
(``docker-credential-<suffix> get``, the server on stdin, JSON out). A username of
``<token>`` means the secret is an identity (refresh) token for the OAuth2 token flow.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocifs.errors import ConfigError
from ocifs.reference import DOCKER_HUB

log = logging.getLogger(__name__)

# Docker Hub's credentials live under this historical key (docker/cli config file).
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
IDENTITY_TOKEN_USER = "<token>"
_HELPER_TIMEOUT = 30.0
# mount(8) strips PATH; credential helpers still have to be found.
_FALLBACK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and secret for one registry. ``identity_token`` set means OAuth2 refresh flow."""

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)


def docker_config_dir() -> Path:
    """``$DOCKER_CONFIG`` or ``~/.docker``."""
    env = os.environ.get("DOCKER_CONFIG")
    if env:
        return Path(env)
    return Path(os.environ.get("HOME") or Path.home()) / ".docker"


def config_key(registry: str) -> str:
    """The key docker uses in ``auths`` for ``registry``."""
    return DOCKER_HUB_KEY if registry == DOCKER_HUB else registry


def load_docker_config(path: Path | None = None) -> dict[str, Any]:
    """The parsed config file, ``{}`` if it does not exist; ConfigError if it is malformed."""
    path = path or docker_config_dir() / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def lookup_credentials(registry: str, config: dict[str, Any] | None = None) -> Credentials | None:
    """Credentials for ``registry`` from the docker config, or None (anonymous)."""
    if config is None:
        config = load_docker_config()
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
        entry = auths.get(key)
        if entry is None and registry != key:
            entry = auths.get(registry)
        if entry is None:
            # docker also matches "https://host" and "http://host" style keys.
            for candidate, value in auths.items():
                if isinstance(candidate, str) and candidate.split("://", 1)[-1].rstrip("/") == registry:
                    entry = value
                    break
        if isinstance(entry, dict):
            return _from_auth_entry(entry, registry)
    return None


def _from_auth_entry(entry: dict[str, Any], registry: str) -> Credentials | None:
    token = entry.get("identitytoken")
    auth = entry.get("auth")
    username, password = entry.get("username"), entry.get("password")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(f"docker config: the auth entry for {registry} is not valid base64") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise ConfigError(f"docker config: the auth entry for {registry} is not user:password")
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


def _from_helper(suffix: str, server: str) -> Credentials | None:
    program = f"docker-credential-{suffix}"
    path = shutil.which(program, path=_helper_env()["PATH"])
    if path is None:
        raise ConfigError(
            f"credential helper {program} not found on PATH",
            hint="install it or remove it from the docker config (credsStore/credHelpers)",
        )
    try:
        result = subprocess.run(
            [path, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            env=_helper_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"credential helper {program} failed: {exc}") from None
    out = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        if (
            "credentials not found" in out.lower()
            or "credentials not found" in result.stderr.decode("utf-8", "replace").lower()
        ):
            return None
        # Never echo the helper's output: it could contain a secret.
        raise ConfigError(f"credential helper {program} exited with status {result.returncode}")
    try:
        data = json.loads(out)
        username, secret = data["Username"], data["Secret"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"credential helper {program} returned malformed output") from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise ConfigError(f"credential helper {program} returned malformed output")
    if username == IDENTITY_TOKEN_USER:
        return Credentials(username, "", identity_token=secret)
    return Credentials(username, secret)


def store_credentials(registry: str, username: str, password: str, path: Path | None = None) -> Path:
    """Write ``auths[registry]`` into the docker config like ``docker login`` (plain-text auth).

    Existing keys are kept; the file is replaced atomically and created with mode 0600.
    Returns the path written.
    """
    path = path or docker_config_dir() / "config.json"
    config = load_docker_config(path)
    auths = config.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise ConfigError(f"{path}: 'auths' is not an object")
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    auths[config_key(registry)] = {"auth": token}
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
    return path
