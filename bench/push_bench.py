"""The push suite: ``ocifs push`` against oras-py, skopeo and raw curl, same file, same registry.

For each size (1 GiB and 4 GiB by default) and each registry storage (tmpfs, then disk):

- ``ocifs push`` with default settings;
- oras-py ``OrasClient.push`` (monolithic upload);
- ``skopeo copy`` from an OCI layout holding the file as one layer (``--preserve-digests``:
  the same bytes as every other client, no recompression);
- curl x1: ``POST`` + one monolithic ``PUT -T file`` (one stream);
- curl xN: the file's 16 MiB pieces uploaded by N curl processes in parallel (N = 2, 4, 8, 16),
  the upload sessions opened first by N curl processes (``POST``s in parallel) — the ceiling
  any client can reach into this registry on this machine.

Every measurement starts from an empty registry (restarted on the same port with fresh
storage), so no client can skip a blob a previous one stored. Repetitions interleave the
clients (a, b, c, a, b, c, …) so that a burst of load from elsewhere hits them alike.

Then the ``--jobs`` x ``--chunk-size`` sweep of ``ocifs push`` (tmpfs unless ``--sweep-storage``); and the
WAN-latency comparison through :mod:`latency_proxy` (one run per ``--windows`` value):
ocifs vs curl x1 vs curl x8 and x16.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    GIB,
    MIB,
    BenchRegistry,
    Measurement,
    ProcResult,
    Summary,
    TestFile,
    log,
    make_random_file,
    markdown_table,
    median,
    parse_size,
    process_cpu_seconds,
    run_measured,
    run_parallel,
    size_label,
    split_pieces,
    summarize,
)

SUITE = "push"
PIECE_SIZE = 16 * MIB
DEFAULT_CURL_PARALLEL = (2, 4, 8, 16)
DEFAULT_SWEEP_JOBS = (4, 8, 16)
DEFAULT_SWEEP_CHUNKS = (8 * MIB, 16 * MIB, 32 * MIB, 64 * MIB)
BENCH_DIR = Path(__file__).resolve().parent

# Targets of the push issue (docs/benchmarks.md states each beside its measurement).
TARGET_VS_ORAS = 2.0
TARGET_VS_SKOPEO = 1.5
TARGET_VS_CURL_CEILING = 0.90
TARGET_LATENCY_VS_CURL8 = 0.80
TARGET_LATENCY_VS_CURL1 = 4.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("push suite")
    g.add_argument(
        "--push-tools",
        default="ocifs,ocifs-no-file-digest,oras-py,skopeo,curl",
        help="clients to compare (default ocifs,ocifs-no-file-digest,oras-py,skopeo,curl)",
    )
    g.add_argument(
        "--curl-parallel",
        default=",".join(map(str, DEFAULT_CURL_PARALLEL)),
        help="parallel curl stream counts (default 2,4,8,16)",
    )
    g.add_argument("--sweep-jobs", default=",".join(map(str, DEFAULT_SWEEP_JOBS)), help="--jobs values (4,8,16)")
    g.add_argument("--sweep-chunks", default="8M,16M,32M,64M", help="--chunk-size values (8M,16M,32M,64M)")
    g.add_argument("--sweep-size", type=parse_size, help="file size for the sweep (default: the smallest size)")
    g.add_argument("--sweep-storage", default="tmpfs", help="registry storage(s) for the sweep (default tmpfs)")
    g.add_argument("--no-sweep", action="store_true", help="skip the jobs x chunk-size sweep")
    g.add_argument("--no-latency", action="store_true", help="skip the emulated-WAN comparison")
    g.add_argument("--rtt-ms", type=float, default=40.0, help="emulated round-trip time (default 40)")
    g.add_argument(
        "--windows",
        default="4M,1M",
        help="emulated TCP windows per connection, one latency run each (default 4M,1M)",
    )
    g.add_argument("--latency-size", type=parse_size, help="file size under latency (default: the smallest size)")


# -- the clients ---------------------------------------------------------------------------------


@dataclass
class Target:
    """Where a client pushes: the registry (or a proxy in front of it) and the storage type."""

    registry: BenchRegistry
    host: str  # host:port the client talks to (the registry, or the latency proxy)
    network: str = "loopback"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"


Client = Callable[[Target, TestFile, Path], tuple[ProcResult, dict[str, Any]]]


def _tag() -> str:
    return uuid.uuid4().hex[:12]


def ocifs_client(jobs: int | None = None, chunk_size: int | None = None, file_digest: bool = True) -> Client:
    def push(target: Target, tf: TestFile, work: Path) -> tuple[ProcResult, dict[str, Any]]:
        argv = [sys.executable, "-m", "ocifs", "push", f"{target.host}/bench/ocifs:{_tag()}", str(tf.path)]
        argv += ["--json", "-q"]
        if not file_digest:
            argv += ["--no-file-digest"]
        if jobs is not None:
            argv += ["--jobs", str(jobs)]
        if chunk_size is not None:
            argv += ["--chunk-size", str(chunk_size)]
        result = run_measured(argv).check("ocifs push")
        summary = json.loads(result.stdout)
        if summary["blobs_skipped"] or summary["blobs_mounted"]:
            raise RuntimeError(f"ocifs skipped blobs in a fresh registry: {summary}")
        return result, {
            "ocifs_seconds": summary["seconds"],
            "ocifs_mib_per_second": summary["mib_per_second"],
            "chunk_size": summary["chunk_size"],
            "blobs_uploaded": summary["blobs_uploaded"],
        }

    return push


_ORAS_SCRIPT = """
import sys
import oras.client
host, target, name = sys.argv[1:4]
oras.client.OrasClient(hostname=host, insecure=True).push(target=target, files=[name], quiet=True)
"""


def oras_client(target: Target, tf: TestFile, work: Path) -> tuple[ProcResult, dict[str, Any]]:
    # oras-py refuses paths outside the working directory: run it next to the file.
    argv = [sys.executable, "-c", _ORAS_SCRIPT, target.host, f"{target.host}/bench/oras:{_tag()}", tf.path.name]
    return run_measured(argv, cwd=tf.path.parent).check("oras-py push"), {}


def oci_layout_for(tf: TestFile, directory: Path) -> Path:
    """An OCI image layout with the file as its only layer (hard link, no copy), tag ``bench``."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layer = blobs / tf.digest.split(":", 1)[1]
    if not layer.exists():
        os.link(tf.path, layer)

    def put(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = put(
        json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [tf.digest]}}
        ).encode()
    )
    manifest = put(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": tf.digest,
                        "size": tf.size,
                        "annotations": {"org.opencontainers.image.title": tf.path.name},
                    }
                ],
            }
        ).encode()
    )
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest,
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    return directory


def skopeo_client(target: Target, tf: TestFile, work: Path) -> tuple[ProcResult, dict[str, Any]]:
    layout = work / f"oci-{tf.size}"
    if not (layout / "index.json").exists():
        oci_layout_for(tf, layout)
    argv = [
        "skopeo",
        "copy",
        "--quiet",
        "--preserve-digests",  # upload the same bytes as the other clients (no recompression)
        "--dest-tls-verify=false",
        f"oci:{layout}:bench",
        f"docker://{target.host}/bench/skopeo:{_tag()}",
    ]
    return run_measured(argv).check("skopeo copy"), {}


_CURL_COMMON = ["-s", "-S", "--fail-with-body", "-H", "Expect:"]


def _curl_post_argv(base: str, repository: str, count: int) -> list[str]:
    argv = ["curl", *_CURL_COMMON, "-o", "/dev/null", "-w", "%{http_code} %header{location}\n"]
    for _ in range(count):
        argv += ["-X", "POST", "-H", "Content-Length: 0", f"{base}/v2/{repository}/blobs/uploads/"]
    return argv


def _parse_locations(result: ProcResult, base: str, count: int) -> list[str]:
    urls = []
    for line in result.stdout.splitlines():
        code, _, location = line.partition(" ")
        if code != "202" or not location:
            raise RuntimeError(f"curl POST answered {line!r}")
        location = location.strip()
        urls.append(location if location.startswith("http") else base + location)
    if len(urls) != count:
        raise RuntimeError(f"expected {count} upload sessions, got {len(urls)}: {result.stdout[-500:]}")
    return urls


def _with_digest(url: str, digest: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}digest={digest}"


def _curl_put_argv(uploads: list[tuple[Path, str]], config: Path) -> list[str]:
    """One curl process uploading several files in sequence over one kept-alive connection."""
    lines = []
    for path, url in uploads:
        lines.append(f'upload-file = "{path}"')
        lines.append(f'url = "{url}"')
    config.write_text("\n".join(lines) + "\n")
    return [
        "curl",
        *_CURL_COMMON,
        "-H",
        "Content-Type: application/octet-stream",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        "-K",
        str(config),
    ]


def _check_codes(results: list[ProcResult], expected: int) -> None:
    codes = [line for r in results for line in r.stdout.split()]
    bad = [c for c in codes if c != "201"]
    if bad or len(codes) != expected:
        raise RuntimeError(f"curl PUT: {len(codes)} answers, unexpected {bad[:5]}; stderr {results[0].stderr[-500:]}")


def _combine(seconds: float, results: list[ProcResult], argv: list[str]) -> ProcResult:
    return ProcResult(
        argv=argv,
        returncode=0,
        seconds=seconds,
        max_rss_kib=max(r.max_rss_kib for r in results),
        cpu_seconds=sum(r.cpu_seconds for r in results),
        stdout="",
        stderr="",
    )


def curl_single(target: Target, tf: TestFile, work: Path) -> tuple[ProcResult, dict[str, Any]]:
    """POST, then one PUT of the whole file: a single stream."""
    repository = f"bench/curl1-{_tag()}"
    started = time.monotonic()
    post = run_measured(_curl_post_argv(target.base_url, repository, 1)).check("curl POST")
    (url,) = _parse_locations(post, target.base_url, 1)
    put = run_measured(_curl_put_argv([(tf.path, _with_digest(url, tf.digest))], work / "curl1.cfg"))
    put.check("curl PUT")
    seconds = time.monotonic() - started
    _check_codes([put], 1)
    return _combine(seconds, [post, put], put.argv), {"post_seconds": round(post.seconds, 3)}


def curl_parallel(streams: int) -> Client:
    """The file's 16 MiB pieces over ``streams`` curl processes (pieces dealt round-robin)."""

    def push(target: Target, tf: TestFile, work: Path) -> tuple[ProcResult, dict[str, Any]]:
        if not tf.pieces:
            raise RuntimeError("split_pieces() first")
        repository = f"bench/curl{streams}-{_tag()}"
        lanes = [tf.pieces[k::streams] for k in range(streams)]
        lanes = [lane for lane in lanes if lane]
        started = time.monotonic()
        post_seconds, posts = run_parallel([_curl_post_argv(target.base_url, repository, len(lane)) for lane in lanes])
        uploads = []
        for lane, post in zip(lanes, posts, strict=True):
            post.check("curl POST")
            urls = _parse_locations(post, target.base_url, len(lane))
            uploads.append([(p.path, _with_digest(u, p.digest)) for p, u in zip(lane, urls, strict=True)])
        put_seconds, puts = run_parallel(
            [_curl_put_argv(lane, work / f"curl-lane-{i}.cfg") for i, lane in enumerate(uploads)]
        )
        seconds = time.monotonic() - started
        for put in puts:
            put.check("curl PUT")
        _check_codes(puts, len(tf.pieces))
        return _combine(seconds, posts + puts, puts[0].argv), {
            "post_seconds": round(post_seconds, 3),
            "put_seconds": round(put_seconds, 3),
            "pieces": len(tf.pieces),
            "piece_size": PIECE_SIZE,
        }

    return push


# -- measuring ---------------------------------------------------------------------------------


FAILURES: list[dict[str, Any]] = []


def measure(
    client: Client, tool: str, settings: str, target: Target, tf: TestFile, work: Path, extra_pids: list[int]
) -> list[Measurement]:
    """One measurement (a list of one), or none if the client failed: that is recorded, not fatal."""
    try:
        return [_measure_once(client, tool, settings, target, tf, work, extra_pids)]
    except Exception as exc:  # a failing client is a result too; the other measurements go on
        log(f"  {tool} {settings} FAILED: {exc}")
        FAILURES.append(
            {
                "tool": tool,
                "settings": settings,
                "size": tf.size,
                "storage": target.registry.storage,
                "network": target.network,
                "error": str(exc)[:2000],
            }
        )
        return []


def _measure_once(
    client: Client, tool: str, settings: str, target: Target, tf: TestFile, work: Path, extra_pids: list[int]
) -> Measurement:
    """Empty the registry, run one client, check the bytes arrived, return the figures."""
    target.registry.fresh()
    load = os.getloadavg()[0]  # other work on this 2-core machine skews everything: keep it with the figures
    before_reg = target.registry.cpu_seconds()
    before_extra = sum(process_cpu_seconds(p) for p in extra_pids)
    result, extra = client(target, tf, work)
    registry_cpu = target.registry.cpu_seconds() - before_reg
    if extra_pids:
        extra["proxy_cpu_seconds"] = round(sum(process_cpu_seconds(p) for p in extra_pids) - before_extra, 2)
    extra["load_before"] = round(load, 2)
    stored = target.registry.stored_bytes()
    if stored < tf.size:
        raise RuntimeError(f"{tool} {settings}: registry holds {stored} bytes after pushing {tf.size}")
    m = Measurement(
        suite=SUITE,
        tool=tool,
        settings=settings,
        size=tf.size,
        storage=target.registry.storage,
        seconds=result.seconds,
        max_rss_kib=result.max_rss_kib,
        client_cpu_seconds=result.cpu_seconds,
        registry_cpu_seconds=registry_cpu,
        stored_bytes=stored,
        network=target.network,
        extra=extra,
    )
    log(
        f"  {tool:8} {settings:22} {size_label(tf.size):>8} {m.storage:5} {m.network:16}"
        f" {m.seconds:7.2f} s {m.mib_per_second:7.1f} MiB/s  rss {m.max_rss_kib / 1024:6.0f} MiB"
        f"  cpu {m.client_cpu_seconds:5.1f}+{m.registry_cpu_seconds:5.1f}(reg) s"
    )
    return m


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def compare_clients(
    ctx: Any, tf: TestFile, target: Target, tools: list[str], curl_streams: list[int], repeat: int
) -> list[Measurement]:
    clients: list[tuple[Client, str, str]] = []
    if "ocifs" in tools:
        clients.append((ocifs_client(), "ocifs", "default"))
    if "ocifs-no-file-digest" in tools:
        # Informative: what the second sha256 pass (the recorded whole-file digest) costs.
        clients.append((ocifs_client(file_digest=False), "ocifs", "--no-file-digest"))
    if "oras-py" in tools:
        clients.append((oras_client, "oras-py", "default"))
    if "skopeo" in tools:
        clients.append((skopeo_client, "skopeo", "--preserve-digests"))
    if "curl" in tools:
        clients.append((curl_single, "curl x1", "monolithic PUT"))
        for n in curl_streams:
            clients.append((curl_parallel(n), f"curl x{n}", "16 MiB pieces"))
    out = []
    for rep in range(repeat):
        log(f"{size_label(tf.size)} on {target.registry.storage}, {target.network}: repetition {rep + 1}/{repeat}")
        for client, tool, settings in clients:
            out += measure(client, tool, settings, target, tf, ctx.work_dir, [])
    return out


def sweep(ctx: Any, tf: TestFile, target: Target, jobs: list[int], chunks: list[int], repeat: int) -> list[Measurement]:
    out = []
    for rep in range(repeat):
        log(f"sweep {size_label(tf.size)}: repetition {rep + 1}/{repeat}")
        for j in jobs:
            for c in chunks:
                out += measure(ocifs_client(j, c), "ocifs", f"jobs={j} chunk={c // MIB}M", target, tf, ctx.work_dir, [])
    return out


def latency(ctx: Any, tf: TestFile, registry: BenchRegistry, window: int, repeat: int) -> list[Measurement]:
    """ocifs vs curl x1 vs curl x8 (and x16) through the delaying proxy."""
    argv = [
        sys.executable,
        str(BENCH_DIR / "latency_proxy.py"),
        "--target",
        registry.host,
        "--rtt-ms",
        str(ctx.rtt_ms),
        "--window",
        str(window),
    ]
    proxy = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None
        line = proxy.stdout.readline().split()
        if len(line) != 2 or line[0] != "LISTENING":
            raise RuntimeError(f"latency proxy did not start: {line}")
        network = f"{ctx.rtt_ms:g} ms RTT, {window // MIB} MiB window"
        target = Target(registry, line[1], network)
        clients: list[tuple[Client, str, str]] = [
            (ocifs_client(), "ocifs", "default"),
            (ocifs_client(jobs=16), "ocifs", "jobs=16"),
            (curl_single, "curl x1", "monolithic PUT"),
            (curl_parallel(8), "curl x8", "16 MiB pieces"),
            (curl_parallel(16), "curl x16", "16 MiB pieces"),
        ]
        out = []
        for rep in range(repeat):
            log(f"latency {network}: repetition {rep + 1}/{repeat}")
            for client, tool, settings in clients:
                out += measure(client, tool, settings, target, tf, ctx.work_dir, [proxy.pid])
        return out
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)


# -- the suite ---------------------------------------------------------------------------------


def run(ctx: Any) -> dict[str, Any]:
    tools = _csv(ctx.push_tools)
    curl_streams = [int(n) for n in _csv(ctx.curl_parallel)]
    sweep_jobs = [int(n) for n in _csv(ctx.sweep_jobs)]
    sweep_chunks = [parse_size(c) for c in _csv(ctx.sweep_chunks)]
    sweep_size = ctx.sweep_size or min(ctx.sizes)
    latency_size = ctx.latency_size or min(ctx.sizes)
    sizes = sorted(set(ctx.sizes) | ({sweep_size} if not ctx.no_sweep else set()))
    if not ctx.no_latency:
        sizes = sorted(set(sizes) | {latency_size})
    measurements: list[Measurement] = []
    registries = {s: BenchRegistry(ctx.work_dir / f"registry-{s}", s) for s in ctx.storages}
    try:
        for r in registries.values():
            r.server.start()
        for size in sizes:
            path = ctx.work_dir / f"random-{size}.bin"
            log(f"generating {size_label(size)} of random data in {path}")
            tf = make_random_file(path, size)
            try:
                if "curl" in tools or not ctx.no_latency:
                    split_pieces(tf, PIECE_SIZE, ctx.work_dir / f"pieces-{size}")
                if size in ctx.sizes:
                    for registry in registries.values():
                        target = Target(registry, registry.host)
                        measurements += compare_clients(ctx, tf, target, tools, curl_streams, ctx.repeat_for(size))
                if size == sweep_size and not ctx.no_sweep:
                    for storage in _csv(ctx.sweep_storage):
                        if storage in registries:
                            target = Target(registries[storage], registries[storage].host)
                            measurements += sweep(ctx, tf, target, sweep_jobs, sweep_chunks, ctx.repeat_for(size))
                if size == latency_size and not ctx.no_latency:
                    registry = registries.get("tmpfs") or next(iter(registries.values()))
                    for window in [parse_size(w) for w in _csv(ctx.windows)]:
                        measurements += latency(ctx, tf, registry, window, ctx.repeat_for(size))
            finally:
                tf.remove()
                shutil.rmtree(ctx.work_dir / f"oci-{size}", ignore_errors=True)
                shutil.rmtree(ctx.work_dir / f"pieces-{size}", ignore_errors=True)
    finally:
        for r in registries.values():
            r.close()
    summaries = summarize(measurements)
    report = render(summaries, ctx)
    if FAILURES:
        report["markdown"] += "\n#### Failed runs\n\n" + "\n".join(
            f"- {f['tool']} {f['settings']}, {size_label(f['size'])}, {f['storage']}, {f['network']}:"
            f" {f['error'].splitlines()[0][:300]}"
            for f in FAILURES
        )
    return {
        "suite": SUITE,
        "measurements": [m.to_json() for m in measurements],
        "summaries": [s.to_json() for s in summaries],
        "ratios": report["ratios"],
        "chosen": report["chosen"],
        "failures": FAILURES,
        "markdown": report["markdown"],
    }


# -- the report --------------------------------------------------------------------------------


def _find(summaries: list[Summary], **kw: Any) -> Summary | None:
    for s in summaries:
        if all(getattr(s, k) == v for k, v in kw.items()):
            return s
    return None


def _best_curl(summaries: list[Summary], size: int, storage: str, network: str = "loopback") -> Summary | None:
    candidates = [
        s
        for s in summaries
        if s.tool.startswith("curl x")
        and s.tool != "curl x1"
        and s.size == size
        and s.storage == storage
        and s.network == network
    ]
    return max(candidates, key=lambda s: s.mib_per_second, default=None)


def _sweep_point(s: Summary) -> tuple[int, int]:
    """(jobs, chunk MiB) of a sweep entry labelled "jobs=J chunk=CM"."""
    jobs, chunk = (part.split("=")[1] for part in s.settings.split())
    return int(jobs), int(chunk.rstrip("M"))


def _verdict(ratio: float, target: float) -> str:
    if ratio != ratio:
        return "–"
    return "met" if ratio >= target else "**missed**"


def render(summaries: list[Summary], ctx: Any) -> dict[str, Any]:
    md: list[str] = []
    ratios: list[dict[str, Any]] = []
    loopback = [s for s in summaries if s.network == "loopback" and not s.settings.startswith("jobs=")]
    storages = [s for s in ("tmpfs", "disk") if any(x.storage == s for x in loopback)]
    for size in sorted({s.size for s in loopback}):
        md.append(f"#### {size_label(size)}\n")
        tools = []
        for s in loopback:
            if s.size == size and (s.tool, s.settings) not in tools:
                tools.append((s.tool, s.settings))
        headers = ["client", "settings"]
        for st in storages:
            headers += [f"{st} MiB/s", f"{st} s"]
        headers += ["peak RSS MiB", "client CPU s/GiB", "registry CPU s/GiB"]
        rows = []
        for tool, settings in tools:
            row: list[Any] = [tool, settings]
            ref = None
            for st in storages:
                s = _find(loopback, tool=tool, settings=settings, size=size, storage=st)
                row += [s.mib_per_second if s else float("nan"), s.seconds if s else float("nan")]
                ref = ref or s
            assert ref is not None
            tmpfs_s = _find(loopback, tool=tool, settings=settings, size=size, storage=storages[0]) or ref
            row += [ref.max_rss_mib, tmpfs_s.client_cpu_per_gib, tmpfs_s.registry_cpu_per_gib]
            rows.append(row)
        md.append(markdown_table(headers, rows, "ll" + "r" * (len(headers) - 2)))
        md.append("")
        for st in storages:
            ocifs = _find(loopback, tool="ocifs", settings="default", size=size, storage=st)
            if ocifs is None:
                continue
            for name, other, target in (
                ("ocifs / oras-py", _find(loopback, tool="oras-py", size=size, storage=st), TARGET_VS_ORAS),
                ("ocifs / skopeo", _find(loopback, tool="skopeo", size=size, storage=st), TARGET_VS_SKOPEO),
                ("ocifs / best parallel curl", _best_curl(loopback, size, st), TARGET_VS_CURL_CEILING),
                ("ocifs / curl x1", _find(loopback, tool="curl x1", size=size, storage=st), None),
            ):
                if other is None:
                    continue
                r = ocifs.mib_per_second / other.mib_per_second
                ratios.append(
                    {
                        "size": size,
                        "storage": st,
                        "network": "loopback",
                        "ratio": name,
                        "versus": f"{other.tool} ({other.settings})",
                        "value": round(r, 2),
                        "target": target,
                    }
                )
    if ratios:
        md.append("#### Ratios (median throughput of ocifs push, default settings)\n")
        md.append(
            markdown_table(
                ["size", "storage", "ratio", "versus", "value", "target", "verdict"],
                [
                    [
                        size_label(r["size"]),
                        r["storage"],
                        r["ratio"],
                        r["versus"],
                        f"{r['value']:.2f}",
                        f"≥ {r['target']:g}" if r["target"] else "",
                        _verdict(r["value"], r["target"]) if r["target"] else "",
                    ]
                    for r in ratios
                ],
                "lllllrl",
            )
        )
        md.append("")

    chosen: dict[str, Any] = {}
    sweep_all = [
        s for s in summaries if s.settings.startswith("jobs=") and s.tool == "ocifs" and s.network == "loopback"
    ]
    for storage in dict.fromkeys(s.storage for s in sweep_all):
        sweep_rows = [s for s in sweep_all if s.storage == storage]
        size = sweep_rows[0].size
        jobs = sorted({_sweep_point(s)[0] for s in sweep_rows})
        chunks = sorted({_sweep_point(s)[1] for s in sweep_rows})
        for title, value in (
            ("median MiB/s", lambda s: s.mib_per_second),
            ("client CPU s/GiB", lambda s: s.client_cpu_per_gib),
            ("peak RSS MiB", lambda s: s.max_rss_mib),
        ):
            md.append(f"#### Sweep: `ocifs push --jobs J --chunk-size C`, {size_label(size)}, {storage}: {title}\n")
            rows = []
            for c in chunks:
                row: list[Any] = [f"{c} MiB"]
                for j in jobs:
                    found = _find(sweep_rows, settings=f"jobs={j} chunk={c}M")
                    row.append(value(found) if found else float("nan"))
                rows.append(row)
            md.append(markdown_table(["chunk \\ jobs", *map(str, jobs)], rows))
            md.append("")
        best = max(sweep_rows, key=lambda s: s.mib_per_second)
        # Prefer the smallest chunk (lazy reads fetch less) within 5 % of the best; then fewer jobs.
        good = [s for s in sweep_rows if s.mib_per_second >= 0.95 * best.mib_per_second]
        pick = min(good, key=lambda s: (_sweep_point(s)[1], _sweep_point(s)[0]))
        chosen[storage] = {
            "best": best.settings,
            "best_mib_per_second": round(best.mib_per_second, 1),
            "smallest_chunk_within_5pct": pick.settings,
            "smallest_chunk_within_5pct_mib_per_second": round(pick.mib_per_second, 1),
        }
        md.append(
            f"Best ({storage}): {best.settings} at {best.mib_per_second:.0f} MiB/s; smallest chunk within 5 % of it:"
            f" {pick.settings} at {pick.mib_per_second:.0f} MiB/s.\n"
        )

    for network in dict.fromkeys(s.network for s in summaries if s.network != "loopback"):
        lat = [s for s in summaries if s.network == network]
        size = lat[0].size
        md.append(f"#### Emulated WAN: {network} per connection, {size_label(size)}, tmpfs\n")
        rows = []
        for s in lat:
            proxy_cpu = median([m.extra.get("proxy_cpu_seconds", 0.0) for m in s.runs]) / (s.size / GIB)
            rows.append(
                [
                    s.tool,
                    s.settings,
                    s.mib_per_second,
                    s.seconds,
                    s.spread,
                    s.max_rss_mib,
                    s.client_cpu_per_gib,
                    s.registry_cpu_per_gib,
                    proxy_cpu,
                ]
            )
        headers = ["client", "settings", "MiB/s", "s", "range MiB/s", "peak RSS MiB"]
        headers += ["client CPU s/GiB", "registry CPU s/GiB", "proxy CPU s/GiB"]
        md.append(markdown_table(headers, rows, "ll" + "r" * 7))
        md.append("")
        ocifs = _find(lat, tool="ocifs", settings="default")
        c8 = _find(lat, tool="curl x8")
        c1 = _find(lat, tool="curl x1")
        if ocifs and c8 and c1:
            for name, other, target in (
                ("ocifs / curl x8", c8, TARGET_LATENCY_VS_CURL8),
                ("ocifs / curl x1", c1, TARGET_LATENCY_VS_CURL1),
            ):
                r = ocifs.mib_per_second / other.mib_per_second
                ratios.append(
                    {
                        "size": size,
                        "storage": "tmpfs",
                        "network": network,
                        "ratio": name,
                        "versus": f"{other.tool} ({other.settings})",
                        "value": round(r, 2),
                        "target": target,
                    }
                )
                md.append(f"- {name}: **{r:.2f}** (target ≥ {target:g}: {_verdict(r, target)})")
            md.append("")
    return {"markdown": "\n".join(md), "ratios": ratios, "chosen": chosen}
