"""Trust like the rest of the host (docs/operations.md, "Trust"): real TLS registries under a
name that is not loopback, trusted the ways an administrator makes them trusted — the system
store (``update-ca-certificates``), certs.d directories, ``SSL_CERT_FILE``, ``--ca-file`` — and
registries that require a client certificate (distribution's ``http.tls.clientcas``).

The processes under test run without the CA-bundle variables this machine's environment sets
for its own network (a user's node sets none): :data:`CA_ENV` is removed, and set only where a
test is about it. These tests change ``/etc/hosts``, ``/usr/local/share/ca-certificates`` and
``/etc/docker/certs.d`` (they run as root) and undo it at teardown, with names unique to the run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from support.mounts import mounter
from support.registry import (
    ClientMaterial,
    RegistryFactory,
    RegistryServer,
    TLSMaterial,
    make_client_material,
    make_tls_material,
)

from ocifs.digest import Digest
from ocifs.errors import RegistryError, UsageError
from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.registry.tls import build_trust
from ocifs.retry import RetryPolicy

#: Variables that name CA bundles; none is set on a user's node.
CA_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
HOSTS = Path("/etc/hosts")
DOCKER_CERTS_D = Path("/etc/docker/certs.d")

PAYLOAD = secrets.token_bytes(3 * 1024 * 1024 + 17)  # several chunks: blob bodies on the threaded transport


# -- the host's side: a name, the system store ------------------------------------------------


@pytest.fixture(scope="module")
def name() -> Iterator[str]:
    """A host name that is not loopback by its spelling and resolves to 127.0.0.1 (/etc/hosts)."""
    host = f"ocifs-trust-{secrets.token_hex(4)}.test"
    line = f"127.0.0.1 {host}\n"
    text = HOSTS.read_text()
    HOSTS.write_text(text + ("" if text.endswith("\n") or not text else "\n") + line)
    try:
        yield host
    finally:
        HOSTS.write_text("".join(kept for kept in HOSTS.read_text().splitlines(True) if kept != line))


def _update_ca_certificates() -> None:
    tool = shutil.which("update-ca-certificates")
    if tool is None:
        pytest.fail("update-ca-certificates not found: apt-get install ca-certificates", pytrace=False)
    subprocess.run([tool], check=True, capture_output=True, timeout=120)


@pytest.fixture
def install_system_ca() -> Iterator[object]:
    """``install(ca_file)``: put a CA in the system store as an administrator does; undone after."""
    installed: dict[Path, str] = {}

    def install(ca_file: Path) -> None:
        target = LOCAL_CA_DIR / f"ocifs-test-{secrets.token_hex(6)}.crt"
        shutil.copyfile(ca_file, target)
        installed[target] = ca_file.read_text().strip()
        _update_ca_certificates()

    try:
        yield install
    finally:
        for path in installed:
            path.unlink(missing_ok=True)
        if installed:
            _update_ca_certificates()  # drops the links and rebuilds the bundle without ours
            bundle = Path(ssl.get_default_verify_paths().openssl_cafile).read_text()
            assert not any(pem in bundle for pem in installed.values()), "a test CA stayed in the system store"


@pytest.fixture
def host_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of a user's node: no CA-bundle variables, no ocifs or docker config of
    this machine. Returns the config file ($OCIFS_CONFIG, empty until a test writes it)."""
    for variable in CA_ENV:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("OCIFS_CERTS_D", raising=False)
    config = tmp_path / "config.toml"
    config.write_text("")
    monkeypatch.setenv("OCIFS_CONFIG", str(config))
    docker = tmp_path / "docker-config"
    docker.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    return config


def tls_registry(
    factory: RegistryFactory, tmp_path: Path, host: str, *, client_ca: ClientMaterial | None = None
) -> tuple[RegistryServer, TLSMaterial, str]:
    """A TLS registry whose certificate names ``host``; returns it, its TLS material and ``host:port``."""
    material = make_tls_material(tmp_path / f"tls-{secrets.token_hex(3)}", hosts=(host, "127.0.0.1"))
    server = factory(tls=material, client_ca=client_ca)
    return server, material, f"{host}:{server.port}"


def ocifs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocifs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def push_pull(tmp_path: Path, ref: str, *flags: str, env: dict[str, str] | None = None) -> None:
    """Push :data:`PAYLOAD` to ``ref`` and pull it back, both with ``flags``; both must work."""
    source = tmp_path / f"src-{secrets.token_hex(3)}"
    source.mkdir()
    (source / "model.bin").write_bytes(PAYLOAD)
    pushed = ocifs("push", "-q", ref, str(source / "model.bin"), "--chunk-size", "1M", *flags, env=env)
    assert pushed.returncode == 0, pushed.stderr
    out = tmp_path / f"out-{secrets.token_hex(3)}"
    pulled = ocifs("pull", "-q", ref, "-o", str(out), *flags, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert (out / "model.bin").read_bytes() == PAYLOAD


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -- the system store -------------------------------------------------------------------------


def test_a_ca_installed_system_wide_is_trusted_by_push_pull_and_mount_with_no_flag(
    registry_factory: RegistryFactory, tmp_path: Path, name: str, host_env: Path, install_system_ca: object
) -> None:
    _server, material, host = tls_registry(registry_factory, tmp_path, name)
    ref = f"{host}/trust/system:v1"
    before = ocifs("inspect", ref)
    line = one_line_error(before)
    assert "CERTIFICATE_VERIFY_FAILED" in line and "system store" in line and "--ca-file" in line, line
    assert f"/etc/docker/certs.d/{host}" in line, line
    install_system_ca(material.ca_file)  # type: ignore[operator]
    push_pull(tmp_path, ref)
    with mounter(tmp_path) as mount:
        mounted = mount(ref)
        assert (mounted.path / "model.bin").read_bytes() == PAYLOAD


async def test_manifests_and_blob_bodies_share_the_system_store(
    registry_factory: RegistryFactory, tmp_path: Path, name: str, host_env: Path, install_system_ca: object
) -> None:
    """The httpx path (manifests, small blobs) and the threaded one (large blob bodies) trust
    the same store: before, httpx used certifi and only blob bodies saw the system store."""
    _server, material, host = tls_registry(registry_factory, tmp_path, name)
    install_system_ca(material.ca_file)  # type: ignore[operator]
    data = secrets.token_bytes(1024 * 1024)
    digest = Digest.of_bytes(data)
    async with RegistryClient(host, options=ClientOptions(retry=RetryPolicy(attempts=1))) as client:
        assert client.fast_path_enabled
        await client.upload_blob("trust/paths", digest, data)
        await client.ping()
        assert await client.get_blob("trust/paths", digest, len(data)) == data
        assert client.stats.fast_gets == 1


def test_ssl_cert_file_names_the_store(
    registry_factory: RegistryFactory, tmp_path: Path, name: str, host_env: Path
) -> None:
    _server, material, host = tls_registry(registry_factory, tmp_path, name)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(Path(ssl.get_default_verify_paths().openssl_cafile).read_bytes() + material.ca_file.read_bytes())
    push_pull(tmp_path, f"{host}/trust/env:v1", env={"SSL_CERT_FILE": str(bundle)})
    line = one_line_error(ocifs("inspect", f"{host}/trust/env:v1"))
    assert "CERTIFICATE_VERIFY_FAILED" in line


def test_ca_file_adds_to_the_system_store(
    registry_factory: RegistryFactory, tmp_path: Path, name: str, host_env: Path, install_system_ca: object
) -> None:
    _server, material, host = tls_registry(registry_factory, tmp_path, name)
    install_system_ca(material.ca_file)  # type: ignore[operator]
    other = make_tls_material(tmp_path / "other").ca_file
    push_pull(tmp_path, f"{host}/trust/add:v1", "--ca-file", str(other))


# -- certs.d ----------------------------------------------------------------------------------


@pytest.fixture
def docker_certs_d() -> Iterator[list[Path]]:
    """Host directories created under /etc/docker/certs.d by a test; removed after."""
    made: list[Path] = []
    created = not DOCKER_CERTS_D.exists()
    try:
        yield made
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        if created:
            shutil.rmtree(DOCKER_CERTS_D, ignore_errors=True)


def test_certs_d_directories_are_read_as_docker_and_podman_read_them(
    registry_factory: RegistryFactory, tmp_path: Path, name: str, host_env: Path, docker_certs_d: list[Path]
) -> None:
    _server, material, host = tls_registry(registry_factory, tmp_path, name)
    ref = f"{host}/trust/certsd:v1"
    # $OCIFS_CERTS_D
    mine = tmp_path / "certs.d"
    (mine / host).mkdir(parents=True)
    shutil.copyfile(material.ca_file, mine / host / "registry-ca.crt")
    push_pull(tmp_path, ref, env={"OCIFS_CERTS_D": str(mine)})
    # [tls] certs_d in the configuration file
    host_env.write_text(f'[tls]\ncerts_d = "{mine}"\n')
    assert ocifs("inspect", ref).returncode == 0
    host_env.write_text("")
    assert ocifs("inspect", ref).returncode != 0
    # /etc/docker/certs.d/<host:port>/, docker's own place
    system = DOCKER_CERTS_D / host
    docker_certs_d.append(system)
    system.mkdir(parents=True)
    shutil.copyfile(material.ca_file, system / "ca.crt")
    result = ocifs("inspect", ref)
    assert result.returncode == 0, result.stderr


# -- client certificates ----------------------------------------------------------------------


def test_a_registry_that_requires_a_client_certificate(
    registry_factory: RegistryFactory, tmp_path: Path, name: str, host_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client_material(tmp_path / "client")
    _server, material, host = tls_registry(registry_factory, tmp_path, name, client_ca=client)
    certs_d = tmp_path / "certs.d"
    (certs_d / host).mkdir(parents=True)
    shutil.copyfile(material.ca_file, certs_d / host / "ca.crt")
    monkeypatch.setenv("OCIFS_CERTS_D", str(certs_d))  # the registry's CA; mounts inherit it
    env: dict[str, str] = {}
    ref = f"{host}/trust/mtls:v1"

    line = one_line_error(ocifs("inspect", ref, env=env))
    assert "the registry asks for a client certificate: pass --cert-file and --key-file" in line, line
    assert str(certs_d / host) in line, line

    push_pull(tmp_path, ref, "--cert-file", str(client.cert_file), "--key-file", str(client.key_file), env=env)

    # docker's names in certs.d: client.cert + client.key
    shutil.copyfile(client.cert_file, certs_d / host / "client.cert")
    shutil.copyfile(client.key_file, certs_d / host / "client.key")
    result = ocifs("inspect", ref, env=env)
    assert result.returncode == 0, result.stderr
    (certs_d / host / "client.cert").unlink()
    (certs_d / host / "client.key").unlink()

    # the configuration file, per registry
    host_env.write_text(f'[registry."{host}"]\ncert_file = "{client.cert_file}"\nkey_file = "{client.key_file}"\n')
    result = ocifs("inspect", ref, env=env)
    assert result.returncode == 0, result.stderr
    host_env.write_text("")

    # a mount with -o options (as fstab gives them)
    with mounter(tmp_path) as mount:
        mounted = mount(ref, "-o", f"cert_file={client.cert_file},key_file={client.key_file}")
        assert (mounted.path / "model.bin").read_bytes() == PAYLOAD

    # a certificate from a CA the registry does not trust
    stranger = make_client_material(tmp_path / "stranger")
    line = one_line_error(
        ocifs("inspect", ref, "--cert-file", str(stranger.cert_file), "--key-file", str(stranger.key_file), env=env)
    )
    assert f"the registry refused the client certificate {stranger.cert_file}" in line, line


async def test_a_missing_client_certificate_is_not_retried(
    registry_factory: RegistryFactory, tmp_path: Path, name: str, host_env: Path
) -> None:
    client = make_client_material(tmp_path / "client")
    server, material, host = tls_registry(registry_factory, tmp_path, name, client_ca=client)
    options = ClientOptions(ca_file=str(material.ca_file), retry=RetryPolicy(attempts=5))
    async with RegistryClient(host, options=options) as registry_client:
        with pytest.raises(RegistryError, match="the registry asks for a client certificate"):
            await registry_client.ping()
    # Every attempt happened before ping() returned, but the registry writes its log line after
    # the handshake it refused: wait for the first line, then for the log to stay quiet.
    deadline = time.monotonic() + 20
    seen, quiet_since = server.log_text(), time.monotonic()
    while time.monotonic() < deadline:
        await trio.sleep(0.05)
        now = server.log_text()
        if now != seen:
            seen, quiet_since = now, time.monotonic()
        elif "client didn't provide a certificate" in seen and time.monotonic() - quiet_since > 0.5:
            break
    assert seen.count("client didn't provide a certificate") == 1, server.log_tail()


# -- mistakes in the files given ----------------------------------------------------------------


def test_unusable_tls_files_are_one_clear_line(tmp_path: Path, host_env: Path) -> None:
    client = make_client_material(tmp_path / "client")
    other = make_client_material(tmp_path / "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = {
        "cannot read CA file": {"ca_file": str(tmp_path / "missing.pem")},
        "holds no PEM certificate": {"ca_file": str(garbage)},
        "needs --cert-file": {"key_file": str(client.key_file)},
        "do not match": {"cert_file": str(client.cert_file), "key_file": str(other.key_file)},
        "holds no key: pass --key-file": {"cert_file": str(client.cert_file)},
        "cannot read client certificate file": {"cert_file": str(tmp_path / "nope.cert")},
    }
    for expected, options in cases.items():
        with pytest.raises(UsageError, match=expected) as info:
            build_trust("registry.example:5000", **options)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
    # and through the command line, before any request
    line = one_line_error(ocifs("inspect", "registry.example:5000/a/b:v1", "--key-file", str(client.key_file)))
    assert "--key-file" in line and "needs --cert-file" in line, line


def test_a_lone_key_in_certs_d_is_refused_as_docker_does(
    tmp_path: Path, host_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs_d = tmp_path / "certs.d"
    (certs_d / "registry.example").mkdir(parents=True)
    (certs_d / "registry.example" / "client.key").write_text("")
    monkeypatch.setenv("OCIFS_CERTS_D", str(certs_d))
    with pytest.raises(
        UsageError, match=r"has no client certificate .*client\.cert \(CA certificates must end in \.crt\)"
    ):
        build_trust("registry.example")
