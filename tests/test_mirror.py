"""Reading through a registry mirror: distribution in pull-through mode in front of the upstream."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from support.registry import RegistryFactory


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocifs", *args], capture_output=True, text=True, timeout=120)


def test_pull_and_inspect_through_a_pull_through_mirror(registry_factory: RegistryFactory, tmp_path: Path) -> None:
    upstream = registry_factory()
    mirror = registry_factory(proxy_remote=upstream)
    data = random.Random(5).randbytes(5 * 65536 + 11)
    (tmp_path / "model.bin").write_bytes(data)
    pushed = run_cli("push", f"{upstream.host}/library/model:v1", str(tmp_path / "model.bin"), "--chunk-size", "64K")
    assert pushed.returncode == 0, pushed.stderr
    # The mirror serves the upstream's repository under the same name.
    inspect = run_cli("inspect", f"{mirror.host}/library/model:v1", "--json")
    assert inspect.returncode == 0, inspect.stderr
    desc = json.loads(inspect.stdout)
    assert desc["files"][0]["kind"] == "chunked" and desc["files"][0]["chunks"] == 6
    out = tmp_path / "out"
    pulled = run_cli("pull", f"{mirror.host}/library/model:v1", "-o", str(out), "--cache-dir", str(tmp_path / "c"))
    assert pulled.returncode == 0, pulled.stderr
    assert (out / "model.bin").read_bytes() == data
    # Pushing to a mirror is refused by distribution: one clear line.
    refused = run_cli("push", f"{mirror.host}/library/other:v1", str(tmp_path / "model.bin"), "--retries", "1")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
