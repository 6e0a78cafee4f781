"""Blobs redirected to a storage host, as production registries serve them: distribution's
``redirect`` middleware sends every blob GET to nginx serving the registry's storage. Push,
pull and a lazy mount work through it with Basic auth, the bytes come from the storage host,
and no credential ever reaches it. When the storage host refuses (expired signed URLs), a
mount asks the registry again, says which host refused, and recovers once it serves again.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cdn import StorageHost, redirect_config
from support.mounts import Mounter, mounter
from support.registry import DockerConfig, RegistryFactory, RegistryServer

CHUNK = 1 << 20


@pytest.fixture
def cdn_registry(registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[tuple[RegistryServer, StorageHost]]:
    """A Basic-auth registry whose blob GETs are redirected to an nginx storage host."""
    server = registry_factory(basic=True, start=False)
    storage = StorageHost(tmp_path / "nginx", server.storage_dir).start()
    server.extra_config.update(redirect_config(storage))
    server.start()
    try:
        yield server, storage
    finally:
        storage.stop()


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounter]:
    with mounter(tmp_path) as started:
        yield started


def ocifs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocifs", *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def blob_gets(storage: StorageHost) -> list[str]:
    return [line for line in storage.requests() if line.startswith("GET ") and "/blobs/" in line]


def test_push_pull_and_mount_through_a_redirecting_registry(
    cdn_registry: tuple[RegistryServer, StorageHost], docker_config: DockerConfig, mounts: Mounter, tmp_path: Path
) -> None:
    server, storage = cdn_registry
    docker_config.add_auth(server)
    source = tmp_path / "src"
    source.mkdir()
    model = os.urandom(5 * CHUNK + 12345)
    (source / "model.bin").write_bytes(model)
    (source / "config.json").write_text('{"layers": 2}\n')
    ref = f"{server.host}/cdn/model:v1"

    pushed = ocifs("push", ref, str(source / "model.bin"), str(source / "config.json"), "--chunk-size", "1M", "-q")
    assert pushed.returncode == 0, pushed.stderr

    # Pull: every blob byte comes from the storage host, by redirect.
    pulled = ocifs("pull", ref, "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "pull-cache"), "-q")
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out/model.bin").read_bytes() == model
    after_pull = blob_gets(storage)
    assert len(after_pull) >= 6 + 1 + 1  # six chunks, the chunk index, the plain file
    assert all(" 200 " in line or " 206 " in line for line in after_pull), after_pull

    # Mount (a fresh cache): a lazy read of one chunk fetches it from the storage host.
    mount = mounts(ref, cache=tmp_path / "mount-cache")
    with open(mount.path / "model.bin", "rb") as f:
        f.seek(3 * CHUNK + 100)
        assert f.read(4096) == model[3 * CHUNK + 100 : 3 * CHUNK + 4196]
    assert (mount.path / "model.bin").read_bytes() == model
    assert len(blob_gets(storage)) > len(after_pull)

    # No credential ever reached the storage host, though the registry asked for one.
    assert storage.requests(), "nginx logged nothing"
    leaked = [line for line in storage.requests() if 'authorization="-"' not in line]
    assert leaked == [], leaked
    # ... though the registry does ask for one: without it the pull is refused.
    anonymous = dict(os.environ, DOCKER_CONFIG=str(tmp_path / "no-credentials"))
    refused = ocifs(
        "pull", ref, "-o", str(tmp_path / "anon"), "--cache-dir", str(tmp_path / "anon-cache"), env=anonymous
    )
    assert refused.returncode != 0 and "authentication" in refused.stderr, refused.stderr


def test_a_mount_survives_a_storage_host_refusing_its_signed_urls(
    cdn_registry: tuple[RegistryServer, StorageHost], docker_config: DockerConfig, mounts: Mounter, tmp_path: Path
) -> None:
    """The signed URLs "expire" during a mount: the storage host answers 403. A cold read asks
    the registry again (a fresh redirect) a bounded number of times, then fails with EIO and the
    daemon names the storage host, not the credentials; once the host serves again, the next
    cold read works — the daemon never died."""
    server, storage = cdn_registry
    docker_config.add_auth(server)
    model = os.urandom(4 * CHUNK)
    (tmp_path / "model.bin").write_bytes(model)
    ref = f"{server.host}/cdn/expiring:v1"
    pushed = ocifs("push", ref, str(tmp_path / "model.bin"), "--chunk-size", "1M", "-q")
    assert pushed.returncode == 0, pushed.stderr

    mount = mounts(ref, "--prefetch", "off", "--retries", "3", cache=tmp_path / "mount-cache")
    path = mount.path / "model.bin"
    with open(path, "rb") as f:  # the chunk index and chunk 0 arrive through the storage host
        assert f.read(4096) == model[:4096]

    with storage.refusing():
        before = len(blob_gets(storage))
        with open(path, "rb") as f, pytest.raises(OSError) as info:
            f.seek(2 * CHUNK)
            f.read(4096)
        assert info.value.errno == errno.EIO
        # The kernel may split the read and read ahead (more FUSE reads, in flight after ours
        # failed): wait until nginx and the daemon have both gone quiet before counting.
        deadline, quiet_since, seen = time.monotonic() + 20, time.monotonic(), ("", 0)
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 1.0:
            time.sleep(0.1)
            now = (mount.log_text(), len(storage.requests()))
            if now != seen:
                seen, quiet_since = now, time.monotonic()
        refused = blob_gets(storage)[before:]
        assert refused and all(" 403 " in line for line in refused), refused
        log = mount.log_text()
        host = f"127.0.0.1:{storage.port}"
        failed = [line for line in log.splitlines() if "failed (EIO)" in line]
        assert failed and all(
            f"the storage host {host} refused the redirected download (403)" in line for line in failed
        ), log
        # Each download of a chunk (concurrent reads of one chunk share one) made exactly
        # --retries attempts, each a fresh redirect from the registry, and no more.
        per_blob = Counter(line.split()[1].rsplit("/", 2)[-2] for line in refused)
        assert all(count % 3 == 0 for count in per_blob.values()), (per_blob, log)
        assert "a signed URL may have expired" in log and "lack permission" not in log, log
        assert mount.alive()

    with open(path, "rb") as f:
        f.seek(2 * CHUNK)
        assert f.read(4096) == model[2 * CHUNK : 2 * CHUNK + 4096]
    assert mount.alive()
