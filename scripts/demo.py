"""`make demo`: the main job end to end on an embedded default.

Starts a local registry (Debian's docker-registry on 127.0.0.1, temporary storage), generates a
safetensors model, and runs the commands a user would: push, inspect, pull (verified), then
mount it and load one tensor through the mount, reporting bytes fetched against the file size.
Every command is printed before it runs. Size: DEMO_SIZE_MIB (default 2048).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.registry import RegistryServer  # noqa: E402

OCIFS = str(Path(sys.executable).with_name("ocifs"))
SIZE_MIB = int(os.environ.get("DEMO_SIZE_MIB", "2048"))
TENSOR_MIB = 64


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def run(*args: str, capture: bool = False) -> str:
    print("$ " + " ".join(shlex.quote(a) for a in args), flush=True)
    result = subprocess.run(args, text=True, stdout=subprocess.PIPE if capture else None, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo: command failed with status {result.returncode}")
    return result.stdout or ""


def make_model(path: Path) -> None:
    """A safetensors file of float32 tensors of TENSOR_MIB each, SIZE_MIB in all (random values)."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    count = max(1, SIZE_MIB // TENSOR_MIB)
    elements = TENSOR_MIB * (1 << 20) // 4
    tensors = {f"layers.{i}.weight": rng.standard_normal(elements, dtype=np.float32) for i in range(count)}
    save_file(tensors, str(path))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="ocifs-demo-"))
    server = RegistryServer(work / "registry", storage_in_shm=True)
    try:
        step(f"Starting a local registry (docker-registry, storage in {server.storage_dir})")
        server.start()
        ref = f"{server.host}/demo/model:v1"
        print(f"registry at {server.url}")

        step(f"Generating a {SIZE_MIB} MiB safetensors model")
        model_dir = work / "model"
        model_dir.mkdir()
        model = model_dir / "model.safetensors"
        make_model(model)
        (model_dir / "config.json").write_text(json.dumps({"architecture": "demo", "tensors": SIZE_MIB // TENSOR_MIB}))
        print(f"{model} ({model.stat().st_size:,} bytes)")

        step("Pushing it: chunks uploaded in parallel, then the chunk index and the manifest")
        run(OCIFS, "push", ref, str(model_dir))
        step("Pushing it again: every chunk is already there, nothing is uploaded")
        run(OCIFS, "push", ref, str(model_dir))

        step("Inspecting the artifact (from the manifest alone)")
        run(OCIFS, "inspect", ref)

        step("Pulling it: parallel, every chunk and the whole file verified")
        out = work / "pulled"
        cache = work / "cache"
        run(OCIFS, "pull", ref, "-o", str(out), "--cache-dir", str(cache))
        same = sha256_of(out / "model.safetensors") == sha256_of(model)
        print(f"pulled file identical to the original: {same}")
        if not same:
            return 1
        mount_demo(ref, work, model)
        step("Done")
        print("The same commands work against any OCI registry: see README.md.")
        return 0
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)


def mount_demo(ref: str, work: Path, model: Path) -> None:
    """Mount the artifact and load one tensor lazily (needs the mount command)."""
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    cache = work / "mount-cache"
    step("Mounting it: nothing is downloaded until a read needs it")
    run(OCIFS, "mount", ref, str(mountpoint), "--cache-dir", str(cache))
    try:
        run("ls", "-l", str(mountpoint))
        step("Loading one tensor through the mount with safetensors")
        from safetensors import safe_open

        started = time.monotonic()
        with safe_open(str(mountpoint / "model.safetensors"), framework="numpy") as f:
            name = sorted(f.keys())[len(f.keys()) // 2]
            tensor = f.get_tensor(name)
        elapsed = time.monotonic() - started
        stats = json.loads(os.getxattr(mountpoint, "user.ocifs.stats"))
        fetched = stats["fetch"]["bytes_downloaded"]
        size = model.stat().st_size
        print(
            f"loaded {name}: {tensor.shape[0]:,} float32 values, mean {float(tensor.mean()):+.4f}, in {elapsed:.2f}s\n"
            f"fetched {fetched / (1 << 20):,.1f} MiB of a {size / (1 << 20):,.0f} MiB file "
            f"({100 * fetched / size:.1f}%), counted by the mount: "
            f"getfattr -n user.ocifs.stats --only-values {mountpoint}"
        )
    finally:
        run(OCIFS, "umount", str(mountpoint))


if __name__ == "__main__":
    raise SystemExit(main())
