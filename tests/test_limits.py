"""Registry limits checked before a byte is sent, and a push that survives a garbage collection.

Layer caps: a proxy in front of the real registry refuses manifests of more than N layers as
Amazon ECR does (support/layer_cap.py); with the budget configured for that host the push fits
by growing its chunk size, and a push that cannot fit is refused before any request at all.
GC-safe resume: a blob the registry removes between the HEAD that found it and the manifest PUT
(support/fault_proxy.py's request hook deletes it from the storage directory, as a garbage
collection would) is uploaded again and the PUT retried.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.fault_proxy import FaultProxy, Record
from support.layer_cap import LayerCapProxy
from support.registry import RegistryServer

from ocifs.commands import push, push_plan
from ocifs.config import load_settings
from ocifs.errors import ConfigError, UsageError
from ocifs.format.media import (
    DEFAULT_LAYER_BUDGET,
    MAX_CHUNK_SIZE,
    MAX_LAYERS,
    MEDIA_TYPE_CHUNK,
    MEDIA_TYPE_MANIFEST,
)

MiB = 1024 * 1024
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def run_cli(*args: str, config: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if config is not None:
        env["OCIFS_CONFIG"] = str(config)
    else:
        env["OCIFS_CONFIG"] = os.devnull  # no user or system settings leak into the test
    return subprocess.run(
        [sys.executable, "-m", "ocifs", *args], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ocifs: error: "), result.stderr
    return lines[0]


def write_config(path: Path, host: str, **keys: object) -> Path:
    body = "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items())
    path.write_text(f'[registry."{host}"]\n{body}')
    return path


def manifest_of(host: str, repository: str, tag: str) -> dict[str, object]:
    response = httpx.get(f"http://{host}/v2/{repository}/manifests/{tag}", headers={"Accept": MEDIA_TYPE_MANIFEST})
    response.raise_for_status()
    doc: dict[str, object] = response.json()
    return doc


def pull_back(registry: RegistryServer, reference: str, out: Path, cache: Path) -> dict[str, bytes]:
    result = run_cli("pull", f"{registry.host}/{reference}", "-o", str(out), "--cache-dir", str(cache), "-q")
    assert result.returncode == 0, result.stderr
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture
def capped(shared_registry: RegistryServer) -> Iterator[LayerCapProxy]:
    """ECR-like: refuses manifests of more than 3 layers."""
    with LayerCapProxy(shared_registry.host, max_layers=3) as proxy:
        yield proxy
    assert proxy.errors == []


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """33 MiB: 3 chunks of 16 MiB plus an index (4 layers) by default, 2 + 1 with 32 MiB chunks."""
    path = tmp_path_factory.mktemp("big") / "model.bin"
    data = random.Random(5).randbytes(33 * MiB)
    path.write_bytes(data)
    return path, data


# -- budgets: where they come from --------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        ECR,
        f"{ECR}:443",
        "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
        "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
    ],
)
def test_ecr_hosts_get_the_known_default(host: str) -> None:
    budget = push_plan.layer_budget(host, None, None)
    assert budget.layers == 250
    assert "Amazon ECR" in budget.source


@pytest.mark.parametrize(
    "host", ["ghcr.io", "registry-1.docker.io", "public.ecr.aws", "ecr.example.com", "127.0.0.1:5000"]
)
def test_other_hosts_get_the_general_default(host: str) -> None:
    assert push_plan.layer_budget(host, None, None).layers == DEFAULT_LAYER_BUDGET


def test_flag_beats_config_beats_known_default() -> None:
    assert push_plan.layer_budget(ECR, 400, 300) == push_plan.LayerBudget(400, "--max-layers")
    configured = push_plan.layer_budget(ECR, None, 300)
    assert configured.layers == 300 and "config.toml" in configured.source
    with pytest.raises(UsageError, match=rf"outside 1\.\.{MAX_LAYERS}"):
        push_plan.layer_budget("ghcr.io", MAX_LAYERS + 1, None)
    with pytest.raises(UsageError, match=r"config\.toml"):
        push_plan.layer_budget("ghcr.io", None, MAX_LAYERS + 1)


def test_config_file_registry_keys(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "c.toml",
        "quay.example.com",
        max_layers=400,
        artifact_type="application/vnd.example.model.v1",
        config_media_type="application/vnd.example.config.v1+json",
    )
    settings = load_settings([path]).registry("quay.example.com")
    assert settings.max_layers == 400
    assert settings.artifact_type == "application/vnd.example.model.v1"
    assert settings.config_media_type == "application/vnd.example.config.v1+json"
    for bad in (0, -3, "many", True):
        write_config(path, "quay.example.com", max_layers=bad)
        with pytest.raises(ConfigError, match=r"line 2: .*max_layers must be a whole number"):
            load_settings([path])


def test_chunk_size_checks() -> None:
    sources = [push.SourceFile("f", Path("/dev/null"), 10 * MiB, 0)]
    with pytest.raises(UsageError, match="at least 1 byte"):
        push_plan.choose_chunk_size(sources, 0, 100)
    with pytest.raises(UsageError, match="above the largest chunk"):
        push_plan.choose_chunk_size(sources, MAX_CHUNK_SIZE + 1, 100)
    with pytest.raises(UsageError, match=r"outside 1\.\.100000"):
        push_plan.choose_chunk_size(sources, MiB, MAX_LAYERS + 1)
    # Pinned: kept as given, refused if it does not fit; not pinned: grown.
    assert push_plan.choose_chunk_size(sources, MiB, 6) == 2 * MiB
    with pytest.raises(
        UsageError, match=r"11 layers, above the layer budget of 6 with 1048576-byte chunks.*--chunk-size"
    ):
        push_plan.choose_chunk_size(sources, MiB, 6, pinned=True)


# -- refused before a byte is sent ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--chunk-size", "0"], "--chunk-size must be at least 1 byte"),
        (["--chunk-size", "2G"], "above the largest chunk"),
        (["--max-layers", str(MAX_LAYERS + 1)], f"outside 1..{MAX_LAYERS}"),
        (["--max-layers", "1", "--single-manifest"], "above the layer budget of 1"),
        (["--chunk-size", "1M", "--max-layers", "10", "--single-manifest"], "with 1048576-byte chunks"),
        (["--artifact-type", "none"], "--artifact-type none needs --config-media-type"),
        (["--artifact-type", "not a type"], "is not a media type"),
        (["--config-media-type", "bad"], "is not a media type"),
    ],
)
def test_cli_refuses_before_any_request(
    capped: LayerCapProxy, big_file: tuple[Path, bytes], tmp_path: Path, flags: list[str], expected: str
) -> None:
    (tmp_path / "small").write_bytes(b"x")
    result = run_cli("push", f"{capped.host}/limits/refused:v1", str(big_file[0]), str(tmp_path / "small"), *flags)
    assert result.returncode == 2, result.stderr
    assert expected in error_line(result)
    assert capped.records == []


def test_max_layers_zero_is_an_argument_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    result = run_cli("push", "127.0.0.1:1/x:v1", str(tmp_path / "f"), "--max-layers", "0")
    assert result.returncode == 2 and "must be at least 1" in result.stderr


def test_ecr_default_refuses_a_push_that_cannot_fit(tmp_path: Path) -> None:
    """300 GiB (sparse) needs 301 layers even with 1 GiB chunks: above ECR's default of 250, so the
    push stops before it resolves the registry's name."""
    path = tmp_path / "huge.bin"
    path.touch()
    os.truncate(path, 300 * 1024 * MiB)
    result = run_cli("push", f"{ECR}/models/huge:v1", str(path), "--single-manifest")
    assert result.returncode == 2
    line = error_line(result)
    assert "301 layers, above the layer budget of 250" in line
    assert "the default for Amazon ECR" in line and "max_layers" in line


# -- a registry with a layer cap --------------------------------------------------------------------


def test_uncapped_push_is_refused_by_the_registry_with_a_hint(
    capped: LayerCapProxy, big_file: tuple[Path, bytes]
) -> None:
    """The proxy answers as ECR does; ocifs says which setting to change."""
    result = run_cli("push", f"{capped.host}/limits/uncapped:v1", str(big_file[0]))
    assert result.returncode == 1
    line = error_line(result)
    assert "Limit on number of layers per image exceeded" in line
    assert f'max_layers for [registry."{capped.host}"]' in line and "below this push's 4" in line
    assert capped.refused == 1


def test_budget_for_the_host_grows_the_chunk_size(
    capped: LayerCapProxy, shared_registry: RegistryServer, big_file: tuple[Path, bytes], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.toml", capped.host, max_layers=3)
    result = run_cli("push", f"{capped.host}/limits/fits:v1", str(big_file[0]), "--json", config=config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["chunk_size"] == 32 * MiB
    assert capped.refused == 0
    layers = manifest_of(shared_registry.host, "limits/fits", "v1")["layers"]
    assert isinstance(layers, list) and len(layers) == 3
    files = pull_back(shared_registry, "limits/fits:v1", tmp_path / "out", tmp_path / "cache")
    assert files == {"model.bin": big_file[1]}


def test_push_that_cannot_fit_the_budget_sends_nothing(capped: LayerCapProxy, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", capped.host, max_layers=3)
    for n in range(4):  # four files are four layers whatever the chunk size
        (tmp_path / "in" / str(n)).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / str(n)).write_bytes(b"%d" % n)
    result = run_cli("push", f"{capped.host}/limits/four:v1", str(tmp_path / "in"), "--single-manifest", config=config)
    assert result.returncode == 2
    line = error_line(result)
    assert "refused before upload: 4 file(s) need 4 layers, above the layer budget of 3" in line
    assert "config.toml" in line and "raise --max-layers" in line
    assert capped.blob_uploads() == 0 and capped.records == []


def test_pinned_chunk_size_is_refused_not_grown(
    capped: LayerCapProxy, big_file: tuple[Path, bytes], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.toml", capped.host, max_layers=3)
    result = run_cli(
        "push",
        f"{capped.host}/limits/pinned:v1",
        str(big_file[0]),
        "--chunk-size",
        "16M",
        "--single-manifest",
        config=config,
    )
    assert result.returncode == 2
    assert "4 layers, above the layer budget of 3 with 16777216-byte chunks" in error_line(result)
    assert capped.blob_uploads() == 0


# -- artifactType and the config media type ---------------------------------------------------------


def test_artifact_type_and_config_media_type_from_config(shared_registry: RegistryServer, tmp_path: Path) -> None:
    """As GitLab accepts: the OCI image config's media type and no artifactType."""
    (tmp_path / "f").write_bytes(b"hello")
    config = write_config(
        tmp_path / "config.toml",
        shared_registry.host,
        artifact_type="none",
        config_media_type="application/vnd.oci.image.config.v1+json",
    )
    result = run_cli("push", f"{shared_registry.host}/limits/typed:v1", str(tmp_path / "f"), config=config)
    assert result.returncode == 0, result.stderr
    doc = manifest_of(shared_registry.host, "limits/typed", "v1")
    assert "artifactType" not in doc
    assert doc["config"] == {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "size": 2,
    }
    assert pull_back(shared_registry, "limits/typed:v1", tmp_path / "out", tmp_path / "cache") == {"f": b"hello"}
    # A flag wins over the configuration.
    result = run_cli(
        "push",
        f"{shared_registry.host}/limits/typed:v2",
        str(tmp_path / "f"),
        "--artifact-type",
        "application/vnd.example.model.v1",
        config=config,
    )
    assert result.returncode == 0, result.stderr
    assert manifest_of(shared_registry.host, "limits/typed", "v2")["artifactType"] == "application/vnd.example.model.v1"


# -- a garbage collection between the HEAD and the manifest PUT ------------------------------------


class CollectOnManifestPut:
    """A request hook that deletes a blob from the registry's storage whenever a manifest PUT
    arrives (before the proxy forwards it): the HEAD of the push found it, the PUT will not."""

    def __init__(self, registry: RegistryServer, digest: str, times: int) -> None:
        self.directory = registry.blob_path(digest).parent
        self.times = times
        self.deleted = 0
        self.lock = threading.Lock()

    def __call__(self, record: Record) -> None:
        if record.method != "PUT" or "/manifests/" not in record.path:
            return
        with self.lock:
            if self.deleted < self.times:
                shutil.rmtree(self.directory)
                self.deleted += 1


def first_push(registry: RegistryServer, tmp_path: Path) -> tuple[dict[str, bytes], str]:
    """Push a chunked file and a plain one; return their contents and one chunk's digest."""
    rng = random.Random(11)
    contents = {"model.bin": rng.randbytes(5 * 64 * 1024 + 99), "README": rng.randbytes(200)}
    (tmp_path / "in").mkdir()
    for name, data in contents.items():
        (tmp_path / "in" / name).write_bytes(data)
    result = run_cli("push", f"{registry.host}/gc/model:v1", str(tmp_path / "in"), "--chunk-size", "64K", "-q")
    assert result.returncode == 0, result.stderr
    layers = manifest_of(registry.host, "gc/model", "v1")["layers"]
    assert isinstance(layers, list)
    chunk = next(layer["digest"] for layer in layers if layer["mediaType"] == MEDIA_TYPE_CHUNK)
    return contents, chunk


def test_resume_survives_a_blob_collected_before_the_manifest_put(registry: RegistryServer, tmp_path: Path) -> None:
    contents, chunk = first_push(registry, tmp_path)
    collect = CollectOnManifestPut(registry, chunk, times=1)
    with FaultProxy(registry.host, on_request=collect) as proxy:
        result = run_cli("push", f"{proxy.host}/gc/model:v2", str(tmp_path / "in"), "--chunk-size", "64K", "--json")
        assert proxy.errors == []
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert collect.deleted == 1
    assert summary["blobs_uploaded"] == 1  # the collected chunk, and nothing else
    assert proxy.count("PUT", r"/manifests/") == 2
    assert proxy.count("HEAD", rf"/blobs/{chunk}") == 2  # found by the resume, missing at the re-check
    assert registry.blob_path(chunk).exists()
    assert pull_back(registry, "gc/model:v2", tmp_path / "out", tmp_path / "cache") == contents


def test_a_collection_that_keeps_going_ends_in_one_line(registry: RegistryServer, tmp_path: Path) -> None:
    _, chunk = first_push(registry, tmp_path)
    collect = CollectOnManifestPut(registry, chunk, times=100)
    with FaultProxy(registry.host, on_request=collect) as proxy:
        result = run_cli("push", f"{proxy.host}/gc/model:v2", str(tmp_path / "in"), "--chunk-size", "64K")
        assert proxy.errors == []
    assert result.returncode == 1
    line = error_line(result)
    assert f"MANIFEST_BLOB_UNKNOWN: blob unknown to registry ({chunk}); still missing after" in line
    assert f"after {push.GC_RETRIES} re-uploads" in line and "garbage collection" in line
    assert proxy.count("PUT", r"/manifests/") == push.GC_RETRIES + 1
