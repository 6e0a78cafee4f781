"""The registry client against the real distribution 2.8 registry, for every auth variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.registry import DockerConfig, RegistryFactory, RegistryServer

from ocifs.digest import Digest
from ocifs.errors import AuthenticationError, IntegrityError, NotFound, RegistryError, RegistryUnavailable
from ocifs.format.media import MEDIA_TYPE_MANIFEST as MEDIA_TYPE_MANIFEST
from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.registry.credentials import Credentials, lookup_credentials
from ocifs.retry import RetryPolicy

EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


def manifest_for(layers: list[tuple[Digest, int]]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "artifactType": "application/vnd.ocifs.test",
            "config": {"mediaType": EMPTY_TYPE, "digest": str(Digest.of_bytes(EMPTY)), "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": str(d), "size": s} for d, s in layers],
        }
    ).encode()


def client_for(server: RegistryServer, credentials: Credentials | None = None, **options: object) -> RegistryClient:
    opts = ClientOptions(ca_file=str(server.ca_file) if server.ca_file else None, **options)  # type: ignore[arg-type]
    return RegistryClient(server.host, credentials=credentials, options=opts)


async def exercise_every_operation(client: RegistryClient, repo: str) -> None:
    """Ping, uploads, HEAD, GET whole and ranged, cross-repo mount, manifests and tags."""
    await client.ping()
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = Digest.of_bytes(data)
    assert await client.blob_size(repo, digest) is None
    assert await client.upload_blob(repo, digest, data) == "uploaded"
    assert await client.blob_size(repo, digest) == len(data)
    assert await client.get_blob(repo, digest, len(data)) == data
    # Large bodies take the threaded fast path once the auth scheme is known.
    assert await client.get_blob(repo, digest, len(data)) == data
    assert client.stats.fast_gets >= 1
    assert await client.get_blob_range(repo, digest, 1000, 300_000) == data[1000:300_000]
    assert await client.get_blob_range(repo, digest, 1000, 5000) == data[1000:5000]
    assert await client.get_blob_range(repo, digest, len(data) - 10, len(data)) == data[-10:]
    # Large uploads take the threaded fast path too (the auth scheme is known by now).
    second = os.urandom(2 * 1024 * 1024 + 5)
    before = client.stats.fast_puts
    assert await client.upload_blob(repo, Digest.of_bytes(second), second) == "uploaded"
    assert client.stats.fast_puts == before + 1
    assert await client.get_blob(repo, Digest.of_bytes(second), len(second)) == second
    # Cross-repository mount: the blob appears in another repository without its bytes being sent.
    other = repo + "-copy"
    assert await client.upload_blob(other, digest, data, mount_from=repo) == "mounted"
    assert await client.blob_size(other, digest) == len(data)
    await client.upload_blob(repo, Digest.of_bytes(EMPTY), EMPTY)
    manifest = manifest_for([(digest, len(data))])
    pushed = await client.put_manifest(repo, "v1", manifest, MEDIA_TYPE_MANIFEST)
    assert pushed == Digest.of_bytes(manifest)
    got = await client.get_manifest(repo, "v1")
    assert got.data == manifest and got.digest == pushed and got.media_type == MEDIA_TYPE_MANIFEST
    by_digest = await client.get_manifest(repo, str(pushed))
    assert by_digest.data == manifest
    with pytest.raises(NotFound):
        await client.get_manifest(repo, "nope")
    await client.put_manifest(repo, "v2", manifest, MEDIA_TYPE_MANIFEST)
    assert (await client.get_manifest(repo, "v2")).digest == pushed  # a second tag, same manifest


async def test_every_operation_without_auth(shared_registry: RegistryServer) -> None:
    async with client_for(shared_registry) as client:
        await exercise_every_operation(client, "plain/ops")


async def test_every_operation_with_basic_auth(registry_basic: RegistryServer) -> None:
    user, password = registry_basic.credentials()
    async with client_for(registry_basic, Credentials(user, password)) as client:
        await exercise_every_operation(client, "basic/ops")


async def test_every_operation_over_tls(registry_tls: RegistryServer) -> None:
    async with client_for(registry_tls) as client:
        assert client.base_url.startswith("https://")
        await exercise_every_operation(client, "tls/ops")


async def test_every_operation_with_token_auth_and_cached_tokens(registry_token: RegistryServer) -> None:
    user, password = registry_token.credentials()
    async with client_for(registry_token, Credentials(user, password)) as client:
        await exercise_every_operation(client, "token/ops")
        first = client.token_requests
        # Tokens are cached per scope: a second round asks for no new token.
        data = b"again"
        await client.upload_blob("token/ops", Digest.of_bytes(data), data)
        assert await client.get_blob("token/ops", Digest.of_bytes(data)) == data
    assert client.token_requests == first
    # One token per distinct scope set, not per request.
    assert 1 <= first <= 8
    assert len(registry_token.token_server.requests) == first


async def test_anonymous_token_pulls_but_cannot_push(registry_token: RegistryServer) -> None:
    user, password = registry_token.credentials()
    data = b"public bytes"
    digest = Digest.of_bytes(data)
    async with client_for(registry_token, Credentials(user, password)) as client:
        await client.upload_blob("pub/x", digest, data)
    async with client_for(registry_token) as anonymous:
        assert await anonymous.get_blob("pub/x", digest) == data
        with pytest.raises(AuthenticationError, match=r"authentication required: run `ocifs login 127\.0\.0\.1"):
            await anonymous.upload_blob("pub/x", Digest.of_bytes(b"new"), b"new")


async def test_token_concurrent_requests_share_one_refresh(registry_token: RegistryServer) -> None:
    import trio

    user, password = registry_token.credentials()
    async with client_for(registry_token, Credentials(user, password)) as client, trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(client.blob_size, "conc/x", Digest.of_bytes(b"x"))
    assert client.token_requests == 1


@pytest.mark.parametrize("variant", ["basic", "token"])
async def test_wrong_credentials_give_a_clear_error(registry_factory: RegistryFactory, variant: str) -> None:
    server = registry_factory(**{variant: True})
    user, _ = server.credentials()
    async with client_for(server, Credentials(user, "wrong-password")) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.ping()
    text = str(info.value)
    assert server.host in text and "ocifs login" in text and "wrong-password" not in text


async def test_tls_without_the_ca_fails_clearly(registry_tls: RegistryServer) -> None:
    # The system trust store does not know the test CA: a verification failure, named as such,
    # and not RegistryUnavailable, which callers (the fetcher) would retry: the same
    # certificate comes back every time.
    untrusted = ClientOptions(ca_file="/etc/ssl/certs/ca-certificates.crt")
    async with RegistryClient(registry_tls.host, options=untrusted) as client:
        with pytest.raises(RegistryError) as info:
            await client.ping()
        assert client.stats.retries == 0
    assert not isinstance(info.value, RegistryUnavailable)
    assert "TLS handshake failed (CERTIFICATE_VERIFY_FAILED)" in str(info.value) and "--ca-file" in str(info.value)
    # Loopback defaults to plain HTTP; against a TLS port that says what to do.
    async with RegistryClient(registry_tls.host) as plain:
        with pytest.raises(RegistryError, match=r"speaks HTTPS.*--ca-file"):
            await plain.ping()
    async with RegistryClient(registry_tls.host, options=ClientOptions(insecure=True)) as insecure:
        await insecure.ping()


async def test_fast_path_steps_aside_for_an_environment_proxy(
    shared_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", "")
    client = RegistryClient(shared_registry.host)
    assert not client.fast_path_enabled
    await client.aclose()


async def test_manifest_by_digest_is_verified_against_registry_storage(registry: RegistryServer) -> None:
    async with client_for(registry) as client:
        await client.upload_blob("v/x", Digest.of_bytes(EMPTY), EMPTY)
        manifest = manifest_for([])
        digest = await client.put_manifest("v/x", "t", manifest, MEDIA_TYPE_MANIFEST)
        assert (await client.get_manifest("v/x", str(digest))).data == manifest
        missing = Digest.of_bytes(b"not a manifest")
        with pytest.raises(NotFound):
            await client.get_manifest("v/x", str(missing))
    # Corrupt the stored manifest bytes: fetched by digest, it must be refused.
    path = registry.blob_path(digest)
    path.write_bytes(manifest.replace(b"ocifs.test", b"ocifs.evil"))
    async with client_for(registry) as client:
        with pytest.raises(IntegrityError):
            await client.get_manifest("v/x", str(digest))


async def test_registry_down_is_one_clear_error(registry: RegistryServer) -> None:
    registry.stop()
    async with client_for(registry, retry=RetryPolicy(attempts=2, base_delay=0.01)) as client:
        with pytest.raises(RegistryUnavailable) as info:
            await client.ping()
    assert "connection refused" in str(info.value) and "is the registry running" in str(info.value)


async def test_credentials_from_docker_config_and_helpers(
    registry_basic: RegistryServer, docker_config: DockerConfig
) -> None:
    user, password = registry_basic.credentials()
    docker_config.add_auth(registry_basic)
    found = lookup_credentials(registry_basic.host)
    assert found == Credentials(user, password)
    # credHelpers win over auths; a helper saying "not found" means anonymous.
    docker_config.install_credential_helper("testhelper", {registry_basic.host: (user, password)})
    docker_config.set_cred_helper(registry_basic.host, "testhelper")
    assert lookup_credentials(registry_basic.host) == Credentials(user, password)
    assert ("get", registry_basic.host) in docker_config.helper_calls("testhelper")
    docker_config.set_creds_store("testhelper")
    assert lookup_credentials("other.example:5000") is None
    # Identity tokens: username <token> through a helper.
    docker_config.install_credential_helper("tok", {"tok.example": ("<token>", "refresh-123")})
    docker_config.set_cred_helper("tok.example", "tok")
    creds = lookup_credentials("tok.example")
    assert creds is not None and creds.identity_token == "refresh-123"
    assert "refresh-123" not in repr(creds)


def run_cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocifs", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_login_writes_docker_config_and_rejects_wrong_password(
    registry_basic: RegistryServer, docker_config: DockerConfig
) -> None:
    user, password = registry_basic.credentials()
    bad = run_cli("login", registry_basic.host, "-u", user, "--password-stdin", stdin="nope\n")
    assert bad.returncode != 0
    assert bad.stderr.count("\n") == 1 and "ocifs: error:" in bad.stderr and "Traceback" not in bad.stderr
    assert "nope" not in bad.stderr
    assert not docker_config.config_file.exists()
    good = run_cli("login", registry_basic.host, "-u", user, "--password-stdin", stdin=password + "\n")
    assert good.returncode == 0, good.stderr
    assert oct(docker_config.config_file.stat().st_mode & 0o777) == "0o600"
    assert lookup_credentials(registry_basic.host) == Credentials(user, password)


def test_login_with_token_auth(registry_token: RegistryServer, docker_config: DockerConfig) -> None:
    user, password = registry_token.credentials()
    assert run_cli("login", registry_token.host, "-u", user, "--password-stdin", stdin="bad\n").returncode == 1
    result = run_cli("login", registry_token.host, "-u", user, "--password-stdin", stdin=password + "\n")
    assert result.returncode == 0, result.stderr


def test_cli_version_and_bad_reference() -> None:
    assert run_cli("--version").stdout.startswith("ocifs ")
    result = run_cli("inspect", "Not A Ref")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("ocifs: error: invalid reference") and "Traceback" not in result.stderr


async def test_identity_token_falls_back_to_get_when_the_realm_has_no_oauth_endpoint(
    registry_token: RegistryServer, docker_config: DockerConfig
) -> None:
    """The test token server answers the OAuth2 POST with 404, as distribution's spec allows:
    the client then asks with GET and the Basic credentials stored beside the token."""
    user, password = registry_token.credentials()
    docker_config.add_auth(registry_token, user, password, identitytoken="refresh-token-123")
    creds = lookup_credentials(registry_token.host)
    assert creds is not None and creds.identity_token == "refresh-token-123" and creds.password == password
    async with client_for(registry_token, creds) as client:
        data = b"via identity token config"
        assert await client.upload_blob("idtok/x", Digest.of_bytes(data), data) == "uploaded"
    assert any(r.user == user for r in registry_token.token_server.requests)
