"""The real-registry harness itself works: every registry variant, the token server, skopeo, logs.

These tests speak the distribution API with plain httpx (no ocifs code), so a failure here
means the harness (or the installed docker-registry) is broken, not ocifs.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.checklogs import assert_logs
from support.registry import (
    DockerConfig,
    MissingToolError,
    RegistryFactory,
    RegistryServer,
    free_port,
    make_tls_material,
)
from support.token_server import TokenServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` → ("bearer", {realm, service, ...}). Test-grade parser."""
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    for part in rest.split('",'):
        key, _, value = part.partition("=")
        params[key.strip()] = value.strip().strip('"')
    return scheme.lower(), params


def push_blob(client: httpx.Client, base: str, repo: str, data: bytes) -> str:
    """Monolithic upload (POST, then PUT to the Location with ``digest`` merged in); returns digest."""
    digest = sha256(data)
    started = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = httpx.URL(base).join(started.headers["Location"])
    done = client.put(
        location.copy_merge_params({"digest": digest}),
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    assert done.headers["Docker-Content-Digest"] == digest
    return digest


def put_manifest(client: httpx.Client, base: str, repo: str, tag: str, layer: bytes) -> str:
    """Push an empty config, ``layer`` and a manifest tagged ``tag``; return the manifest digest."""
    config = b"{}"
    config_digest = push_blob(client, base, repo, config)
    layer_digest = push_blob(client, base, repo, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.ocifs.test",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [{"mediaType": "application/octet-stream", "digest": layer_digest, "size": len(layer)}],
        }
    ).encode()
    response = client.put(f"{base}/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201, response.text
    return sha256(manifest)


def make_oci_layout(directory: Path, tag: str = "v1") -> tuple[Path, str]:
    """A one-layer OCI image layout (gzip tar layer, minimal config); returns (dir, manifest digest)."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def add_blob(data: bytes) -> dict[str, Any]:
        digest = sha256(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        payload = b"hello from the ocifs harness\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(payload)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(raw.getvalue())]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **add_blob(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, **add_blob(layer)}],
        }
    ).encode()
    manifest_desc = {"mediaType": OCI_MANIFEST, **add_blob(manifest)}
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))
    return directory, manifest_desc["digest"]


def skopeo_copy(skopeo: str, layout: Path, dest: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [skopeo, "--insecure-policy", "copy", "--quiet", "--preserve-digests", *args, f"oci:{layout}:v1", dest],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# -- plain registry --------------------------------------------------------------------------


def test_plain_registry_answers_v2(shared_registry: RegistryServer) -> None:
    response = httpx.get(f"{shared_registry.url}/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert shared_registry.host == f"127.0.0.1:{shared_registry.port}"
    assert shared_registry.url.startswith("http://")
    assert shared_registry.username is None and shared_registry.ca_file is None


def test_blob_round_trip_and_blob_path(shared_registry: RegistryServer) -> None:
    data = os.urandom(100_000)
    with httpx.Client() as client:
        digest = push_blob(client, shared_registry.url, "harness/plain", data)
        head = client.head(f"{shared_registry.url}/v2/harness/plain/blobs/{digest}")
        assert head.status_code == 200
        assert int(head.headers["Content-Length"]) == len(data)
        assert client.get(f"{shared_registry.url}/v2/harness/plain/blobs/{digest}").content == data
    assert shared_registry.blob_path(digest).read_bytes() == data


def test_corrupt_blob_is_served_corrupt(registry: RegistryServer) -> None:
    data = b"x" * 4096
    with httpx.Client() as client:
        digest = push_blob(client, registry.url, "harness/corrupt", data)
        registry.corrupt_blob(digest, offset=100)
        served = client.get(f"{registry.url}/v2/harness/corrupt/blobs/{digest}").content
    assert len(served) == len(data) and served != data and sha256(served) != digest


def test_stop_refuses_and_restart_keeps_port_storage_and_upload_sessions(registry: RegistryServer) -> None:
    url, pid = registry.url, registry.pid
    with httpx.Client() as client:
        digest = push_blob(client, url, "harness/restart", b"before restart")
        session = client.post(f"{url}/v2/harness/restart/blobs/uploads/")
        assert session.status_code == 202
        registry.stop()
        assert registry.pid is None and not registry.running
        with pytest.raises(httpx.ConnectError):
            client.get(f"{url}/v2/")
        registry.restart()
        assert registry.url == url and registry.pid not in (None, pid)
        assert client.head(f"{url}/v2/harness/restart/blobs/{digest}").status_code == 200
        # The fixed http.secret keeps the signed _state of an open upload session valid.
        data = b"after restart"
        location = httpx.URL(session.headers["Location"]).copy_merge_params({"digest": sha256(data)})
        assert client.put(location, content=data).status_code == 201
    assert "listening on" in registry.log_text()


def test_kill_mid_operation(registry: RegistryServer) -> None:
    registry.stop(kill=True)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{registry.url}/v2/")
    registry.start()
    assert httpx.get(f"{registry.url}/v2/").status_code == 200


def test_pause_makes_requests_time_out(registry: RegistryServer) -> None:
    registry.pause()
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{registry.url}/v2/", timeout=0.3)
    finally:
        registry.resume()
    assert httpx.get(f"{registry.url}/v2/").status_code == 200


def test_storage_in_shm_is_removed_on_close(registry_factory: RegistryFactory) -> None:
    server = registry_factory(storage_in_shm=True)
    assert str(server.storage_dir).startswith("/dev/shm/")
    with httpx.Client() as client:
        digest = push_blob(client, server.url, "harness/shm", b"in memory")
    assert server.blob_path(digest).exists()
    server.close()
    assert not server.storage_dir.exists()


def test_relative_urls_option(registry_factory: RegistryFactory) -> None:
    server = registry_factory(relative_urls=True)
    with httpx.Client() as client:
        started = client.post(f"{server.url}/v2/harness/rel/blobs/uploads/")
        assert started.headers["Location"].startswith("/v2/harness/rel/blobs/uploads/")
        push_blob(client, server.url, "harness/rel", b"relative")


def test_start_failure_shows_log_tail(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "bad", extra_config={"storage": {"nosuchdriver": {}}})
    with pytest.raises(Exception, match="exited with status") as info:
        server.start()
    assert "nosuchdriver" in str(info.value)
    server.close()


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- basic auth ------------------------------------------------------------------------------


def test_basic_auth(registry_basic: RegistryServer) -> None:
    assert registry_basic.username and registry_basic.password
    url = f"{registry_basic.url}/v2/"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 401
    assert parse_challenge(anonymous.headers["WWW-Authenticate"])[0] == "basic"
    assert httpx.get(url, auth=(registry_basic.username, "wrong")).status_code == 401
    assert httpx.get(url, auth=(registry_basic.username, registry_basic.password)).status_code == 200
    with httpx.Client(auth=registry_basic.credentials()) as client:
        push_blob(client, registry_basic.url, "harness/basic", b"basic")
    assert registry_basic.password not in registry_basic.log_text()


# -- TLS -------------------------------------------------------------------------------------


def test_tls_needs_the_ca(registry_tls: RegistryServer) -> None:
    assert registry_tls.url.startswith("https://") and registry_tls.ca_file is not None
    assert httpx.get(f"{registry_tls.url}/v2/", verify=registry_tls.verify()).status_code == 200
    localhost = f"https://localhost:{registry_tls.port}/v2/"
    assert httpx.get(localhost, verify=registry_tls.verify()).status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{registry_tls.url}/v2/")  # default trust store (certifi)
    # Plain HTTP to the TLS port gets Go's "client sent an HTTP request to an HTTPS server" 400.
    assert httpx.get(f"http://{registry_tls.host}/v2/").status_code == 400


# -- token auth ------------------------------------------------------------------------------


def get_token(challenge: str, scope: str, auth: tuple[str, str] | None) -> httpx.Response:
    _, params = parse_challenge(challenge)
    return httpx.get(params["realm"], params={"service": params["service"], "scope": scope}, auth=auth)


def test_token_flow_push_and_pull(registry_token: RegistryServer) -> None:
    token_server = registry_token.token_server
    assert token_server is not None
    assert (registry_token.username, registry_token.password) == (token_server.username, token_server.password)
    repo = "harness/token"
    first = httpx.post(f"{registry_token.url}/v2/{repo}/blobs/uploads/")
    assert first.status_code == 401
    scheme, params = parse_challenge(first.headers["WWW-Authenticate"])
    assert scheme == "bearer" and params["realm"] == token_server.realm
    assert params["service"] == token_server.service
    assert set(params["scope"].rsplit(":", 1)[1].split(",")) == {"pull", "push"}

    answer = get_token(
        first.headers["WWW-Authenticate"],
        f"repository:{repo}:pull,push",
        registry_token.credentials(),
    )
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["expires_in"] == token_server.expires_in
    header, claims, _ = (
        json.loads(base64.urlsafe_b64decode(part + "==")) if i < 2 else part
        for i, part in enumerate(body["token"].split("."))
    )
    assert header["alg"] == "ES256" and len(header["x5c"]) == 1
    assert claims["aud"] == token_server.service and isinstance(claims["exp"], int)
    assert claims["access"] == [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]

    bearer = {"Authorization": f"Bearer {body['token']}"}
    with httpx.Client(headers=bearer) as client:
        data = os.urandom(5000)
        digest = push_blob(client, registry_token.url, repo, data)
        assert client.get(f"{registry_token.url}/v2/{repo}/blobs/{digest}").content == data
    assert token_server.requests == [("/token", f"repository:{repo}:pull,push", registry_token.username)]


def test_token_server_rejects_wrong_password_and_limits_anonymous(registry_token: RegistryServer) -> None:
    token_server = registry_token.token_server
    assert token_server is not None
    challenge = httpx.get(f"{registry_token.url}/v2/").headers["WWW-Authenticate"]
    repo = "harness/anon"
    assert get_token(challenge, f"repository:{repo}:pull", (token_server.username, "nope")).status_code == 401

    anonymous = get_token(challenge, f"repository:{repo}:pull,push", None)
    assert anonymous.status_code == 200
    bearer = {"Authorization": f"Bearer {anonymous.json()['token']}"}
    denied = httpx.post(f"{registry_token.url}/v2/{repo}/blobs/uploads/", headers=bearer)
    assert denied.status_code == 401
    assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]
    # Pull is granted: an unknown blob is a 404, not a 401.
    missing = sha256(b"missing")
    assert httpx.head(f"{registry_token.url}/v2/{repo}/blobs/{missing}", headers=bearer).status_code == 404
    assert [r.user for r in token_server.requests] == [token_server.username, None]


def test_token_permissions_per_repository(registry_factory: RegistryFactory) -> None:
    server = registry_factory(
        token={
            "users": {"reader": "r-pw", "writer": "w-pw"},
            "permissions": {"reader": {"*": ["pull"]}, "writer": {"team/*": ["pull", "push"]}},
            "allow_anonymous": False,
        }
    )
    challenge = httpx.get(f"{server.url}/v2/").headers["WWW-Authenticate"]
    assert get_token(challenge, "repository:team/x:pull", None).status_code == 401

    def token_for(user: str, password: str, repo: str) -> dict[str, str]:
        answer = get_token(challenge, f"repository:{repo}:pull,push", (user, password))
        return {"Authorization": f"Bearer {answer.json()['token']}"}

    with httpx.Client(headers=token_for("writer", "w-pw", "team/x")) as client:
        push_blob(client, server.url, "team/x", b"team data")
    for user, password, repo in (("writer", "w-pw", "other/x"), ("reader", "r-pw", "team/x")):
        denied = httpx.post(f"{server.url}/v2/{repo}/blobs/uploads/", headers=token_for(user, password, repo))
        assert denied.status_code == 401, (user, repo)


def test_token_server_failure_injection_and_post_fallback(tmp_path: Path) -> None:
    with TokenServer(tmp_path / "ts") as token_server:
        token_server.fail_next(503)
        params = {"service": token_server.service}
        assert httpx.get(token_server.realm, params=params).status_code == 503
        assert httpx.get(token_server.realm, params=params).status_code == 200
        assert httpx.post(token_server.realm, data={"grant_type": "password"}).status_code == 404
        assert httpx.get(token_server.realm, params={"service": "other"}).status_code == 400
        assert len(token_server.requests) == 3  # the POST is not recorded


def test_tls_with_token_auth(registry_factory: RegistryFactory) -> None:
    server = registry_factory(tls=True, token=True)
    challenge = httpx.get(f"{server.url}/v2/", verify=server.verify())
    assert challenge.status_code == 401
    token = get_token(challenge.headers["WWW-Authenticate"], "", server.credentials())
    bearer = {"Authorization": f"Bearer {token.json()['token']}"}
    assert httpx.get(f"{server.url}/v2/", headers=bearer, verify=server.verify()).status_code == 200


# -- mirror ----------------------------------------------------------------------------------


def test_pull_through_mirror_of_a_token_registry(registry_factory: RegistryFactory) -> None:
    upstream = registry_factory(token={"allow_anonymous": False})
    mirror = registry_factory(proxy_remote=upstream)
    repo = "library/thing"
    challenge = httpx.get(f"{upstream.url}/v2/").headers["WWW-Authenticate"]
    token = get_token(challenge, f"repository:{repo}:pull,push", upstream.credentials())
    layer = os.urandom(3000)
    with httpx.Client(headers={"Authorization": f"Bearer {token.json()['token']}"}) as client:
        digest = put_manifest(client, upstream.url, repo, "v1", layer)
    with httpx.Client() as client:
        manifest = client.get(f"{mirror.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert manifest.status_code == 200 and sha256(manifest.content) == digest
        layer_digest = json.loads(manifest.content)["layers"][0]["digest"]
        assert client.get(f"{mirror.url}/v2/{repo}/blobs/{layer_digest}").content == layer
        refused = client.post(f"{mirror.url}/v2/{repo}/blobs/uploads/")
        assert refused.status_code == 405 and refused.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert upstream.token_server is not None
    assert {r.user for r in upstream.token_server.requests} == {upstream.username}


def test_mirror_of_a_basic_auth_registry_is_refused(registry_factory: RegistryFactory) -> None:
    upstream = registry_factory(basic=True)
    with pytest.raises(ValueError, match="Bearer"):
        registry_factory(proxy_remote=upstream)


# -- skopeo ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["plain", "basic", "tls", "token"])
def test_skopeo_copy_into_each_variant(
    variant: str, registry_factory: RegistryFactory, skopeo: str, tmp_path: Path
) -> None:
    variants: dict[str, dict[str, Any]] = {
        "plain": {},
        "basic": {"basic": True},
        "tls": {"tls": True},
        "token": {"token": {"allow_anonymous": False}},
    }
    server = registry_factory(**variants[variant])
    layout, digest = make_oci_layout(tmp_path / "layout")
    args = ["--dest-cert-dir", str(server.tls.ca_dir)] if server.tls else ["--dest-tls-verify=false"]
    if server.username:
        args += ["--dest-creds", f"{server.username}:{server.password}"]
    result = skopeo_copy(skopeo, layout, f"docker://{server.host}/harness/skopeo:v1", *args)
    assert result.returncode == 0, result.stderr

    with httpx.Client(verify=server.verify()) as client:
        if server.username:
            probe = client.get(f"{server.url}/v2/")
            if server.token_server:
                token = get_token(
                    probe.headers["WWW-Authenticate"],
                    "repository:harness/skopeo:pull",
                    server.credentials(),
                ).json()["token"]
                client.headers["Authorization"] = f"Bearer {token}"
            else:
                client.auth = server.credentials()
        manifest = client.get(f"{server.url}/v2/harness/skopeo/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert manifest.status_code == 200
    assert manifest.headers["Docker-Content-Digest"] == digest == sha256(manifest.content)
    if server.token_server:
        assert all(r.user == server.username for r in server.token_server.requests)


def test_skopeo_tls_fails_without_the_ca(registry_tls: RegistryServer, skopeo: str, tmp_path: Path) -> None:
    layout, _ = make_oci_layout(tmp_path / "layout")
    result = skopeo_copy(skopeo, layout, f"docker://{registry_tls.host}/harness/noca:v1")
    assert result.returncode != 0
    assert "certificate signed by unknown authority" in result.stderr


# -- docker config ---------------------------------------------------------------------------


def test_docker_config_fixture(docker_config: DockerConfig, registry_basic: RegistryServer) -> None:
    assert os.environ["DOCKER_CONFIG"] == str(docker_config.path)
    docker_config.add_auth(registry_basic)
    docker_config.set_cred_helper("other.example:5000", "ocifs-test")
    entry = docker_config.read()["auths"][registry_basic.host]
    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    assert (user, password) == (registry_basic.username, registry_basic.password)
    assert docker_config.read()["credHelpers"] == {"other.example:5000": "ocifs-test"}

    docker_config.install_credential_helper("ocifs-test", {"other.example:5000": ("<token>", "refresh-me")})
    helper = subprocess.run(
        ["docker-credential-ocifs-test", "get"], input="other.example:5000", capture_output=True, text=True
    )
    assert json.loads(helper.stdout) == {
        "ServerURL": "other.example:5000",
        "Username": "<token>",
        "Secret": "refresh-me",
    }
    missing = subprocess.run(["docker-credential-ocifs-test", "get"], input="nowhere", capture_output=True, text=True)
    assert missing.returncode == 1 and "credentials not found" in missing.stdout
    assert docker_config.helper_calls("ocifs-test") == [
        ("get", "other.example:5000"),
        ("get", "nowhere"),
    ]


# -- log checks ------------------------------------------------------------------------------

harness_log = logging.getLogger("ocifs.harness_test")


def test_expect_log_allows_declared_warnings(expect_log: Any) -> None:
    with expect_log(r"chunk \d+ retried", count=2) as expectation:
        harness_log.warning("chunk %d retried", 1)
        harness_log.warning("chunk %d retried", 2)
    assert len(expectation.records) == 2


def test_assert_logs_count_mismatch_fails() -> None:
    with pytest.raises(pytest.fail.Exception, match="expected 1 log record"), assert_logs("never", count=1):
        pass


@pytest.mark.expected_log("degraded", logger="ocifs.harness_test")
def test_marker_allows_declared_warnings() -> None:
    harness_log.warning("registry degraded, retrying")


def test_undeclared_warning_fails_the_test(tmp_path: Path) -> None:
    """Run a tiny suite in a subprocess: an undeclared warning and a wrong level must fail."""
    (tmp_path / "conftest.py").write_text(
        "from support.checklogs import check_logs, expect_log, register\n"
        "def pytest_configure(config):\n    register(config)\n"
    )
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            """
            import logging
            log = logging.getLogger("inner")

            def test_quiet():
                log.info("fine")

            def test_unexpected_warning():
                log.warning("something odd")

            def test_error_not_excused_by_warning(expect_log):
                with expect_log("odd"):
                    log.error("odd")
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert "3 passed, 2 errors" in result.stdout, result.stdout
    assert "WARNING inner: something odd" in result.stdout
    assert "ERROR inner: odd" in result.stdout


def test_missing_binary_names_the_package(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "missing", binary=str(tmp_path / "no-such-registry"))
    with pytest.raises(MissingToolError, match="apt-get install docker-registry"):
        server.start()


def test_token_server_over_https(tmp_path: Path) -> None:
    material = make_tls_material(tmp_path / "tls")
    with TokenServer(tmp_path / "ts", tls_context=material.server_context()) as token_server:
        assert token_server.realm.startswith("https://127.0.0.1:")
        answer = httpx.get(
            token_server.realm,
            params={"service": token_server.service, "scope": "repository:a/b:pull"},
            auth=(token_server.username, token_server.password),
            verify=material.client_context(),
        )
        assert answer.status_code == 200 and answer.json()["token"].count(".") == 2
