"""Reference parsing: registry/repo[:tag][@digest], localhost and ports, Docker Hub defaults."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocifs.digest import Digest
from ocifs.errors import InvalidReference
from ocifs.reference import DOCKER_HUB, Reference, is_loopback_host, parse_reference, redact_userinfo

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("ubuntu", DOCKER_HUB, "library/ubuntu", "latest", None),
        ("ubuntu:22.04", DOCKER_HUB, "library/ubuntu", "22.04", None),
        ("docker.io/ubuntu", DOCKER_HUB, "library/ubuntu", "latest", None),
        ("index.docker.io/user/repo:v1", DOCKER_HUB, "user/repo", "v1", None),
        ("user/repo", DOCKER_HUB, "user/repo", "latest", None),
        ("localhost/repo", "localhost", "repo", "latest", None),
        ("localhost:5000/models/llama:v1", "localhost:5000", "models/llama", "v1", None),
        ("127.0.0.1:5000/a/b/c:tag_1.x-y", "127.0.0.1:5000", "a/b/c", "tag_1.x-y", None),
        ("[::1]:5000/repo:t", "[::1]:5000", "repo", "t", None),
        ("ghcr.io/org/model@sha256:" + HEX, "ghcr.io", "org/model", None, "sha256:" + HEX),
        ("ghcr.io/org/model:v2@sha256:" + HEX, "ghcr.io", "org/model", "v2", "sha256:" + HEX),
        ("registry.example.com/a__b/c-d/e.f:T", "registry.example.com", "a__b/c-d/e.f", "T", None),
    ],
)
def test_valid_references(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert (str(ref.digest) if ref.digest else None) == digest


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty reference"),
        ("Upper/case", "bad repository component 'Upper'"),
        ("localhost:5000/", "no repository"),
        ("localhost:99999/x", "port 99999 out of range"),
        ("http://localhost:5000/x", "no URL scheme"),
        ("repo:-tag", "bad tag '-tag'"),
        ("repo:" + "t" * 129, "bad tag"),
        ("repo@sha256:short", "malformed digest 'sha256:short'"),
        ("repo@sha256:" + "a" * 63, "wrong length"),
        ("repo@md5:" + "a" * 32, "unsupported digest algorithm 'md5'"),
        ("a b", "whitespace or control characters"),
        ("a\x00b", "whitespace or control characters"),
        ("repo//x", "bad repository component ''"),
        ("bad_host!.com/x", "bad registry host 'bad_host!.com'"),
        ("[zz::1]:5000/x", "bad IPv6 address"),
        ("x/" + "a" * 300, "longer than 255"),
    ],
)
def test_malformed_references_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_selector_and_pinning() -> None:
    ref = parse_reference("localhost:5000/m:v1")
    assert ref.selector == "v1"
    pinned = ref.with_digest(Digest.parse("sha256:" + HEX))
    assert pinned.selector == "sha256:" + HEX
    assert str(pinned) == f"localhost:5000/m:v1@sha256:{HEX}"
    assert isinstance(pinned, Reference)


def test_loopback_detection() -> None:
    assert is_loopback_host("localhost:5000") and is_loopback_host("127.0.0.1") and is_loopback_host("[::1]:5000")
    assert is_loopback_host("127.3.4.5:80")
    assert not is_loopback_host("registry.example.com") and not is_loopback_host("10.0.0.1:5000")


@given(st.text(max_size=80))
def test_parser_raises_only_invalid_reference(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReference:
        return
    # Whatever parses round-trips through its string form.
    assert parse_reference(str(ref)) == ref


@given(
    st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True),
    st.integers(1, 65535),
)
def test_generated_valid_references(repo: str, tag: str, port: int) -> None:
    ref = parse_reference(f"registry.test:{port}/{repo}:{tag}")
    assert (ref.registry, ref.repository, ref.tag) == (f"registry.test:{port}", repo, tag)


@pytest.mark.parametrize(
    ("text", "shown", "login_host"),
    [
        ("alice:s3cret@127.0.0.1:5000/repo:tag", "***@127.0.0.1:5000/repo:tag", "127.0.0.1:5000"),
        ("https://alice:s3cret@127.0.0.1:5000/repo:tag", "https://***@127.0.0.1:5000/repo:tag", "127.0.0.1:5000"),
        ("https://alice:s3cret@registry.example.com", "https://***@registry.example.com", "registry.example.com"),
        ("alice:s3cret@ghcr.io/org/m@sha256:" + HEX, "***@ghcr.io/org/m@sha256:" + HEX, "ghcr.io"),
        # A password containing "@" or "/" is redacted whole.
        ("alice:s3/c@ret@ghcr.io/org/m:v1", "***@ghcr.io/org/m:v1", "ghcr.io"),
        ("alice:s3cret@localhost:5000/x y", "***@localhost:5000/x y", "localhost:5000"),
    ],
)
def test_credentials_in_a_reference_are_refused_and_never_quoted(text: str, shown: str, login_host: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    message = str(info.value)
    assert "s3" not in message and "alice" not in message
    assert message == (
        f"invalid reference {shown!r}: credentials do not belong in the reference:"
        f" store them with `ocifs login {login_host}`"
    )


@pytest.mark.parametrize("text", ["alice:s3cret@localhost:5000", "alice:s3cret@x", "repo:s3cret@sha256:short"])
def test_what_precedes_a_malformed_digest_is_not_quoted(text: str) -> None:
    """Without a "/" after the "@", user:password@host reads as repo:tag@digest: the part that
    could be a password is left out of the message, which mentions credentials."""
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    message = str(info.value)
    assert "s3cret" not in message and "alice" not in message
    assert "digest" in message and "ocifs login" in message


def test_redact_userinfo_leaves_references_without_credentials_alone() -> None:
    for text in ("ghcr.io/org/m:v1", "repo@sha256:" + HEX, "localhost:5000/a/b:t@sha256:" + HEX, "x@y"):
        assert redact_userinfo(text) == text
    assert redact_userinfo("u:p@h.io/r") == "***@h.io/r"


def test_a_digest_followed_by_a_path_is_a_broken_digest_not_a_login() -> None:
    """``repo@sha256:…/x`` has a "/" after its "@", but what follows the "@" is no host[:port]."""
    with pytest.raises(InvalidReference) as info:
        parse_reference(f"localhost:5000/repo@sha256:{HEX}/x")
    message = str(info.value)
    assert "malformed digest" in message and "***" not in message and "ocifs login sha256" not in message
