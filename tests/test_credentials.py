"""Credentials as podman, skopeo and docker users have them, and credentials that rotate.

The search order (``--authfile``, ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``~/.config/containers/auth.json``, docker's ``config.json``), the file formats (docker's, which a
Kubernetes ``.dockerconfigjson`` secret also is), credential helpers for get/store/erase (a fake
``docker-credential-…`` script on ``PATH`` with a store on disk), ``ocifs login``/``logout``, and
a real mount that keeps serving cold reads after its registry's password (and token signing
key) rotated while the auth file or helper was updated.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from support.mounts import mounter
from support.registry import RegistryFactory, RegistryServer

from ocifs.commands.cli import apply_settings, build_parser, client_options
from ocifs.config import load_settings
from ocifs.errors import ConfigError
from ocifs.fs.options import split_options
from ocifs.reference import DOCKER_HUB
from ocifs.registry.credentials import (
    Credentials,
    CredentialSource,
    auth_file_paths,
    erase_credentials,
    lookup_credentials,
    store_credentials,
)

pytestmark = pytest.mark.timeout(120)

HOST = "r.example:5000"

_HELPER = '''#!{python}
"""docker-credential-{suffix}: a fake helper keeping its store in a JSON file."""
import json, os, sys
STORE = {store!r}
action = sys.argv[1] if len(sys.argv) > 1 else ""
data = sys.stdin.read()
try:
    with open(STORE) as f:
        store = json.load(f)
except FileNotFoundError:
    store = {{}}
server = json.loads(data)["ServerURL"] if action == "store" else data.strip()
with open(STORE + ".calls", "a") as f:
    f.write(json.dumps([action, server]) + "\\n")
def save():
    with open(STORE + ".tmp", "w") as f:
        json.dump(store, f)
    os.replace(STORE + ".tmp", STORE)
if action == "store":
    message = json.loads(data)
    store[server] = [message["Username"], message["Secret"]]
    save()
elif action in ("get", "erase"):
    if server not in store:
        print("credentials not found in native keychain")
        sys.exit(1)
    if action == "get":
        print(json.dumps({{"ServerURL": server, "Username": store[server][0], "Secret": store[server][1]}}))
    else:
        del store[server]
        save()
else:
    sys.exit(1)
'''


class Helper:
    """``docker-credential-<suffix>`` in a directory on ``PATH``, its store a JSON file."""

    def __init__(self, bin_dir: Path, suffix: str) -> None:
        self.suffix = suffix
        self.store_file = bin_dir / f"{suffix}.store.json"
        script = bin_dir / f"docker-credential-{suffix}"
        script.write_text(_HELPER.format(python=sys.executable, suffix=suffix, store=str(self.store_file)))
        script.chmod(0o755)

    def store(self) -> dict[str, list[str]]:
        if not self.store_file.exists():
            return {}
        data: dict[str, list[str]] = json.loads(self.store_file.read_text())
        return data

    def put(self, server: str, username: str, secret: str) -> None:
        store = self.store()
        store[server] = [username, secret]
        tmp = self.store_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(store))
        tmp.replace(self.store_file)

    def calls(self) -> list[tuple[str, str]]:
        path = Path(str(self.store_file) + ".calls")
        if not path.exists():
            return []
        return [tuple(json.loads(line)) for line in path.read_text().splitlines()]


class Home:
    """A private home: every file of the search is under ``root``, none exists yet."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self.runtime_auth = root / "run" / "containers" / "auth.json"
        self.config_auth = root / "home" / ".config" / "containers" / "auth.json"
        self.docker = root / "home" / ".docker" / "config.json"

    def helper(self, suffix: str) -> Helper:
        return Helper(self.bin, suffix)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """HOME, XDG_RUNTIME_DIR and PATH of this test's own; no DOCKER_CONFIG, REGISTRY_AUTH_FILE
    or XDG_CONFIG_HOME (the defaults apply)."""
    h = Home(tmp_path / "env")
    (h.root / "home").mkdir()
    (h.root / "run").mkdir()
    monkeypatch.setenv("HOME", str(h.root / "home"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(h.root / "run"))
    for name in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_CONFIG_HOME", "OCIFS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(h.bin), os.environ.get("PATH", "")]))
    yield h


def auth(username: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # atomic, as podman and docker write it
    return path


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocifs", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


# -- the search order ---------------------------------------------------------------------------


def test_search_order_is_podmans(home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert auth_file_paths() == [home.runtime_auth, home.config_auth, home.docker]
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "env.json"))
    assert auth_file_paths() == [tmp_path / "env.json", home.config_auth, home.docker]
    assert auth_file_paths(tmp_path / "flag.json") == [tmp_path / "flag.json", home.config_auth, home.docker]
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert auth_file_paths()[1:] == [tmp_path / "xdg" / "containers" / "auth.json", tmp_path / "dc" / "config.json"]


def test_the_first_file_with_the_host_wins_and_others_fall_through(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_json(home.docker, {"auths": {HOST: auth("docker", "d"), "only.docker": auth("od", "x")}})
    assert lookup_credentials(HOST) == Credentials("docker", "d")
    write_json(home.config_auth, {"auths": {HOST: auth("config", "c")}})
    assert lookup_credentials(HOST) == Credentials("config", "c")
    write_json(home.runtime_auth, {"auths": {HOST: auth("runtime", "r")}})
    assert lookup_credentials(HOST) == Credentials("runtime", "r")
    env_file = write_json(tmp_path / "env.json", {"auths": {HOST: auth("env", "e")}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(env_file))
    assert lookup_credentials(HOST) == Credentials("env", "e")  # replaces the runtime file
    flag = write_json(tmp_path / "flag.json", {"auths": {HOST: auth("flag", "f")}})
    assert lookup_credentials(HOST, auth_file=flag) == Credentials("flag", "f")
    # A host only docker knows is still found behind all of them; an unknown one is anonymous.
    assert lookup_credentials("only.docker", auth_file=flag) == Credentials("od", "x")
    assert lookup_credentials("nobody.example", auth_file=flag) is None
    # A missing --authfile is no error (it holds nothing); it replaces $REGISTRY_AUTH_FILE.
    assert lookup_credentials(HOST, auth_file=tmp_path / "missing.json") == Credentials("config", "c")


def test_a_broken_file_is_named(home: Home) -> None:
    home.config_auth.parent.mkdir(parents=True)
    home.config_auth.write_text("{not json")
    with pytest.raises(ConfigError, match=str(home.config_auth)):
        lookup_credentials(HOST)
    home.config_auth.write_text("")  # podman leaves empty files behind
    assert lookup_credentials(HOST) is None


# -- the formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (auth("u", "p:with:colons"), Credentials("u", "p:with:colons")),
        ({"username": "u", "password": "p"}, Credentials("u", "p")),
        ({"identitytoken": "refresh"}, Credentials("", "", identity_token="refresh")),
        ({**auth("u", "p"), "identitytoken": "refresh"}, Credentials("u", "p", identity_token="refresh")),
        ({}, None),
    ],
    ids=["auth", "username-password", "identitytoken", "auth-and-identitytoken", "empty"],
)
def test_entries(home: Home, entry: dict[str, str], expected: Credentials | None) -> None:
    write_json(home.config_auth, {"auths": {HOST: entry}})
    assert lookup_credentials(HOST) == expected


def test_a_kubernetes_dockerconfigjson_secret_is_usable_as_it_is(home: Home, tmp_path: Path) -> None:
    # `kubectl create secret docker-registry` writes this as the secret's .dockerconfigjson key;
    # mounted as a volume it is a file of that name.
    secret = tmp_path / "secret" / ".dockerconfigjson"
    write_json(
        secret, {"auths": {HOST: {"username": "robot", "password": "pw", "email": "x@y", **auth("robot", "pw")}}}
    )
    assert lookup_credentials(HOST, auth_file=secret) == Credentials("robot", "pw")


@pytest.mark.parametrize(
    ("key", "registry", "repository"),
    [
        (f"https://{HOST}", HOST, None),
        (f"https://{HOST}/v1/", HOST, None),
        (f"http://{HOST}/", HOST, None),
        ("docker.io", DOCKER_HUB, "library/ubuntu"),
        ("index.docker.io", DOCKER_HUB, None),
        ("https://index.docker.io/v1/", DOCKER_HUB, None),
    ],
)
def test_host_keys_match_as_podman_matches_them(home: Home, key: str, registry: str, repository: str | None) -> None:
    write_json(home.config_auth, {"auths": {key: auth("u", "p")}})
    assert lookup_credentials(registry, repository=repository) == Credentials("u", "p")


def test_namespace_keys_win_over_the_host(home: Home) -> None:
    write_json(
        home.config_auth,
        {"auths": {HOST: auth("host", "h"), f"{HOST}/team": auth("team", "t"), f"{HOST}/team/model": auth("m", "m")}},
    )
    assert lookup_credentials(HOST, repository="team/model") == Credentials("m", "m")
    assert lookup_credentials(HOST, repository="team/other") == Credentials("team", "t")
    assert lookup_credentials(HOST, repository="elsewhere/x") == Credentials("host", "h")
    assert lookup_credentials(HOST) == Credentials("host", "h")


def test_helpers_named_in_any_file(home: Home) -> None:
    helper = home.helper("fake")
    helper.put(HOST, "from-helper", "s")
    write_json(home.config_auth, {"credHelpers": {HOST: "fake"}, "auths": {HOST: auth("file", "f")}})
    assert lookup_credentials(HOST) == Credentials("from-helper", "s")  # credHelpers win over auths
    write_json(home.config_auth, {"credsStore": "fake", "auths": {"other.example": auth("file", "f")}})
    assert lookup_credentials(HOST) == Credentials("from-helper", "s")
    assert lookup_credentials("other.example") == Credentials("file", "f")  # not in the store: auths
    helper.put("tok.example", "<token>", "refresh")
    found = lookup_credentials("tok.example")
    assert found is not None and found.identity_token == "refresh" and "refresh" not in repr(found)
    assert ("get", HOST) in helper.calls()


# -- store and erase -----------------------------------------------------------------------------


def test_store_and_erase_through_the_files_helper(home: Home) -> None:
    helper = home.helper("fake")
    write_json(home.docker, {"credsStore": "fake"})
    where = store_credentials(HOST, "u", "secret-1")
    assert where.helper == "fake" and str(where) == "credential helper docker-credential-fake"
    assert helper.store() == {HOST: ["u", "secret-1"]}
    assert "secret-1" not in home.docker.read_text()
    assert lookup_credentials(HOST) == Credentials("u", "secret-1")
    assert [str(w) for w in erase_credentials(HOST)] == ["credential helper docker-credential-fake"]
    assert helper.store() == {} and lookup_credentials(HOST) is None
    assert [a for a, _ in helper.calls()] == ["store", "get", "erase", "get"]


def test_store_and_erase_in_a_file(home: Home, tmp_path: Path) -> None:
    target = tmp_path / "podman" / "auth.json"
    write_json(target, {"auths": {"keep.example": auth("k", "k"), f"https://{HOST}/v1/": auth("old", "o")}})
    where = store_credentials(HOST, "u", "p", auth_file=str(target))
    assert where.path == target and where.helper is None
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert lookup_credentials(HOST, auth_file=target) == Credentials("u", "p")
    erased = erase_credentials(HOST, auth_file=str(target))
    assert [w.path for w in erased] == [target]
    assert json.loads(target.read_text())["auths"] == {"keep.example": auth("k", "k")}  # every spelling went
    assert erase_credentials(HOST, auth_file=str(target)) == []


# -- asked again, bounded ------------------------------------------------------------------------


def test_a_source_is_asked_again_at_most_once_per_refusal_and_interval(expect_log: Any) -> None:
    now = [100.0]
    answers = [Credentials("u", "old")]
    calls: list[int] = []

    def lookup() -> Credentials | None:
        calls.append(1)
        return answers[-1]

    source = CredentialSource(Credentials("u", "old"), lookup, interval=1.0, clock=lambda: now[0])

    async def scenario() -> None:
        # The file has not changed yet: asked once, nothing new; a second refusal within the
        # interval does not run the helper again.
        assert not await source.refresh(Credentials("u", "old"))
        assert not await source.refresh(Credentials("u", "old"))
        assert len(calls) == 1
        # Rotated: after the interval the new secret is found, and every task that was refused
        # the old one retries without asking again.
        answers.append(Credentials("u", "new"))
        now[0] += 1.5
        assert await source.refresh(Credentials("u", "old"))
        assert await source.refresh(Credentials("u", "old"))
        assert source.current == Credentials("u", "new") and len(calls) == 2
        # A lookup that fails (a half-written file) keeps what we had.
        answers.append(Credentials("u", "new"))
        now[0] += 1.5

        def broken() -> Credentials | None:
            raise ConfigError("auth.json line 1: invalid JSON")

        source._lookup = broken
        with expect_log(r"asking for credentials again failed: auth.json line 1", count=1):
            assert not await source.refresh(Credentials("u", "new"))
        assert source.current == Credentials("u", "new")
        # Given credentials (ocifs login checking a password) are never looked up.
        fixed = CredentialSource.fixed(Credentials("u", "p"))
        assert not await fixed.refresh(Credentials("u", "p"))

    trio.run(scenario)


# -- where --authfile comes from -----------------------------------------------------------------


def test_authfile_from_the_flag_the_config_file_and_mount_options(tmp_path: Path, home: Home) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[credentials]\nauthfile = "/etc/ocifs/auth.json"\n')
    settings = load_settings([config])
    assert settings.auth_file == "/etc/ocifs/auth.json"
    args = build_parser().parse_args(["inspect", f"{HOST}/repo:tag"])
    apply_settings(args, settings)
    assert client_options(args).auth_file == "/etc/ocifs/auth.json"
    args = build_parser().parse_args(["inspect", f"{HOST}/repo:tag", "--authfile", "rel/auth.json"])
    apply_settings(args, settings)
    assert client_options(args).auth_file == os.path.abspath("rel/auth.json")  # the flag wins
    ours, fuse = split_options(["ro,authfile=/run/secrets/auth.json"])
    assert ours == {"authfile": "/run/secrets/auth.json"} and fuse == {"ro"}


# -- against real registries ---------------------------------------------------------------------


def test_podman_auth_json_via_registry_auth_file_and_xdg_runtime_dir(
    registry_factory: RegistryFactory, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_registry: RegistryServer = registry_factory(token={"allow_anonymous": False})
    basic_registry: RegistryServer = registry_factory(basic=True)
    payload = tmp_path / "data" / "weights.bin"
    payload.parent.mkdir()
    payload.write_bytes(os.urandom(100_000))
    # REGISTRY_AUTH_FILE, podman's format (auth only), for the token registry.
    user, password = token_registry.credentials()
    env_file = write_json(tmp_path / "podman-auth.json", {"auths": {token_registry.host: auth(user, password)}})
    denied = run_cli("push", "-q", f"{token_registry.host}/p/env:1", str(payload))
    assert denied.returncode != 0 and "authentication required" in denied.stderr
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(env_file))
    pushed = run_cli("push", "-q", f"{token_registry.host}/p/env:1", str(payload))
    assert pushed.returncode == 0, pushed.stderr
    assert run_cli("inspect", f"{token_registry.host}/p/env:1").returncode == 0
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    # $XDG_RUNTIME_DIR/containers/auth.json, where `podman login` writes, for the basic one.
    user, password = basic_registry.credentials()
    write_json(home.runtime_auth, {"auths": {basic_registry.host: auth(user, password)}})
    pushed = run_cli("push", "-q", f"{basic_registry.host}/p/xdg:1", str(payload))
    assert pushed.returncode == 0, pushed.stderr
    for text in (pushed.stdout, pushed.stderr, denied.stderr):
        assert password not in text


def test_login_and_logout_through_a_helper_and_a_file(
    registry_basic: RegistryServer, home: Home, tmp_path: Path
) -> None:
    user, password = registry_basic.credentials()
    host = registry_basic.host
    no_user = run_cli("login", host, "--password-stdin", stdin=password + "\n")
    assert no_user.returncode == 2 and "--username" in no_user.stderr
    # docker's config names a credsStore: login stores through it, as docker would.
    helper = home.helper("fake")
    write_json(home.docker, {"credsStore": "fake"})
    result = run_cli("login", host, "-u", user, "--password-stdin", stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    assert "docker-credential-fake" in result.stdout
    assert helper.store() == {host: [user, password]} and password not in home.docker.read_text()
    assert run_cli("inspect", f"{host}/nothing:here").stderr.count("authentication") == 0
    out = run_cli("logout", host)
    assert out.returncode == 0 and "docker-credential-fake" in out.stdout and helper.store() == {}
    # --authfile: written there, and the output says where.
    target = tmp_path / "auth.json"
    result = run_cli("login", host, "-u", user, "--password-stdin", "--authfile", str(target), stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout and lookup_credentials(host, auth_file=target) == Credentials(user, password)
    out = run_cli("logout", host, "--authfile", str(target))
    assert out.returncode == 0 and str(target) in out.stdout
    assert lookup_credentials(host, auth_file=target) is None
    again = run_cli("logout", host, "--authfile", str(target))
    assert again.returncode == 0 and "Not logged in" in again.stderr
    for r in (result, out, again, no_user):
        assert password not in r.stdout + r.stderr


# -- rotation during a mount ---------------------------------------------------------------------


def _artifact(tmp_path: Path, files: int) -> tuple[Path, dict[str, bytes]]:
    source = tmp_path / "model"
    source.mkdir()
    contents = {f"part-{n}.bin": os.urandom(300_000 + n) for n in range(files)}
    for name, data in contents.items():
        (source / name).write_bytes(data)
    return source, contents


def _push(ref: str, source: Path, auth_file: Path) -> None:
    result = run_cli("push", "-q", "--authfile", str(auth_file), "--chunk-size", "64K", ref, str(source))
    assert result.returncode == 0, result.stderr


def test_a_mount_follows_a_rotated_password_and_signing_key_via_its_authfile(
    registry_factory: RegistryFactory, home: Home, tmp_path: Path
) -> None:
    """Token auth: the password rotates at the token service and the signing key at the
    registry (restarted), so the mount's cached token is refused and the token service refuses
    the old password; the auth file (``-o authfile=``) was updated meanwhile. Cold reads after
    the rotation succeed."""
    registry: RegistryServer = registry_factory(token={"allow_anonymous": False})
    tokens = registry.token_server
    assert tokens is not None
    user, password = registry.credentials()
    auth_file = write_json(tmp_path / "secrets" / "auth.json", {"auths": {registry.host: auth(user, password)}})
    source, contents = _artifact(tmp_path, 3)
    ref = f"{registry.host}/rotate/token:1"
    _push(ref, source, auth_file)
    with mounter(tmp_path) as mount:
        m = mount(ref, "-o", f"authfile={auth_file}", "--debug")
        assert (m.path / "part-0.bin").read_bytes() == contents["part-0.bin"]
        new_password = tokens.rotate_password()
        write_json(auth_file, {"auths": {registry.host: auth(user, new_password)}})
        tokens.rotate_signing_key()
        registry.restart()
        refused = tokens.refused
        for name in ("part-1.bin", "part-2.bin"):  # cold: never read before
            assert (m.path / name).read_bytes() == contents[name]
        assert tokens.refused == refused + 1  # the old password, once; then the new one
        log = m.log_text()
        assert "credentials changed" in log
        for secret in (password, new_password):
            assert secret not in log


def test_a_mount_follows_a_rotated_password_via_its_credential_helper(
    registry_factory: RegistryFactory, home: Home, tmp_path: Path
) -> None:
    """Basic auth (htpasswd, read by the registry at start): the password changes and the
    registry restarts while the helper's store is updated; the mount's next cold reads are
    refused once, ask the helper again and succeed."""
    registry: RegistryServer = registry_factory(basic=True)
    user, password = registry.credentials()
    helper = home.helper("rotating")
    helper.put(registry.host, user, password)
    write_json(home.docker, {"credHelpers": {registry.host: "rotating"}})
    source, contents = _artifact(tmp_path, 3)
    ref = f"{registry.host}/rotate/basic:1"
    _push(ref, source, home.docker)
    with mounter(tmp_path) as mount:
        m = mount(ref, "--debug")
        assert (m.path / "part-0.bin").read_bytes() == contents["part-0.bin"]
        gets = [c for c in helper.calls() if c[0] == "get"]
        new_password = password + "-rotated"
        assert registry.basic_auth is not None
        registry.basic_auth[user] = new_password
        helper.put(registry.host, user, new_password)
        registry.restart()
        for name in ("part-1.bin", "part-2.bin"):
            assert (m.path / name).read_bytes() == contents[name]
        asked = [c for c in helper.calls() if c[0] == "get"]
        assert len(asked) == len(gets) + 1  # asked again once, not per request
        log = m.log_text()
        assert "credentials changed" in log
        for secret in (password, new_password):
            assert secret not in log
