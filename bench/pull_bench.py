"""The pull suite: ``ocifs pull`` against oras-py, skopeo and raw curl, same artifact, same registry.

For each size (1 GiB and 4 GiB by default) one file is generated and pushed once with
``ocifs push`` (default settings: 16 MiB chunks) to a ``docker-registry`` whose storage is on
tmpfs; then, interleaved per repetition (a, b, c, a, b, c …):

- ``ocifs pull REF -o OUT --cache-dir C --json`` with a fresh (empty) chunk cache on
  ``--cache-parent`` (default ``/var/tmp``, the same ext4 disk as every client's output), then
  a second pull into a fresh output directory with that now-warm cache; and (sizes up to
  ``--shm-cache-max``) a cold pull with the cache on ``/dev/shm`` (no second disk write);
- oras-py ``OrasClient.pull`` (writes the ``<name>.part-NNNNN`` files plus the index blob: the
  same bytes, not reassembled; one blob at a time);
- ``skopeo copy docker://REF oci:OUT:bench`` (every blob, digests checked by skopeo);
- raw ``curl``: ONE curl process with a ``-K`` config listing every chunk URL in file order,
  (a) to ``/dev/null``, (b) to one file (the chunks concatenated = the file), followed by
  ``sha256sum`` of that file — and, from the same file, ``openssl dgst -sha256`` (SHA-NI).

Every client writes to the same disk (``--workdir``, default /var/tmp); outputs are deleted and
the dirty pages flushed (``sync``) before the next measurement, outside the timed window. With
``disk`` in ``--storage``, sizes up to ``--pull-disk-max`` are also pushed to a registry whose
storage is on disk and pulled by ocifs and curl, with the registry's blob files evicted from the
page cache (``posix_fadvise(DONTNEED)`` per file) before each run.

Also, for the smallest size: ocifs, oras-py and curl through ``latency_proxy.py`` (``--pull-rtt-ms``,
default 40; 0 skips); with ``--attribution N``, N interleaved runs of diagnostic ocifs variants, each
with one cost removed by a monkeypatch (cache write, whole-file hash), next to oras-py; with
``--pull-profile``, one cold pull under py-spy and one under perf.

The test files are valid safetensors files (random float32 tensors of 64 MiB, header padded so
the file has exactly the requested size), so that the mount suite (``mount_bench``) can load
one tensor from the same artifact; both suites share the registry and the pushed artifacts when
they run in one invocation (:func:`shared_setup`).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    GIB,
    MIB,
    BenchRegistry,
    Measurement,
    ProcResult,
    Summary,
    load_average,
    log,
    markdown_table,
    median,
    parse_size,
    run_measured,
    size_label,
    summarize,
)

SUITE = "pull"
TENSOR_BYTES = 64 * MIB
TITLE = "org.opencontainers.image.title"

# Targets of the pull and mount issues (docs/benchmarks.md states each beside its measurement).
TARGET_VS_ORAS = 1.5
TARGET_VS_CURL_FILE_SHA = 1.0  # "faster than"

DEFAULT_TOOLS = "ocifs,ocifs-shm,oras-py,skopeo,curl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pull suite")
    g.add_argument(
        "--pull-tools",
        default=DEFAULT_TOOLS,
        help=f"clients to compare (default {DEFAULT_TOOLS}; 'ocifs' includes the warm-cache pull)",
    )
    g.add_argument(
        "--pull-disk-max",
        type=parse_size,
        default=GIB,
        help="with disk in --storage: largest size also pulled from a registry on disk (default 1G)",
    )
    g.add_argument(
        "--cache-parent",
        default="/var/tmp",
        help="where the fresh ocifs chunk caches go (pull and mount suites; default /var/tmp, on disk)",
    )
    g.add_argument(
        "--shm-cache-max",
        type=parse_size,
        default=GIB,
        help="largest size also measured with the ocifs cache on /dev/shm (RAM; default 1G)",
    )
    g.add_argument(
        "--pull-rtt-ms",
        type=float,
        default=40.0,
        help="also pull the smallest size through bench/latency_proxy.py with this RTT (0: skip; default 40)",
    )
    g.add_argument("--pull-window", type=parse_size, default=4 * MIB, help="the proxy's window per connection (4M)")
    g.add_argument(
        "--attribution",
        type=int,
        default=0,
        metavar="N",
        help="diagnostics: N interleaved runs of ocifs variants with one cost removed (smallest size; default 0)",
    )
    g.add_argument("--pull-profile", action="store_true", help="also run one cold ocifs pull under py-spy")


# =================================================================================================
# Test data and the shared registry (used by mount_bench too)
# =================================================================================================


def make_safetensors_file(path: Path, size: int, tensor_bytes: int = TENSOR_BYTES) -> tuple[str, list[str]]:
    """Write a safetensors file of exactly ``size`` bytes: random float32 tensors of
    ``tensor_bytes`` (the last one shorter by the header), returning (sha256 digest, names)."""
    if size % 8 or size < 1024:
        raise ValueError("size must be a multiple of 8 and at least 1 KiB")
    count = max(1, -(-size // tensor_bytes))
    header_len = 0
    while True:
        data_len = size - 8 - header_len
        sizes = [tensor_bytes] * (count - 1) + [data_len - tensor_bytes * (count - 1)]
        if sizes[-1] <= 0 or sizes[-1] % 4:
            raise ValueError(f"cannot lay out {size} bytes in tensors of {tensor_bytes}")
        header: dict[str, Any] = {"__metadata__": {"generator": "ocifs bench"}}
        offset = 0
        for i, n in enumerate(sizes):
            header[f"t{i:04d}"] = {"dtype": "F32", "shape": [n // 4], "data_offsets": [offset, offset + n]}
            offset += n
        text = json.dumps(header, separators=(",", ":")).encode()
        padded = len(text) + (-len(text)) % 8
        if padded == header_len:
            break
        header_len = padded
    head = header_len.to_bytes(8, "little") + text + b" " * (header_len - len(text))
    hasher = hashlib.sha256(head)
    try:
        import numpy

        generate = numpy.random.default_rng().bytes
    except ImportError:  # pragma: no cover - numpy is a test dependency
        generate = os.urandom
    with path.open("wb") as f:
        f.write(head)
        left = size - len(head)
        while left:
            block = generate(min(64 * MIB, left))
            hasher.update(block)
            f.write(block)
            left -= len(block)
    return f"sha256:{hasher.hexdigest()}", [f"t{i:04d}" for i in range(count)]


@dataclass
class TestData:
    path: Path
    size: int
    digest: str
    tensors: list[str]


@dataclass
class Artifact:
    """One test file pushed with ``ocifs push`` (default settings) to one registry."""

    registry: BenchRegistry
    data: TestData
    repository: str
    tag: str
    manifest_digest: str
    index_digest: str
    chunk_digests: list[str]
    push_seconds: float
    via: str | None = None  # host:port of a latency proxy in front of the registry
    network: str = "loopback"

    @property
    def host(self) -> str:
        return self.via or self.registry.host

    @property
    def storage(self) -> str:
        return self.registry.storage

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def name(self) -> str:
        return self.data.path.name

    @property
    def ref(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"

    def blob_url(self, digest: str) -> str:
        return f"http://{self.host}/v2/{self.repository}/blobs/{digest}"

    def curl_config(self, path: Path) -> Path:
        """A curl ``-K`` file: every chunk URL in file order (their bodies concatenated = the file)."""
        path.write_text("".join(f'url = "{self.blob_url(d)}"\n' for d in self.chunk_digests))
        return path


@dataclass
class Setup:
    """Registries (tmpfs, disk), generated files and pushed artifacts, made on first use."""

    work_dir: Path
    registries: dict[str, BenchRegistry] = field(default_factory=dict)
    files: dict[int, TestData] = field(default_factory=dict)
    artifacts: dict[tuple[str, int], Artifact] = field(default_factory=dict)
    closed: bool = False

    def registry(self, storage: str) -> BenchRegistry:
        if storage not in self.registries:
            directory = self.work_dir / f"pull-registry-{storage}"
            directory.mkdir(parents=True, exist_ok=True)
            registry = BenchRegistry(directory, storage)
            registry.server.start()
            self.registries[storage] = registry
        return self.registries[storage]

    def test_file(self, size: int) -> TestData:
        if size not in self.files:
            path = self.work_dir / f"model-{size_label(size).replace(' ', '')}.safetensors"
            log(f"generating {size_label(size)} safetensors file of random float32 tensors: {path}")
            digest, tensors = make_safetensors_file(path, size)
            self.files[size] = TestData(path, size, digest, tensors)
        return self.files[size]

    def artifact(self, storage: str, size: int) -> Artifact:
        key = (storage, size)
        if key not in self.artifacts:
            data = self.test_file(size)
            registry = self.registry(storage)
            repository, tag = "bench/model", f"{size // MIB}m"
            ref = f"{registry.host}/{repository}:{tag}"
            log(f"pushing {size_label(size)} to the {storage} registry with ocifs push (defaults)")
            argv = [sys.executable, "-m", "ocifs", "push", ref, str(data.path), "--json", "-q"]
            pushed = run_measured(argv).check("ocifs push")
            summary = json.loads(pushed.stdout)
            manifest, digest = fetch_manifest(registry, repository, tag)
            chunks: list[str] = []
            index_digest = ""
            for layer in manifest["layers"]:
                title = (layer.get("annotations") or {}).get(TITLE, "")
                if title.startswith(f"{data.path.name}.part-"):
                    chunks.append(layer["digest"])
                elif not title:
                    index_digest = layer["digest"]
            if not chunks or not index_digest or digest != summary["digest"]:
                raise RuntimeError(f"unexpected manifest for {ref}: {len(chunks)} chunks, {digest}")
            self.artifacts[key] = Artifact(
                registry, data, repository, tag, digest, index_digest, chunks, round(pushed.seconds, 2)
            )
        return self.artifacts[key]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for registry in self.registries.values():
            with contextlib.suppress(Exception):
                registry.close()
        for data in self.files.values():
            with contextlib.suppress(FileNotFoundError):
                data.path.unlink()


def fetch_manifest(registry: BenchRegistry, repository: str, tag: str) -> tuple[dict[str, Any], str]:
    request = urllib.request.Request(
        f"{registry.url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # 127.0.0.1 only
        body = response.read()
        digest = response.headers.get("Docker-Content-Digest") or f"sha256:{hashlib.sha256(body).hexdigest()}"
    return json.loads(body), digest


_SETUPS: dict[int, Setup] = {}


def shared_setup(ctx: Any) -> Setup:
    """The setup of this run (one per ``ctx``), shared by the pull and mount suites."""
    setup = _SETUPS.get(id(ctx))
    if setup is None or setup.closed:
        setup = _SETUPS[id(ctx)] = Setup(ctx.work_dir)
        atexit.register(setup.close)
    return setup


def release_setup(ctx: Any, suite: str) -> None:
    """Close the shared setup unless a later suite of this run (pull → mount) still needs it."""
    order = [s.strip() for s in str(getattr(ctx, "only", "")).split(",") if s.strip()]
    later = order[order.index(suite) + 1 :] if suite in order else []
    if not any(s in ("pull", "mount") for s in later):
        setup = _SETUPS.pop(id(ctx), None)
        if setup is not None:
            setup.close()


# =================================================================================================
# Small helpers shared with mount_bench
# =================================================================================================


def sync_and_settle() -> None:
    """Flush dirty pages (outputs of the previous measurement) outside any timed window."""
    os.sync()


def evict_from_page_cache(paths: list[Path]) -> None:
    """Drop these files' pages from the page cache (per file; nobody else's cache is touched)."""
    for path in paths:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def files_under(root: Path, name: str | None = None) -> list[Path]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if name is None or f == name:
                found.append(Path(dirpath) / f)
    return found


def fresh_dir(parent: Path | str, prefix: str) -> Path:
    path = Path(parent) / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def code_state() -> dict[str, Any]:
    """The ocifs code measured: HEAD and the files of ocifs/ modified in the working tree
    (other engineers edit it while benchmarks run; the suites run the working tree)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False).stdout

    return {
        "head": git("rev-parse", "--short", "HEAD").strip(),
        "modified": [line[3:] for line in git("status", "--porcelain", "--", "ocifs").splitlines()],
        "at": time.strftime("%H:%M:%S"),
    }


def load1() -> float:
    return round(load_average()[0], 2)


def combine(results: list[ProcResult], seconds: float | None = None) -> ProcResult:
    """Several sequential processes as one: summed wall time and CPU, largest RSS."""
    return ProcResult(
        argv=results[0].argv,
        returncode=max(r.returncode for r in results),
        seconds=seconds if seconds is not None else sum(r.seconds for r in results),
        max_rss_kib=max(r.max_rss_kib for r in results),
        cpu_seconds=sum(r.cpu_seconds for r in results),
        stdout="",
        stderr="",
    )


def curl_get(art: Artifact, work: Path, output: Path | None) -> ProcResult:
    """One curl process fetching every chunk in order over one connection, to ``output`` or /dev/null."""
    config = art.curl_config(work / f"curl-{uuid.uuid4().hex[:8]}.cfg")
    target = str(output) if output is not None else "/dev/null"
    try:
        argv = ["sh", "-c", 'exec curl -s -S --fail -K "$1" > "$2"', "sh", str(config), target]
        return run_measured(argv).check("curl GET")
    finally:
        config.unlink()


# =================================================================================================
# The clients
# =================================================================================================


@dataclass
class Run:
    """One measured client run (a list: ocifs gives the cold and the warm pull)."""

    tool: str
    settings: str
    result: ProcResult
    extra: dict[str, Any] = field(default_factory=dict)


Client = Callable[[Artifact, Any], list[Run]]


def _check_ocifs_pull(result: ProcResult, art: Artifact, warm: bool) -> dict[str, Any]:
    summary = json.loads(result.stdout)
    digest = summary["files"][0]["digest"]
    if digest != art.data.digest or summary["bytes"] != art.size:
        raise RuntimeError(f"ocifs pull wrote {summary['bytes']} bytes with digest {digest}")
    if warm and summary["bytes_downloaded"] > 1 * MIB:
        raise RuntimeError(f"warm ocifs pull downloaded {summary['bytes_downloaded']} bytes")
    if not warm and summary["bytes_from_cache"]:
        raise RuntimeError(f"cold ocifs pull found {summary['bytes_from_cache']} bytes in a fresh cache")
    return {
        "ocifs_seconds": summary["seconds"],
        "bytes_downloaded": summary["bytes_downloaded"],
        "bytes_from_cache": summary["bytes_from_cache"],
        "blob_requests": summary["blob_requests"],
    }


#: Diagnostic variants (``--attribution``): the ocifs process runs with one cost removed by a
#: monkeypatch (or an allocator setting), to measure what that cost is. Never a way to run ocifs:
#: they skip caching or verification. Names combine with " + ".
VARIANT_PATCHES: dict[str, str] = {
    "as is": "",
    "no cache write": "import ocifs.cache.disk as m\nm.DiskStore.write = lambda self, digest, data: True\n",
    "no chunk sha256": "import ocifs.digest as m\nm.Digest.matches = lambda self, data: True\n",
    "no whole-file sha256": (
        "import ocifs.commands.pull as m\nm._FileJob.hashes_whole_file = property(lambda self: False)\n"
    ),
    "MALLOC_MMAP_THRESHOLD_=1M": "",
}


def ocifs_command(variant: str = "as is") -> tuple[list[str], dict[str, str] | None]:
    """The ocifs command line (and environment) of a diagnostic variant; plain ``-m ocifs`` as is."""
    names = [v.strip() for v in variant.split(" + ")]
    patch = "".join(VARIANT_PATCHES[n] for n in names)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MIB)) if "MALLOC_MMAP_THRESHOLD_=1M" in names else None
    if not patch:
        return [sys.executable, "-m", "ocifs"], env
    code = patch + "import sys\nfrom ocifs.commands.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return [sys.executable, "-c", code], env


def ocifs_pull_argv(art: Artifact, out: Path, cache: Path, variant: str = "as is") -> list[str]:
    command, _ = ocifs_command(variant)
    return [*command, "pull", art.ref, "-o", str(out), "--cache-dir", str(cache), "--json", "-q"]


def ocifs_client(cache_parent: str, warm: bool) -> Client:
    where = "/dev/shm" if cache_parent.startswith("/dev/shm") else cache_parent

    def pull(art: Artifact, ctx: Any) -> list[Run]:
        cache = fresh_dir(cache_parent, "ocifs-bench-cache")
        out = fresh_dir(ctx.work_dir, "pull-out")
        runs = []
        try:
            started_load = load1()
            res = run_measured(ocifs_pull_argv(art, out, cache)).check("ocifs pull")
            extra = _check_ocifs_pull(res, art, warm=False)
            runs.append(Run("ocifs", f"cold cache on {where}", res, {**extra, "load1": started_load}))
            if warm:
                remove(out)
                sync_and_settle()
                out.mkdir()
                started_load = load1()
                res = run_measured(ocifs_pull_argv(art, out, cache)).check("ocifs pull (warm)")
                extra = _check_ocifs_pull(res, art, warm=True)
                runs.append(Run("ocifs", f"warm cache on {where}", res, {**extra, "load1": started_load}))
        finally:
            remove(out, cache)
        return runs

    return pull


_ORAS_PULL = """
import sys
import oras.client
host, target = sys.argv[1:3]
files = oras.client.OrasClient(hostname=host, insecure=True).pull(target=target, outdir=".")
print(len(files))
"""


def oras_client(art: Artifact, ctx: Any) -> list[Run]:
    out = fresh_dir(ctx.work_dir, "oras-out")
    try:
        started_load = load1()
        argv = [sys.executable, "-c", _ORAS_PULL, art.host, art.ref]
        res = run_measured(argv, cwd=out).check("oras-py pull")
        parts = sorted(out.glob(f"{art.name}.part-[0-9][0-9][0-9][0-9][0-9]"))
        written = sum(p.stat().st_size for p in parts)
        if written != art.size:
            raise RuntimeError(f"oras-py wrote {written} bytes of parts, expected {art.size}")
        return [Run("oras-py", "OrasClient.pull (parts)", res, {"files": len(parts), "load1": started_load})]
    finally:
        remove(out)


def skopeo_client(art: Artifact, ctx: Any) -> list[Run]:
    out = fresh_dir(ctx.work_dir, "skopeo-out")
    try:
        started_load = load1()
        argv = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{art.ref}", f"oci:{out}:bench"]
        res = run_measured(argv).check("skopeo copy")
        blobs = out / "blobs" / "sha256"
        written = sum(p.stat().st_size for p in blobs.iterdir())
        if written < art.size:
            raise RuntimeError(f"skopeo wrote {written} bytes, expected at least {art.size}")
        return [Run("skopeo", "copy → oci: layout", res, {"load1": started_load})]
    finally:
        remove(out)


def curl_client(art: Artifact, ctx: Any) -> list[Run]:
    runs = []
    started_load = load1()
    res = curl_get(art, ctx.work_dir, None)
    runs.append(Run("curl", "1 process, -K, → /dev/null", res, {"load1": started_load}))
    sync_and_settle()
    target = ctx.work_dir / f"curl-{uuid.uuid4().hex[:8]}.bin"
    try:
        started_load = load1()
        got = curl_get(art, ctx.work_dir, target)
        summed = run_measured(["sha256sum", str(target)]).check("sha256sum")
        if summed.stdout.split()[0] != art.data.digest.split(":", 1)[1]:
            raise RuntimeError("curl → file: sha256sum does not match the file's digest")
        runs.append(
            Run(
                "curl",
                "→ file, then sha256sum",
                combine([got, summed]),
                {
                    "curl_seconds": round(got.seconds, 3),
                    "hash_seconds": round(summed.seconds, 3),
                    "load1": started_load,
                },
            )
        )
        ossl = run_measured(["openssl", "dgst", "-sha256", str(target)]).check("openssl dgst")
        runs.append(
            Run(
                "curl",
                "→ file, then openssl sha256",
                combine([got, ossl]),
                {"curl_seconds": round(got.seconds, 3), "hash_seconds": round(ossl.seconds, 3), "load1": started_load},
            )
        )
    finally:
        remove(target)
    return runs


# =================================================================================================
# Measuring
# =================================================================================================


FAILURES: list[dict[str, Any]] = []


def measure(client: Client, name: str, art: Artifact, ctx: Any) -> list[Measurement]:
    remove(*ctx.work_dir.glob("*-out-*"))
    sync_and_settle()
    if art.storage == "disk":
        evict_from_page_cache(files_under(art.registry.server.storage_dir, "data"))
    registry_cpu = art.registry.cpu_seconds()
    try:
        runs = client(art, ctx)
    except Exception as exc:  # recorded, not fatal: one failed client must not lose the run
        log(f"  {name} {size_label(art.size)} {art.storage}: FAILED: {str(exc).splitlines()[0][:200]}")
        FAILURES.append({"tool": name, "size": art.size, "storage": art.storage, "error": str(exc)[:4000]})
        return []
    registry_cpu = art.registry.cpu_seconds() - registry_cpu
    out = []
    for run in runs:
        m = Measurement(
            suite=SUITE,
            tool=run.tool,
            settings=run.settings,
            size=art.size,
            storage=art.storage,
            seconds=run.result.seconds,
            max_rss_kib=run.result.max_rss_kib,
            client_cpu_seconds=run.result.cpu_seconds,
            # Shared between the runs of one client call (ocifs cold + warm: the warm one is ~0).
            registry_cpu_seconds=registry_cpu / len(runs),
            network=art.network,
            extra=run.extra,
        )
        log(
            f"  {m.tool:7} {m.settings:32} {size_label(m.size):>7} {m.storage:5} {m.seconds:6.2f} s"
            f" {m.mib_per_second:7.0f} MiB/s  rss {m.max_rss_kib / 1024:5.0f} MiB  cpu {m.client_cpu_seconds:5.1f} s"
            f"  load {run.extra.get('load1', 0):.1f}"
        )
        out.append(m)
    return out


def clients_for(tools: list[str], ctx: Any, storage: str, size: int) -> list[tuple[str, Client]]:
    clients: list[tuple[str, Client]] = []
    if "ocifs" in tools:
        clients.append(("ocifs", ocifs_client(ctx.cache_parent, warm=storage == "tmpfs")))
    if "ocifs-shm" in tools and storage == "tmpfs" and size <= ctx.shm_cache_max:
        clients.append(("ocifs-shm", ocifs_client("/dev/shm", warm=False)))
    if storage == "tmpfs":
        if "oras-py" in tools:
            clients.append(("oras-py", oras_client))
        if "skopeo" in tools:
            clients.append(("skopeo", skopeo_client))
    if "curl" in tools:
        clients.append(("curl", curl_client))
    return clients


PULL_VARIANTS = ("as is", "no cache write", "no whole-file sha256", "no cache write + no whole-file sha256")


def pull_attribution(ctx: Any, art: Artifact, repeat: int) -> list[dict[str, Any]]:
    """Cold pulls (cache on --cache-parent) of ocifs variants with one cost removed, and oras-py."""
    rows = []
    for rep in range(repeat):
        log(f"attribution, pull {size_label(art.size)}: repetition {rep + 1}/{repeat}")
        for variant in (*PULL_VARIANTS, "oras-py"):
            remove(*ctx.work_dir.glob("*-out-*"))
            sync_and_settle()
            load = load1()
            if variant == "oras-py":
                res = oras_client(art, ctx)[0].result
            else:
                cache, out = fresh_dir(ctx.cache_parent, "ocifs-bench-cache"), fresh_dir(ctx.work_dir, "pull-out")
                try:
                    _, env = ocifs_command(variant)
                    res = run_measured(ocifs_pull_argv(art, out, cache, variant), env=env).check(f"ocifs {variant}")
                finally:
                    remove(out, cache)
            rows.append(
                {
                    "variant": variant,
                    "size": art.size,
                    "mib_per_second": round(art.size / MIB / res.seconds, 1),
                    "cpu_s_per_gib": round(res.cpu_seconds / (art.size / GIB), 2),
                    "rss_mib": round(res.max_rss_kib / 1024, 1),
                    "load1": load,
                }
            )
            log(f"  {variant:40} {rows[-1]['mib_per_second']:6.0f} MiB/s  cpu {rows[-1]['cpu_s_per_gib']:4.2f} s/GiB")
    return rows


def attribution_table(rows: list[dict[str, Any]], cpu_label: str) -> str:
    """Per variant: throughput and CPU ranges over the repetitions, peak RSS, load."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]

        def span(key: str, fmt: str, mine: list[dict[str, Any]] = mine) -> str:
            lo, hi = min(r[key] for r in mine), max(r[key] for r in mine)
            return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}–{hi:{fmt}}"

        out.append(
            [
                variant,
                span("mib_per_second", ".0f"),
                span("cpu_s_per_gib", ".2f"),
                span("rss_mib", ".0f"),
                span("load1", ".1f"),
            ]
        )
    size = size_label(rows[0]["size"])
    title = f"#### Attribution (diagnostic variants, {size}, {len(rows) // max(1, len(out))} interleaved runs each)\n\n"
    headers = ["variant", "MiB/s", cpu_label, "peak RSS MiB", "load (1 min)"]
    return title + markdown_table(headers, out, "lrrrr") + "\n"


def pull_with_latency(ctx: Any, art: Artifact, tools: list[str], loads: list[float]) -> list[Measurement]:
    """ocifs vs oras-py vs curl through the delaying proxy of the push suite (one run each)."""
    argv = [sys.executable, str(Path(__file__).resolve().parent / "latency_proxy.py"), "--target", art.registry.host]
    argv += ["--rtt-ms", str(ctx.pull_rtt_ms), "--window", str(ctx.pull_window)]
    proxy = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    out: list[Measurement] = []
    try:
        assert proxy.stdout is not None
        line = proxy.stdout.readline().split()
        if len(line) != 2 or line[0] != "LISTENING":
            raise RuntimeError(f"latency proxy did not start: {line}")
        network = f"{ctx.pull_rtt_ms:g} ms RTT, {ctx.pull_window // MIB} MiB window"
        slow = dataclasses.replace(art, via=line[1], network=network)
        clients: list[tuple[str, Client]] = []
        if "ocifs" in tools:
            clients.append(("ocifs", ocifs_client(ctx.cache_parent, warm=False)))
        if "oras-py" in tools:
            clients.append(("oras-py", oras_client))
        if "curl" in tools:
            clients.append(("curl", curl_null_client))
        log(f"pull {size_label(art.size)} through the latency proxy: {network}")
        for name, client in clients:
            loads.append(load1())
            out += measure(client, name, slow, ctx)
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    return out


def curl_null_client(art: Artifact, ctx: Any) -> list[Run]:
    started_load = load1()
    res = curl_get(art, ctx.work_dir, None)
    return [Run("curl", "1 process, -K, → /dev/null", res, {"load1": started_load})]


def profile_pull(art: Artifact, ctx: Any) -> dict[str, Any]:
    """One cold ocifs pull under ``py-spy record`` (Python stacks), one under ``perf record``
    (CPU by thread and library: trio names worker threads after the function they run)."""
    from common import RESULTS_DIR

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-pull-pyspy-{art.size // MIB}m.txt"
    result: dict[str, Any] = {}
    cache, out = fresh_dir(ctx.cache_parent, "ocifs-bench-cache"), fresh_dir(ctx.work_dir, "pull-out")
    try:
        argv = [pyspy, "record", "--format", "raw", "--rate", "250", "--threads", "-o", str(raw), "--"]
        subprocess.run(argv + ocifs_pull_argv(art, out, cache), capture_output=True, check=True, timeout=900)
        result["pyspy"] = {"file": str(raw), **top_frames(raw)}
    finally:
        remove(out, cache)
    sync_and_settle()
    cache, out = fresh_dir(ctx.cache_parent, "ocifs-bench-cache"), fresh_dir(ctx.work_dir, "pull-out")
    data = ctx.work_dir / "perf-pull.data"
    try:
        argv = ["perf", "record", "-F", "499", "-g", "-o", str(data), "--"]
        subprocess.run(argv + ocifs_pull_argv(art, out, cache), capture_output=True, check=True, timeout=900)
        result["perf"] = perf_summary(data)
    finally:
        remove(out, cache, data)
    return result


def perf_summary(data: Path, n: int = 16) -> list[str]:
    """``perf report`` by thread name and shared object: the top ``n`` lines."""
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "comm,dso", "-g", "none", "--stdio"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [" ".join(line.split()) for line in report.splitlines() if line.strip() and not line.startswith("#")][:n]


def top_frames(raw: Path, n: int = 12) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    self_counts: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if frames:
            self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count

    def top(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    return {"samples": total, "self_pct": top(self_counts), "inclusive_pct": top(incl)}


# =================================================================================================
# The suite
# =================================================================================================


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run(ctx: Any) -> dict[str, Any]:
    tools = _csv(ctx.pull_tools)
    setup = shared_setup(ctx)
    measurements: list[Measurement] = []
    loads: list[float] = []
    profiles: dict[str, Any] = {}
    pushes: list[dict[str, Any]] = []
    code = [code_state()]
    attribution: list[dict[str, Any]] = []
    try:
        plan = [("tmpfs", size) for size in ctx.sizes]
        if "disk" in ctx.storages:
            plan += [("disk", size) for size in ctx.sizes if size <= ctx.pull_disk_max]
        for storage, size in plan:
            art = setup.artifact(storage, size)
            pushes.append({"size": size, "storage": storage, "push_seconds": art.push_seconds, "ref": art.ref})
            clients = clients_for(tools, ctx, storage, size)
            repeat = ctx.repeat_for(size)
            for rep in range(repeat):
                log(f"pull {size_label(size)} from the {storage} registry: repetition {rep + 1}/{repeat}")
                for name, client in clients:
                    loads.append(load1())
                    measurements += measure(client, name, art, ctx)
            if ctx.pull_rtt_ms > 0 and storage == "tmpfs" and size == min(ctx.sizes):
                measurements += pull_with_latency(ctx, art, tools, loads)
            if ctx.attribution and storage == "tmpfs" and size == min(ctx.sizes):
                attribution += pull_attribution(ctx, art, ctx.attribution)
            if ctx.pull_profile and storage == "tmpfs" and size == min(ctx.sizes):
                log("profiling one cold ocifs pull with py-spy")
                profiles[str(size)] = profile_pull(art, ctx)
    finally:
        remove(*ctx.work_dir.glob("*-out-*"))
        release_setup(ctx, SUITE)
        code.append(code_state())
    summaries = summarize(measurements)
    report = render(summaries, loads)
    md = report["markdown"]
    if FAILURES:
        md += "\n#### Failed runs\n\n" + "\n".join(
            f"- {f['tool']}, {size_label(f['size'])}, {f['storage']}: {f['error'].splitlines()[0][:300]}"
            for f in FAILURES
        )
    if attribution:
        md += "\n" + attribution_table(attribution, "client CPU s/GiB") + "\n"
    for size, prof in profiles.items():
        md += f"\n#### Profile of one cold `ocifs pull` of {size_label(int(size))}\n\n"
        md += "perf, CPU samples by thread and library:\n\n```\n" + "\n".join(prof["perf"]) + "\n```\n\n"
        md += "py-spy, Python self time (% of samples):\n\n"
        md += markdown_table(["function", "% self"], [[f"`{k}`", v] for k, v in prof["pyspy"]["self_pct"]]) + "\n"
    return {
        "suite": SUITE,
        "cache_parent": ctx.cache_parent,
        "ocifs_code": code,
        "pushes": pushes,
        "measurements": [m.to_json() for m in measurements],
        "summaries": [s.to_json() for s in summaries],
        "ratios": report["ratios"],
        "load1_before_measurements": loads,
        "profiles": profiles,
        "attribution": attribution,
        "failures": FAILURES,
        "markdown": md,
    }


# =================================================================================================
# The report
# =================================================================================================


def _find(summaries: list[Summary], **kw: Any) -> Summary | None:
    for s in summaries:
        if all(getattr(s, k) == v for k, v in kw.items()):
            return s
    return None


def _load(s: Summary) -> float:
    return median([m.extra.get("load1", float("nan")) for m in s.runs])


def render(summaries: list[Summary], loads: list[float]) -> dict[str, Any]:
    md: list[str] = []
    ratios: list[dict[str, Any]] = []
    wan = [s for s in summaries if s.network != "loopback"]
    summaries = [s for s in summaries if s.network == "loopback"]
    storages = [st for st in ("tmpfs", "disk") if any(s.storage == st for s in summaries)]
    for size in sorted({s.size for s in summaries}):
        rows = []
        keys = list(dict.fromkeys((s.tool, s.settings) for s in summaries if s.size == size))
        headers = ["client", "settings"]
        for st in storages:
            headers += [f"{st} MiB/s", f"{st} s"]
        headers += ["range MiB/s", "peak RSS MiB", "client CPU s/GiB", "registry CPU s/GiB", "load (1 min)"]
        for tool, settings in keys:
            row: list[Any] = [tool, settings]
            ref = None
            for st in storages:
                s = _find(summaries, tool=tool, settings=settings, size=size, storage=st)
                row += [s.mib_per_second, s.seconds] if s else [float("nan"), float("nan")]
                ref = ref or s
            assert ref is not None
            row += [ref.spread, ref.max_rss_mib, ref.client_cpu_per_gib, ref.registry_cpu_per_gib, _load(ref)]
            rows.append(row)
        md.append(f"#### {size_label(size)} (median of {len(ref.runs)})\n")
        md.append(markdown_table(headers, rows, "ll" + "r" * (len(headers) - 2)))
        md.append("")
        for st in storages:
            for settings in ("cold cache on /var/tmp", "cold cache on /dev/shm"):
                ocifs = _find(summaries, tool="ocifs", settings=settings, size=size, storage=st)
                if ocifs is None:
                    continue
                for name, other_settings, target in (
                    ("vs oras-py", ("oras-py", "OrasClient.pull (parts)"), TARGET_VS_ORAS),
                    ("vs curl → file + sha256sum", ("curl", "→ file, then sha256sum"), TARGET_VS_CURL_FILE_SHA),
                    ("vs curl → file + openssl", ("curl", "→ file, then openssl sha256"), None),
                    ("vs curl → /dev/null", ("curl", "1 process, -K, → /dev/null"), None),
                    ("vs skopeo", ("skopeo", "copy → oci: layout"), None),
                ):
                    other = _find(summaries, tool=other_settings[0], settings=other_settings[1], size=size, storage=st)
                    if other is None:
                        continue
                    ratios.append(
                        {
                            "size": size,
                            "storage": st,
                            "ocifs": settings,
                            "ratio": name,
                            "value": round(ocifs.mib_per_second / other.mib_per_second, 2),
                            "target": target,
                        }
                    )
    if ratios:
        md.append("#### Ratios (median throughput of `ocifs pull` ÷ the other client's)\n")
        rows = []
        for r in ratios:
            verdict = ""
            if r["target"] is not None:
                ok = r["value"] >= r["target"] if r["target"] != 1.0 else r["value"] > 1.0
                verdict = "met" if ok else "**missed**"
            target = "" if r["target"] is None else (f"≥ {r['target']:g}" if r["target"] != 1.0 else "> 1")
            rows.append(
                [size_label(r["size"]), r["storage"], r["ocifs"], r["ratio"], f"{r['value']:.2f}", target, verdict]
            )
        md.append(
            markdown_table(["size", "registry", "ocifs pull", "ratio", "value", "target", "verdict"], rows, "llllrll")
        )
        md.append("")
    for network in dict.fromkeys(s.network for s in wan):
        lat = [s for s in wan if s.network == network]
        md.append(f"#### Emulated WAN ({network} per connection), {size_label(lat[0].size)}, one run each\n")
        rows = [
            [s.tool, s.settings, s.mib_per_second, s.seconds, s.max_rss_mib, s.client_cpu_per_gib, _load(s)]
            for s in lat
        ]
        headers = ["client", "settings", "MiB/s", "s", "peak RSS MiB", "client CPU s/GiB", "load (1 min)"]
        md.append(markdown_table(headers, rows, "llrrrrr"))
        md.append("")
        ocifs = next((s for s in lat if s.tool == "ocifs"), None)
        for other in (s for s in lat if s.tool != "ocifs"):
            if ocifs is not None:
                value = ocifs.mib_per_second / other.mib_per_second
                target = TARGET_VS_ORAS if other.tool == "oras-py" else None
                ratios.append(
                    {
                        "size": ocifs.size,
                        "storage": f"tmpfs, {network}",
                        "ocifs": ocifs.settings,
                        "ratio": f"vs {other.tool} {other.settings}",
                        "value": round(value, 2),
                        "target": target,
                    }
                )
                verdict = (
                    "" if target is None else (" (target ≥ 1.5: met)" if value >= target else " (target ≥ 1.5: missed)")
                )
                md.append(f"- ocifs / {other.tool}: **{value:.2f}**{verdict}")
        md.append("")
    if loads:
        md.append(
            f"Load (1-minute average) before the measurements: median {median(loads):.1f},"
            f" range {min(loads):.1f}–{max(loads):.1f}, on 2 cores.\n"
        )
    return {"markdown": "\n".join(md), "ratios": ratios}
