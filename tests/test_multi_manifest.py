"""Artifacts larger than one manifest (docs/spec.md §14): the split layout built, refused, pushed
to a real registry, pulled, mounted, copied with skopeo and read by an old client (oras-py).

2,400+ chunks of 4 KiB under a budget of 300 layers: an image index of 9 slices, one file's
chunk run spanning several of them.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.mounts import mounter
from support.registry import RegistryServer

from ocifs.digest import Digest
from ocifs.errors import FormatError, IntegrityError
from ocifs.format.build import build_artifact, build_chunk_index, build_manifest, fixed_layout
from ocifs.format.media import (
    ANNOTATION_LAYOUT,
    ANNOTATION_SLICE,
    DEFAULT_ARTIFACT_TYPE,
    LAYOUT_SLICES,
    MAX_SLICES,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_MANIFEST,
    SPLIT_CHUNK_SIZE,
)
from ocifs.format.model import ChunkedEntry, PlainFile
from ocifs.format.parse import is_split_index, merge_slices, parse_manifest, parse_split_index
from ocifs.format.plan import plan_layout

KiB = 1024
MiB = 1024 * KiB
SIZE = 10 * MiB  # 2,560 chunks of 4 KiB
BUDGET = 300
ACCEPT = ", ".join([MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_MANIFEST])


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OCIFS_CONFIG=os.devnull)
    return subprocess.run(
        [sys.executable, "-m", "ocifs", *args], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def entries(sizes: dict[str, int], chunk_size: int) -> list[ChunkedEntry | PlainFile]:
    """Builder input for files of ``sizes`` whose chunks are made-up digests (no bytes needed)."""
    out: list[ChunkedEntry | PlainFile] = []
    for path, size in sizes.items():
        if size <= chunk_size:
            out.append(PlainFile(path, size, Digest.of_bytes(path.encode())))
            continue
        chunks = [(Digest.of_bytes(f"{path}{o}".encode()), n, o) for o, n in fixed_layout(size, chunk_size)]
        out.append(ChunkedEntry(path, build_chunk_index(size, chunks)))
    return out


# -- the layout, built and parsed (no registry) -------------------------------------------------------


def test_what_fits_one_manifest_is_one_manifest() -> None:
    files = entries({"a": 10 * KiB, "b": 3}, 4 * KiB)
    built = build_artifact(files, layer_budget=BUDGET)
    assert built.media_type == MEDIA_TYPE_MANIFEST and built.slices == ()
    assert built.top == build_manifest(files, layer_budget=BUDGET)


def test_split_layout_slices_the_one_layer_list_in_order() -> None:
    files = entries({"model.bin": 1000 * 4 * KiB, "README": 5, "b.bin": 300 * 4 * KiB}, 4 * KiB)
    built = build_artifact(files, layer_budget=BUDGET)
    assert built.media_type == MEDIA_TYPE_IMAGE_INDEX
    index = json.loads(built.top)
    assert index["artifactType"] == DEFAULT_ARTIFACT_TYPE
    assert index["annotations"] == {ANNOTATION_LAYOUT: LAYOUT_SLICES}
    docs = [json.loads(s) for s in built.slices]
    layers = [layer for doc in docs for layer in doc["layers"]]
    assert len(layers) == 1 + 1000 + 1 + 1 + 300 and len(docs) == 5  # ceil(1303 / 300)
    assert [len(doc["layers"]) for doc in docs] == [300, 300, 300, 300, 103]
    for n, (doc, entry) in enumerate(zip(docs, index["manifests"], strict=True)):
        assert doc["annotations"] == {ANNOTATION_SLICE: str(n)}
        assert entry["annotations"] == {ANNOTATION_SLICE: str(n)}
        assert entry["digest"] == str(Digest.of_bytes(built.slices[n])) and entry["size"] == len(built.slices[n])
        assert doc["artifactType"] == DEFAULT_ARTIFACT_TYPE and "platform" not in entry
    # The logical list is exactly what one manifest without a budget would list.
    assert layers == json.loads(build_manifest(files, layer_budget=2000))["layers"]
    titles = [layer["annotations"]["org.opencontainers.image.title"] for layer in layers if "annotations" in layer
              and "org.opencontainers.image.title" in layer["annotations"]]  # fmt: skip
    assert len(titles) == len(set(titles))  # unique across the whole artifact: old clients write them all
    # A reader gets one artifact back; a slice alone is not one (a chunk run cut in two).
    artifact = merge_slices(parse_split_index(built.top), built.slices)
    assert [f.path for f in artifact.files] == ["model.bin", "README", "b.bin"]
    assert artifact.manifest_digest == Digest.of_bytes(built.top) and len(artifact.slices) == 5
    with pytest.raises(FormatError):
        parse_manifest(built.slices[1])


def test_single_manifest_mode_refuses() -> None:
    files = entries({"model.bin": 1000 * 4 * KiB}, 4 * KiB)
    with pytest.raises(FormatError, match="above the layer budget of 300"):
        build_artifact(files, layer_budget=BUDGET, split=False)


def test_too_many_slices_are_refused() -> None:
    files = entries({f"f{n}": 1 for n in range(MAX_SLICES + 1)}, 4 * KiB)
    with pytest.raises(FormatError, match=f"above the limit of {MAX_SLICES} manifests"):
        build_artifact(files, layer_budget=1)


def test_plan_grows_to_64_mib_then_splits() -> None:
    assert plan_layout([("m", 100 * MiB)]).manifests == 1
    # 300 GiB at ECR's 250 layers: 64 MiB chunks (not 1 GiB), over ~20 manifests.
    layout = plan_layout([("m", 300 * 1024 * MiB)], layer_budget=250)
    assert layout.chunk_size == SPLIT_CHUNK_SIZE and 20 <= layout.manifests <= 21
    pinned = plan_layout([("m", SIZE)], chunk_size=4 * KiB, layer_budget=BUDGET, grow=False)
    assert pinned.chunk_size == 4 * KiB and pinned.manifests >= 9


def test_index_rules() -> None:
    files = entries({"model.bin": 700 * 4 * KiB}, 4 * KiB)
    built = build_artifact(files, layer_budget=BUDGET)
    index = json.loads(built.top)

    def dump(doc: object) -> bytes:
        return json.dumps(doc).encode()

    # R21: what is not marked is not ours; an unknown layout value is refused.
    assert is_split_index(built.top)
    assert not is_split_index(dump({**index, "annotations": {}}))
    with pytest.raises(FormatError, match=r"unsupported dev\.ocifs\.layout"):
        parse_split_index(dump({**index, "annotations": {ANNOTATION_LAYOUT: "slices.v2"}}))
    # R22: count, media type, slice numbers in order.
    with pytest.raises(FormatError, match=r"outside 2\.\.1000"):
        parse_split_index(dump({**index, "manifests": index["manifests"][:1]}))
    swapped = [index["manifests"][1], index["manifests"][0], *index["manifests"][2:]]
    with pytest.raises(FormatError, match=r"dev\.ocifs\.slice is not 0"):
        parse_split_index(dump({**index, "manifests": swapped}))
    nested = [{**index["manifests"][0], "mediaType": MEDIA_TYPE_IMAGE_INDEX}, *index["manifests"][1:]]
    with pytest.raises(FormatError, match=r"is not application/vnd\.oci\.image\.manifest"):
        parse_split_index(dump({**index, "manifests": nested}))
    # R23: bytes checked against the index; a slice must agree with the others.
    parsed = parse_split_index(built.top)
    tampered = bytearray(built.slices[0])
    tampered[-3] ^= 1
    with pytest.raises((IntegrityError, FormatError)):
        merge_slices(parsed, [bytes(tampered), *built.slices[1:]])
    # A dropped slice is refused before anything is fetched (its successor's number is wrong).
    with pytest.raises(FormatError, match=r"manifests\[1\]: annotation dev\.ocifs\.slice is not 1"):
        parse_split_index(dump({**index, "manifests": [index["manifests"][0], index["manifests"][2]]}))
    # R24: the concatenation is validated as one manifest: slices given in the wrong order break
    # the chunk run even when each is itself intact.
    with pytest.raises(FormatError):
        merge_slices(parsed, [built.slices[1], built.slices[0], *built.slices[2:]])


# -- a real registry --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("src")
    (directory / "model.bin").write_bytes(random.Random(14).randbytes(SIZE))
    (directory / "README.md").write_text("split across manifests\n")
    return directory


@pytest.fixture(scope="module")
def pushed(shared_registry: RegistryServer, source: Path) -> str:
    ref = f"{shared_registry.host}/multi/model:v1"
    result = run_cli("push", ref, str(source), "--chunk-size", "4K", "--max-layers", str(BUDGET), "--json", "-j", "8")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["chunk_size"] == 4 * KiB and summary["manifests"] >= 9
    return ref


def get_manifest(host: str, repository: str, selector: str) -> httpx.Response:
    response = httpx.get(f"http://{host}/v2/{repository}/manifests/{selector}", headers={"Accept": ACCEPT})
    response.raise_for_status()
    return response


def test_the_tag_names_an_index_of_slices(shared_registry: RegistryServer, pushed: str) -> None:
    response = get_manifest(shared_registry.host, "multi/model", "v1")
    assert response.headers["content-type"].startswith(MEDIA_TYPE_IMAGE_INDEX)
    index = response.json()
    assert index["annotations"][ANNOTATION_LAYOUT] == LAYOUT_SLICES and len(index["manifests"]) >= 9
    layers = 0
    for entry in index["manifests"]:
        child = get_manifest(shared_registry.host, "multi/model", entry["digest"]).json()
        assert len(child["layers"]) <= BUDGET
        layers += len(child["layers"])
    assert layers == 1 + SIZE // (4 * KiB) + 1
    inspect = run_cli("inspect", pushed, "--json")
    assert inspect.returncode == 0, inspect.stderr
    described = json.loads(inspect.stdout)
    assert described["manifests"] == len(index["manifests"])
    assert {f["path"]: f["chunks"] for f in described["files"]} == {"model.bin": 2560, "README.md": 1}
    assert "manifests: " in run_cli("inspect", pushed).stdout


def test_pull_and_mount_read_the_source(pushed: str, source: Path, tmp_path: Path) -> None:
    result = run_cli("pull", pushed, "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c1"), "-q")
    assert result.returncode == 0, result.stderr
    for name in ("model.bin", "README.md"):
        subprocess.run(["cmp", str(source / name), str(tmp_path / "out" / name)], check=True)
    with mounter(tmp_path) as mount:
        m = mount(pushed, cache=tmp_path / "c2")
        for name in ("model.bin", "README.md"):
            subprocess.run(["cmp", str(source / name), str(m.path / name)], check=True)


def test_skopeo_copy_all_then_mount_the_copy(
    shared_registry: RegistryServer,
    registry: RegistryServer,
    skopeo: str,
    pushed: str,
    source: Path,
    tmp_path: Path,
) -> None:
    copy = subprocess.run(
        [skopeo, "--insecure-policy", "copy", "--all", "--quiet",
         "--src-tls-verify=false", "--dest-tls-verify=false",
         f"docker://{pushed}", f"docker://{registry.host}/copied/model:v1"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert copy.returncode == 0, copy.stderr
    original = get_manifest(shared_registry.host, "multi/model", "v1")
    copied = get_manifest(registry.host, "copied/model", "v1")
    # skopeo re-serialises the index (it refuses --preserve-digests for it), but copies the slices
    # byte for byte, so every chunk and file is the same.
    assert [m["digest"] for m in copied.json()["manifests"]] == [m["digest"] for m in original.json()["manifests"]]
    assert copied.json()["annotations"][ANNOTATION_LAYOUT] == LAYOUT_SLICES
    with mounter(tmp_path) as mount:
        m = mount(f"{registry.host}/copied/model:v1", cache=tmp_path / "cache")
        subprocess.run(["cmp", str(source / "model.bin"), str(m.path / "model.bin")], check=True)


def test_oras_pull_of_one_slice_writes_its_parts(shared_registry: RegistryServer, pushed: str, tmp_path: Path) -> None:
    import oras.client

    index = get_manifest(shared_registry.host, "multi/model", "v1").json()
    entry = index["manifests"][1]  # a slice in the middle of model.bin's chunk run
    child = get_manifest(shared_registry.host, "multi/model", entry["digest"]).json()
    target = f"{shared_registry.host}/multi/model@{entry['digest']}"
    out = tmp_path / "oras-out"
    oras.client.OrasClient(insecure=True).pull(target=target, outdir=str(out))
    titles = sorted(layer["annotations"]["org.opencontainers.image.title"] for layer in child["layers"])
    assert sorted(p.name for p in out.iterdir()) == titles
    assert all(t.startswith("model.bin.part-") for t in titles) and len(titles) == BUDGET
    first = int(titles[0].rsplit("-", 1)[1])
    expected = random.Random(14).randbytes(SIZE)[first * 4 * KiB : (first + 1) * 4 * KiB]
    assert (out / titles[0]).read_bytes() == expected


def test_a_foreign_image_index_is_still_refused(shared_registry: RegistryServer, pushed: str) -> None:
    index = get_manifest(shared_registry.host, "multi/model", "v1").json()
    platform = {"os": "linux", "architecture": "amd64"}
    manifests = [{**m, "platform": platform} for m in index["manifests"]]
    foreign = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_IMAGE_INDEX, "manifests": manifests}
    response = httpx.put(
        f"http://{shared_registry.host}/v2/multi/model/manifests/foreign",
        content=json.dumps(foreign).encode(),
        headers={"Content-Type": MEDIA_TYPE_IMAGE_INDEX},
    )
    assert response.status_code == 201, response.text
    result = run_cli("inspect", f"{shared_registry.host}/multi/model:foreign")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is an image index (multi-platform image), not a single artifact" in lines[0], lines
