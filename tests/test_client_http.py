"""HTTP edge cases of the registry client on httpx.MockTransport (real-registry tests are elsewhere)."""

from __future__ import annotations

import errno
import json
import os
import resource
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from support.loopback import Loopback, blob_transport, fast_reader  # noqa: F401 (autouse fixture)

from ocifs.digest import Digest
from ocifs.errors import (
    AuthenticationError,
    BlobSizeMismatch,
    FormatError,
    IntegrityError,
    NotFound,
    PermissionDenied,
    RegistryError,
    RegistryUnavailable,
)
from ocifs.format.media import MEDIA_TYPE_MANIFEST as MEDIA_TYPE_MANIFEST
from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.registry.credentials import Credentials
from ocifs.registry.general import httpcore_patch_applies
from ocifs.retry import RetryPolicy, parse_retry_after

BLOB = b"0123456789" * 100
DIGEST = Digest.of_bytes(BLOB)
FAST = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01)


def client_for(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> RegistryClient:
    options = ClientOptions(retry=kwargs.pop("retry", FAST))  # type: ignore[arg-type]
    return RegistryClient(
        "registry.test", options=options, transport=httpx.MockTransport(handler), fast=fast_reader(handler), **kwargs
    )  # type: ignore[arg-type]


async def test_429_with_retry_after_is_honoured_then_succeeds() -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"errors": [{"code": "TOOMANYREQUESTS"}]})
        return httpx.Response(200, content=BLOB)

    async with client_for(handler) as client:
        assert await client.get_blob("r", DIGEST, len(BLOB)) == BLOB
    assert len(calls) == 2
    assert client.stats.retries == 1


def test_retry_after_parsing() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait
    # Retry-After larger than the cap is capped, so one misbehaving proxy cannot stall a pull for hours.
    policy = RetryPolicy(max_delay=5)
    assert policy.delay_for(1, "3600") == 5


def test_the_fetchers_retries_are_a_value_of_the_one_policy() -> None:
    """A mount's fetcher retries ``chunk_retries`` times, and not at all when every request is
    to be tried once (``--retries 1``): one policy for the whole stack (docs/requests.md)."""
    assert RetryPolicy().fetch_retries == 2
    assert RetryPolicy(attempts=1).fetch_retries == 0
    assert RetryPolicy(attempts=2).fetch_retries == 1
    assert RetryPolicy(attempts=10, chunk_retries=4).fetch_retries == 4


async def test_5xx_burst_then_success() -> None:
    statuses = [500, 502, 503]

    def handler(request: httpx.Request) -> httpx.Response:
        if statuses:
            return httpx.Response(statuses.pop(0), text="<html>bad gateway</html>")
        return httpx.Response(200, content=BLOB)

    async with client_for(handler) as client:
        assert await client.get_blob("r", DIGEST, len(BLOB)) == BLOB
        assert client.stats.retries == 3


async def test_5xx_forever_gives_one_clear_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="upstream down")

    async with client_for(handler) as client:
        with pytest.raises(RegistryUnavailable) as info:
            await client.get_blob("models/x", DIGEST, len(BLOB))
    message = str(info.value)
    assert "registry.test/models/x" in message and "4 attempts" in message and "\n" not in message


async def test_non_retryable_fails_at_once() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(400, json={"errors": [{"code": "NAME_INVALID", "message": "invalid repository name"}]})

    async with client_for(handler) as client:
        with pytest.raises(RegistryError, match="NAME_INVALID: invalid repository name"):
            await client.get_manifest("r", "v1")
    assert len(calls) == 1


async def test_connection_errors_are_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            raise httpx.ReadError("connection reset by peer")
        return httpx.Response(200, content=BLOB)

    async with client_for(handler) as client:
        assert await client.get_blob("r", DIGEST, len(BLOB)) == BLOB
    assert len(calls) == 3


class _CutShort(httpx.AsyncByteStream):
    """A body that ends before its Content-Length, as h11 reports a connection closed mid-body."""

    def __init__(self, data: bytes, announced: int) -> None:
        self.data, self.announced = data, announced

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body: "
            f"received {len(self.data)} bytes, expected {self.announced}"
        )


async def test_truncated_body_is_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:  # Content-Length 1000, the connection lost after 500 bytes
            return httpx.Response(200, headers={"Content-Length": "1000"}, stream=_CutShort(BLOB[:500], 1000))
        return httpx.Response(200, content=BLOB)

    async with client_for(handler) as client:
        assert await client.get_blob("r", DIGEST, len(BLOB)) == BLOB
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("body", "served"), [(BLOB[:900], 900), (BLOB + b"extra" * 20, 1100)], ids=["shorter", "longer"]
)
async def test_a_complete_body_of_another_length_fails_at_once(body: bytes, served: int) -> None:
    """G2: a complete answer of another size than the descriptor's is a broken artifact, not
    the network: one request, a FormatError the fetcher does not retry either, both sizes."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=body)

    async with client_for(handler) as client:
        with pytest.raises(BlobSizeMismatch) as info:
            await client.get_blob("models/x", DIGEST, len(BLOB))
        assert client.stats.retries == 0
    assert len(calls) == 1
    assert isinstance(info.value, FormatError) and not isinstance(info.value, RegistryError)
    assert (info.value.expected, info.value.served) == (len(BLOB), served)
    text = str(info.value)
    assert f"registry.test/models/x: blob {DIGEST} is {served} bytes in the registry but 1000 in the manifest" in text
    assert "push it again" in text and "network" not in text and "\n" not in text


async def test_a_body_announcing_far_more_than_the_descriptor_is_not_read() -> None:
    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            raise AssertionError("a body 10^12 bytes long for a 1000-byte blob must not be read")
            yield b""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": str(10**12)}, stream=Endless())

    async with client_for(handler) as client:
        with pytest.raises(BlobSizeMismatch, match=f"is {10**12} bytes in the registry but 1000 in the manifest"):
            await client.get_blob("r", DIGEST, len(BLOB))


@pytest.mark.parametrize(
    ("status", "headers", "body", "message"),
    [
        # What distribution answers when the range runs past the end: 206, clipped.
        (206, {"Content-Range": "bytes 100-899/900"}, BLOB[100:900], "is 900 bytes in the registry but at least 1000"),
        (416, {"Content-Range": "bytes */900"}, b"", "is at most 100 bytes in the registry but at least 1000"),
        (200, {}, BLOB[:900], "is 900 bytes in the registry but at least 1000"),  # Range ignored
    ],
    ids=["206-clipped", "416", "200-whole-blob"],
)
async def test_a_range_past_the_end_of_the_blob_fails_at_once(
    status: int, headers: dict[str, str], body: bytes, message: str
) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, headers=headers, content=body)

    async with client_for(handler) as client:
        with pytest.raises(BlobSizeMismatch, match=message):
            await client.get_blob_range("r", DIGEST, 100, 1000)
    assert len(calls) == 1


@pytest.mark.parametrize("number", [errno.EMFILE, errno.ENFILE], ids=["EMFILE", "ENFILE"])
async def test_out_of_file_descriptors_is_not_reported_as_a_network_problem(number: int) -> None:
    """P3: httpx wraps the OSError of socket() in ConnectError; the message says what it is."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        cause = OSError(number, os.strerror(number))
        raise httpx.ConnectError(str(cause)) from cause  # as httpx (through httpcore) raises it

    async with client_for(handler) as client:
        with pytest.raises(RegistryUnavailable) as info:
            await client.get_blob("r", DIGEST, len(BLOB))
    assert len(calls) == 4  # still retried: other requests may give descriptors back meanwhile
    text = str(info.value)
    assert os.strerror(number) in text and "network" not in text and "registry running" not in text
    if number == errno.EMFILE:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert (
            f"the limit is {limit} open files; raise it (ulimit -n, LimitNOFILE= in the unit) or lower --jobs" in text
        )
    else:
        assert "fs.file-max" in text


async def test_range_answered_with_200_is_sliced() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Range"] == "bytes=100-199"
        return httpx.Response(200, content=BLOB)  # ignores Range, as registries may

    async with client_for(handler) as client:
        assert await client.get_blob_range("r", DIGEST, 100, 200) == BLOB[100:200]


async def test_range_answered_with_206() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=BLOB[100:200], headers={"Content-Range": "bytes 100-199/1000"})

    async with client_for(handler) as client:
        assert await client.get_blob_range("r", DIGEST, 100, 200) == BLOB[100:200]


async def test_cross_host_redirect_drops_authorization() -> None:
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.test":
            if "authorization" not in request.headers:
                return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="test"'})
            seen["registry"] = request.headers.get("authorization")
            return httpx.Response(307, headers={"Location": "https://cdn.example/blob?sig=abc"})
        seen["cdn"] = request.headers.get("authorization")
        return httpx.Response(200, content=BLOB)

    creds = Credentials("alice", "s3cret")
    async with client_for(handler, credentials=creds) as client:
        assert await client.get_blob("r", DIGEST, len(BLOB)) == BLOB
    assert seen["registry"] is not None and seen["registry"].startswith("Basic ")
    assert seen["cdn"] is None


async def test_a_storage_host_refusing_an_expired_signed_url_gets_a_fresh_redirect() -> None:
    """S3, GCS and CloudFront answer an expired signed URL with 403: the registry is asked
    again, redirects to a freshly signed URL, and that one serves."""
    registry_gets: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.test":
            registry_gets.append(request.url.path)
            return httpx.Response(307, headers={"Location": f"https://cdn.example/blob?sig={len(registry_gets)}"})
        if request.url.params["sig"] == "1":  # the first signature has expired
            return httpx.Response(403, text="<Error><Code>AccessDenied</Code>Request has expired</Error>")
        return httpx.Response(200, content=BLOB)

    async with client_for(handler) as client:
        assert await client.get_blob("r", DIGEST, len(BLOB)) == BLOB
    assert len(registry_gets) == 2


@pytest.mark.parametrize("status", [403, 401, 400])
async def test_a_storage_host_that_keeps_refusing_is_named_not_the_credentials(status: int) -> None:
    registry_gets: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.test":
            if "authorization" not in request.headers:
                return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="test"'})
            registry_gets.append(request.url.path)
            return httpx.Response(307, headers={"Location": "https://cdn.example:8443/blob?sig=old"})
        return httpx.Response(status, headers={"WWW-Authenticate": 'Basic realm="cdn"'}, text="expired")

    async with client_for(handler, credentials=Credentials("alice", "s3cret")) as client:
        with pytest.raises(RegistryError) as info:
            await client.get_blob("models/x", DIGEST, len(BLOB))
    message = info.value.message
    assert message == (
        f"registry.test/models/x: blob {DIGEST.short}: the storage host cdn.example:8443 refused the redirected "
        f"download ({status}): a signed URL may have expired or the host's clock is off"
    ), message
    assert not isinstance(info.value, AuthenticationError | RegistryUnavailable)
    assert "\n" not in str(info.value) and "credentials" not in str(info.value)
    assert len(registry_gets) == FAST.attempts  # bounded by the one policy


async def test_the_registrys_own_403_still_blames_the_credentials() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "no"}]})

    async with client_for(handler) as client:
        with pytest.raises(PermissionDenied) as info:
            await client.get_blob("r", DIGEST, len(BLOB))
    assert "storage host" not in str(info.value) and "lack permission" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "unexpected response: <html><body>502 Bad Gateway"),
        (b'{"errors": "not a list"}', "unexpected response"),
        (b'{"errors": [{"code": 5}]}', "ERROR"),
        (b"\x00\xff\xfe binary", "unexpected response"),
        (b"x" * 100_000, "…"),
        (b"", "HTTP 400"),
    ],
)
async def test_malformed_error_bodies_give_one_readable_line(body: bytes, expected: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, content=body)

    async with client_for(handler) as client:
        with pytest.raises(RegistryError) as info:
            await client.get_manifest("r", "v1")
    text = str(info.value)
    assert expected in text
    assert "\n" not in text and len(text) < 400


async def test_401_without_credentials_says_how_to_log_in() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})

    async with client_for(handler) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.ping()
    assert "ocifs login registry.test" in str(info.value)


async def test_bearer_token_cached_and_secrets_not_in_errors() -> None:
    token_calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            token_calls.append(request.url.params.get_list("scope"))
            return httpx.Response(200, json={"token": "tok-123", "expires_in": 300})
        if request.headers.get("authorization") != "Bearer tok-123":
            return httpx.Response(
                401,
                headers={
                    "WWW-Authenticate": 'Bearer realm="https://auth.test/token",service="registry.test",'
                    'scope="repository:r:pull"'
                },
            )
        if request.url.path.endswith("/manifests/missing"):
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
        return httpx.Response(200, content=BLOB)

    async with client_for(handler, credentials=Credentials("bob", "hunter2")) as client:
        for _ in range(3):
            assert await client.get_blob("r", DIGEST, len(BLOB)) == BLOB
        with pytest.raises(NotFound) as info:
            await client.get_manifest("r", "missing")
    assert token_calls == [["repository:r:pull"]]
    assert "hunter2" not in str(info.value) and "tok-123" not in str(info.value)


async def test_upload_merges_digest_into_location_query() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url)))
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/r/blobs/uploads/abc?_state=xyz"})
        assert request.method == "PUT"
        assert request.url.params["_state"] == "xyz" and request.url.params["digest"] == str(DIGEST)
        return httpx.Response(201)

    async with client_for(handler) as client:
        assert await client.upload_blob("r", DIGEST, BLOB) == "uploaded"
    assert [m for m, _ in seen] == ["POST", "PUT"]


async def test_upload_falls_back_to_patch_when_monolithic_put_refused() -> None:
    methods = []

    def handler(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "https://registry.test/v2/r/blobs/uploads/u1"})
        if request.method == "PUT" and request.content:
            return httpx.Response(413, text="too large")
        if request.method == "PATCH":
            assert request.headers["Content-Range"] == f"0-{len(BLOB) - 1}"
            return httpx.Response(202, headers={"Location": "/v2/r/blobs/uploads/u1?part=2"})
        assert request.method == "PUT" and request.url.params["part"] == "2"
        return httpx.Response(201)

    async with client_for(handler) as client:
        assert await client.upload_blob("r", DIGEST, BLOB) == "uploaded"
    assert methods == ["POST", "PUT", "POST", "PATCH", "PUT"]


async def test_manifest_by_digest_is_verified() -> None:
    manifest = json.dumps({"schemaVersion": 2}).encode()
    wrong = Digest.of_bytes(b"something else")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=manifest, headers={"Content-Type": MEDIA_TYPE_MANIFEST})

    async with client_for(handler) as client:
        ok = await client.get_manifest("r", str(Digest.of_bytes(manifest)))
        assert ok.data == manifest
        with pytest.raises(IntegrityError):
            await client.get_manifest("r", str(wrong))


async def test_oversized_manifest_refused_before_reading_it_all() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{" + b" " * (5 * 1024 * 1024) + b"}")

    async with client_for(handler) as client:
        with pytest.raises(RegistryError, match="limit"):
            await client.get_manifest("r", "v1")


def test_httpcore_receive_size_patch_applies() -> None:
    """registry/general.py raises httpcore's private receive size (64 KiB → 1 MiB: a third of
    the CPU per GiB on the httpx path). If a new httpcore renames or stops reading the
    attribute, the patch silently does nothing: this fails instead."""
    assert httpcore_patch_applies()
