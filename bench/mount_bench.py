"""The mount suite: reading an ocifs mount against curl, pull-then-read, rclone mount and local disk.

Same registry set-up and the same pushed artifacts as the pull suite (``pull_bench.shared_setup``:
``docker-registry`` on tmpfs, one safetensors file of random float32 tensors per size, pushed
once with ``ocifs push`` defaults, 16 MiB chunks). For each size, interleaved per repetition:

- **curl**: one curl process GETting every chunk blob in file order (``-K``) to /dev/null — the
  raw HTTP ceiling for the same bytes from the same registry;
- **cold read**: a fresh cache directory (under ``--cache-parent``) and a fresh mount
  (``ocifs mount REF MP --cache-dir C``, detached), then ``dd if=MP/FILE of=/dev/null bs=1M``;
  then ``dd`` again on the same mount (**page-cache re-read**); then unmount, remount with the
  same cache and ``dd`` (**warm**, the cache files as the cold read left them, i.e. in the page
  cache), and once more after evicting the cache files from the page cache
  (``posix_fadvise(DONTNEED)`` on each entry: **warm, cache on disk**);
- the cold read again with the cache on ``/dev/shm`` (sizes up to ``--shm-cache-max``), and
  with ``--prefetch whole``;
- **pull then read**: ``ocifs pull`` with a fresh cache, then ``dd`` of the pulled file;
- **local file**: ``dd`` of the test file itself, evicted from the page cache, then cached;
- **FUSE ceiling**: ``dd`` of the same file, read once beforehand so it is in the page cache,
  through ``bench/passthrough_fs.py`` (a minimal read-only pyfuse3 filesystem on trio, one
  ``os.pread`` per read request, ocifs's mount options and kernel tuning): what any Python FUSE
  filesystem can do on this machine (``--no-passthrough`` skips it);
- **rclone mount** (the peer FUSE client) of the same file served over loopback HTTP by a small
  static server (Python, ``sendfile``, Range support), ``--vfs-cache-mode off`` and ``full``
  (rclone's own defaults otherwise), plus curl from that server;
- **time to first byte**: from the return of the mount command (``ocifs mount``, ``rclone mount
  --daemon``) to the first 4 KiB read of the file;
- **lazy load**: ``safetensors.safe_open(MP/FILE).get_tensor(<middle tensor>)`` through a fresh
  mount and cache, ``--prefetch auto`` and ``off``; the bytes the daemon downloaded
  (``user.ocifs.stats`` → ``fetch.bytes_downloaded``) against the bytes of a full pull.

With ``--attribution N``: N interleaved cold reads of the smallest size through diagnostic daemons,
each with one cost removed by a monkeypatch (cache write, chunk sha256) or with glibc's mmap
threshold fixed; with ``--mount-profile``: one cold read under py-spy and one under perf.

Daemon figures: CPU seconds from ``/proc/PID/stat`` around each read, peak RSS from ``VmHWM`` of
``/proc/PID/status`` just before unmounting; the pid is found in the process list (the detached
daemon keeps the ``ocifs mount … MP`` command line). Every mount is detached with
``fusermount3 -u -z`` in a ``finally``; caches and outputs are deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    MIB,
    RESULTS_DIR,
    Measurement,
    ProcResult,
    Summary,
    log,
    markdown_table,
    median,
    process_cpu_seconds,
    run_measured,
    size_label,
    summarize,
)
from pull_bench import (
    Artifact,
    attribution_table,
    code_state,
    curl_get,
    evict_from_page_cache,
    files_under,
    fresh_dir,
    load1,
    ocifs_command,
    ocifs_pull_argv,
    perf_summary,
    release_setup,
    remove,
    shared_setup,
    sync_and_settle,
    top_frames,
)

SUITE = "mount"
PY = [sys.executable, "-m", "ocifs"]
PASSTHROUGH = Path(__file__).resolve().parent / "passthrough_fs.py"

TARGET_COLD_VS_CURL = 0.70
TARGET_MOUNT_VS_PULL_READ = 1.10  # mount read time ≤ 1.1 × (pull + read) time
TARGET_LAZY_FRACTION = 0.05
TARGET_WARM_VS_LOCAL = 0.50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("mount suite")
    g.add_argument("--no-rclone", action="store_true", help="skip the rclone mount comparison")
    g.add_argument(
        "--no-passthrough",
        action="store_true",
        help="skip the FUSE ceiling (bench/passthrough_fs.py: a minimal pyfuse3 passthrough of the page-cached file)",
    )
    g.add_argument(
        "--mount-profile",
        action="store_true",
        help="after the measurements, one extra cold read of the smallest size under py-spy and one under perf",
    )


# =================================================================================================
# Processes and mounts
# =================================================================================================


def find_pid(mountpoint: Path, program: str) -> int:
    """The pid of the live process whose command line names ``program``, ``mount`` and ``mountpoint``."""
    want = str(mountpoint)
    for _ in range(50):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            words = [a.decode(errors="replace") for a in argv]
            if state != "Z" and want in words and "mount" in words and any(program in w for w in words[:3]):
                return int(entry)
        time.sleep(0.05)
    raise RuntimeError(f"no {program} process found for {mountpoint}")


def status_kib(pid: int, field_name: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def unmount(mountpoint: Path, pid: int | None) -> None:
    """Detach the mount (lazily) and make sure the process we started is gone."""
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)
    if pid is None:
        return
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive(pid):
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        time.sleep(1)


@dataclass
class Mounted:
    pid: int
    mountpoint: Path
    file: Path
    mount: ProcResult

    def cpu(self) -> float:
        return process_cpu_seconds(self.pid)

    def hwm_kib(self) -> int:
        return status_kib(self.pid, "VmHWM")

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(os.getxattr(self.mountpoint, "user.ocifs.stats"))
        return data


@contextlib.contextmanager
def ocifs_mounted(art: Artifact, work: Path, cache: Path, *flags: str, variant: str = "as is") -> Iterator[Mounted]:
    mountpoint = fresh_dir(work, "mnt")
    pid = None
    try:
        command, env = ocifs_command(variant)
        argv = [*command, "mount", art.ref, str(mountpoint), "--cache-dir", str(cache), *flags]
        result = run_measured(argv, env=env, timeout=60).check("ocifs mount")
        pid = find_pid(mountpoint, "ocifs")
        yield Mounted(pid, mountpoint, mountpoint / art.name, result)
    finally:
        unmount(mountpoint, pid)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


@contextlib.contextmanager
def rclone_mounted(url: str, name: str, work: Path, mode: str, cache_parent: str) -> Iterator[Mounted]:
    mountpoint = fresh_dir(work, "rclone-mnt")
    cache = fresh_dir(cache_parent, "rclone-bench-cache")
    config = work / "rclone-empty.conf"
    config.touch()
    pid = None
    try:
        argv = ["rclone", "mount", ":http:", str(mountpoint), "--http-url", url, "--read-only"]
        argv += ["--vfs-cache-mode", mode, "--cache-dir", str(cache), "--config", str(config), "--daemon"]
        result = run_measured(argv, timeout=60).check("rclone mount")
        pid = find_pid(mountpoint, "rclone")
        deadline = time.monotonic() + 10
        while not mounted(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.02)
        yield Mounted(pid, mountpoint, mountpoint / name, result)
    finally:
        unmount(mountpoint, pid)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
        remove(cache)


@contextlib.contextmanager
def passthrough_mounted(source: Path, work: Path) -> Iterator[Mounted]:
    """``bench/passthrough_fs.py`` (foreground, started here: its pid is known) serving ``source``,
    hard-linked alone into a fresh directory; stopped with SIGTERM (it unmounts and exits 0)."""
    source_dir = fresh_dir(work, "passthrough-src")
    mountpoint = fresh_dir(work, "passthrough-mnt")
    proc = None
    try:
        os.link(source, source_dir / source.name)
        argv = [sys.executable, str(PASSTHROUGH), str(source_dir), str(mountpoint)]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"passthrough_fs.py did not start (exit {proc.poll()}, said {line!r})")
        result = ProcResult(argv, 0, time.monotonic() - started, 0, 0.0, line, "")
        yield Mounted(proc.pid, mountpoint, mountpoint / source.name, result)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if mounted(mountpoint):
            unmount(mountpoint, None)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
        remove(source_dir)


def resident_bytes(path: Path) -> int | None:
    """Bytes of ``path`` in the page cache (fincore), None if it cannot tell."""
    proc = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(path)], capture_output=True, text=True, check=False)
    try:
        return int(proc.stdout.split()[0])
    except (IndexError, ValueError):
        return None


_STATIC_SERVER = r"""
import email.utils, html, http.server, os, re, sys, urllib.parse
root = sys.argv[1]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.serve(False)

    def do_GET(self):
        self.serve(True)

    def serve(self, body):
        path = urllib.parse.unquote(self.path.split("?", 1)[0])
        if path == "/":
            links = "".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a>\n' for n in sorted(os.listdir(root)))
            page = f"<html><body>\n{links}</body></html>\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            if body:
                self.wfile.write(page)
            return
        try:
            fd = os.open(os.path.join(root, os.path.basename(path)), os.O_RDONLY)
        except OSError:
            self.send_error(404)
            return
        try:
            st = os.fstat(fd)
            size, start, end = st.st_size, 0, st.st_size
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", (self.headers.get("Range") or "").strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                else:
                    start = max(0, size - int(m.group(2)))
                if start >= end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            self.end_headers()
            offset = start
            while body and offset < end:
                sent = os.sendfile(self.connection.fileno(), fd, offset, min(end - offset, 1 << 24))
                if not sent:
                    break
                offset += sent
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            os.close(fd)

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print("LISTENING", server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[tuple[str, int]]:
    """A loopback HTTP server for ``directory`` (Range, HEAD, an HTML index): (base URL, pid)."""
    proc = subprocess.Popen([sys.executable, "-c", _STATIC_SERVER, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "LISTENING":
            raise RuntimeError(f"static server did not start: {line}")
        yield f"http://127.0.0.1:{line[1]}/", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def dd(path: Path) -> ProcResult:
    return run_measured(["dd", f"if={path}", "of=/dev/null", "bs=1M"]).check(f"dd {path}")


def first_read(path: Path) -> float:
    """Seconds to open ``path`` and read its first 4 KiB (in this process: the daemon is another one)."""
    started = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if len(data) != 4096:
        raise RuntimeError(f"first read of {path}: {len(data)} bytes")
    return time.monotonic() - started


_SAFETENSORS_LOAD = """
import json, sys, time
started = time.monotonic()
from safetensors import safe_open
with safe_open(sys.argv[1], framework="numpy") as f:
    names = list(f.keys())
    tensor = f.get_tensor(sys.argv[2])
print(json.dumps({"seconds": time.monotonic() - started, "tensors": len(names), "bytes": tensor.nbytes}))
"""


# =================================================================================================
# The scenarios (each returns measurements; they share one registry and one artifact)
# =================================================================================================


class Bench:
    def __init__(self, ctx: Any, art: Artifact, static_url: str | None, static_pid: int | None) -> None:
        self.ctx = ctx
        self.art = art
        self.static_url = static_url
        self.static_pid = static_pid
        self.registry = art.registry
        self.out: list[Measurement] = []
        self.full_pull_bytes: int | None = None

    # -- bookkeeping

    def record(
        self,
        tool: str,
        settings: str,
        seconds: float,
        *,
        rss_kib: int = 0,
        cpu: float = 0.0,
        server_cpu: float = 0.0,
        load: float,
        **extra: Any,
    ) -> Measurement:
        m = Measurement(
            suite=SUITE,
            tool=tool,
            settings=settings,
            size=self.art.size,
            storage=self.art.storage,
            seconds=seconds,
            max_rss_kib=rss_kib,
            client_cpu_seconds=cpu,
            registry_cpu_seconds=server_cpu,
            extra={"load1": load, **extra},
        )
        self.out.append(m)
        log(
            f"  {tool:13} {settings:40} {size_label(m.size):>7} {seconds:7.3f} s {m.mib_per_second:7.0f} MiB/s"
            f"  rss {rss_kib / 1024:5.0f} MiB  cpu {cpu:5.2f} s  load {load:.1f}"
        )
        return m

    def before(self) -> float:
        sync_and_settle()
        return load1()

    def server_cpu(self) -> float:
        return self.registry.cpu_seconds()

    # -- scenarios

    def curl_registry(self) -> None:
        load = self.before()
        reg = self.server_cpu()
        res = curl_get(self.art, self.ctx.work_dir, None)
        self.record(
            "curl",
            "registry chunk blobs, 1 process → /dev/null",
            res.seconds,
            rss_kib=res.max_rss_kib,
            cpu=res.cpu_seconds,
            server_cpu=self.server_cpu() - reg,
            load=load,
        )

    def cold_warm(self) -> None:
        """Cold read, page-cache re-read, warm remount, warm remount with the cache evicted."""
        cache = fresh_dir(self.ctx.cache_parent, "ocifs-bench-cache")
        try:
            with ocifs_mounted(self.art, self.ctx.work_dir, cache) as m:
                self._read(m, "ocifs mount", "cold, prefetch auto", cold=True)
                self._read(m, "ocifs mount", "page-cache re-read (same mount)")
            with ocifs_mounted(self.art, self.ctx.work_dir, cache) as m:
                self._read(m, "ocifs mount", "warm: remount, cache in page cache")
            evict_from_page_cache(files_under(cache))
            with ocifs_mounted(self.art, self.ctx.work_dir, cache) as m:
                self._read(m, "ocifs mount", "warm: remount, cache evicted (disk)")
        finally:
            remove(cache)

    def cold_shm(self) -> None:
        """The cold read with the chunk cache in RAM (/dev/shm): what the cache's disk writes cost."""
        if self.art.size > self.ctx.shm_cache_max:
            return
        cache = fresh_dir("/dev/shm", "ocifs-bench-cache")
        try:
            with ocifs_mounted(self.art, self.ctx.work_dir, cache) as m:
                self._read(m, "ocifs mount", "cold, prefetch auto, cache on /dev/shm", cold=True)
        finally:
            remove(cache)

    def cold_whole(self) -> None:
        cache = fresh_dir(self.ctx.cache_parent, "ocifs-bench-cache")
        try:
            with ocifs_mounted(self.art, self.ctx.work_dir, cache, "--prefetch", "whole") as m:
                self._read(m, "ocifs mount", "cold, --prefetch whole", cold=True)
        finally:
            remove(cache)

    def _read(self, m: Mounted, tool: str, settings: str, cold: bool = False) -> None:
        load = self.before()
        cpu, reg = m.cpu(), self.server_cpu()
        before = m.stats()["fetch"]
        res = dd(m.file)
        cpu_used = m.cpu() - cpu + res.cpu_seconds
        after = m.stats()
        fetch = after["fetch"]
        downloaded = fetch["bytes_downloaded"] - before["bytes_downloaded"]
        if cold and downloaded < self.art.size:
            raise RuntimeError(f"cold read downloaded only {downloaded} bytes")
        self.record(
            tool,
            settings,
            res.seconds,
            rss_kib=m.hwm_kib(),
            cpu=cpu_used,
            server_cpu=self.server_cpu() - reg,
            load=load,
            mount_seconds=round(m.mount.seconds, 3),
            bytes_downloaded=downloaded,
            downloads=fetch["downloads"] - before["downloads"],
            peak_in_flight=fetch["peak_in_flight"],
            fuse_reads=after["fs"]["reads"],
            prefetch=after.get("prefetch"),
        )

    def pull_then_read(self) -> None:
        cache = fresh_dir(self.ctx.cache_parent, "ocifs-bench-cache")
        out = fresh_dir(self.ctx.work_dir, "pull-out")
        try:
            load = self.before()
            reg = self.server_cpu()
            pulled = run_measured(ocifs_pull_argv(self.art, out, cache)).check("ocifs pull")
            summary = json.loads(pulled.stdout)
            self.full_pull_bytes = summary["bytes_downloaded"]
            read = dd(out / self.art.name)
            self.record(
                "ocifs pull + dd",
                "cold cache; pull, then read the file",
                pulled.seconds + read.seconds,
                rss_kib=pulled.max_rss_kib,
                cpu=pulled.cpu_seconds + read.cpu_seconds,
                server_cpu=self.server_cpu() - reg,
                load=load,
                pull_seconds=round(pulled.seconds, 3),
                read_seconds=round(read.seconds, 3),
                bytes_downloaded=summary["bytes_downloaded"],
            )
        finally:
            remove(out, cache)

    def local(self) -> None:
        path = self.art.data.path
        evict_from_page_cache([path])
        load = self.before()
        res = dd(path)
        self.record("local file", "evicted from page cache (disk)", res.seconds, cpu=res.cpu_seconds, load=load)
        load = self.before()
        res = dd(path)
        self.record("local file", "page cache", res.seconds, cpu=res.cpu_seconds, load=load)

    def passthrough(self) -> None:
        """The FUSE ceiling: the page-cached test file through a minimal pyfuse3 passthrough."""
        path = self.art.data.path
        subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, check=True)
        with passthrough_mounted(path, self.ctx.work_dir) as m:
            load = self.before()
            resident = resident_bytes(path)
            cpu = m.cpu()
            res = dd(m.file)
            daemon_cpu = m.cpu() - cpu
            self.record(
                "pyfuse3 passthrough",
                "local file in page cache (FUSE ceiling)",
                res.seconds,
                rss_kib=m.hwm_kib(),
                cpu=daemon_cpu + res.cpu_seconds,
                load=load,
                mount_seconds=round(m.mount.seconds, 3),
                daemon_cpu_seconds=round(daemon_cpu, 3),
                source_resident_bytes=resident,
            )

    def rclone(self) -> None:
        assert self.static_url is not None and self.static_pid is not None
        load = self.before()
        srv = process_cpu_seconds(self.static_pid)
        res = run_measured(
            ["sh", "-c", 'exec curl -s -S --fail "$1" > /dev/null', "sh", self.static_url + self.art.name]
        ).check("curl static")
        self.record(
            "curl",
            "static server, 1 GET → /dev/null",
            res.seconds,
            rss_kib=res.max_rss_kib,
            cpu=res.cpu_seconds,
            server_cpu=process_cpu_seconds(self.static_pid) - srv,
            load=load,
        )
        for mode in ("off", "full"):
            with rclone_mounted(self.static_url, self.art.name, self.ctx.work_dir, mode, self.ctx.cache_parent) as m:
                load = self.before()
                cpu, srv = m.cpu(), process_cpu_seconds(self.static_pid)
                res = dd(m.file)
                self.record(
                    "rclone mount",
                    f"cold, --vfs-cache-mode {mode}",
                    res.seconds,
                    rss_kib=m.hwm_kib(),
                    cpu=m.cpu() - cpu + res.cpu_seconds,
                    server_cpu=process_cpu_seconds(self.static_pid) - srv,
                    load=load,
                    mount_seconds=round(m.mount.seconds, 3),
                )

    def ttfb(self) -> None:
        cache = fresh_dir(self.ctx.cache_parent, "ocifs-bench-cache")
        try:
            load = self.before()
            with ocifs_mounted(self.art, self.ctx.work_dir, cache) as m:
                seconds = first_read(m.file)
                fetch = m.stats()["fetch"]
                self.record(
                    "first 4 KiB",
                    "ocifs mount (fresh cache)",
                    seconds,
                    rss_kib=m.hwm_kib(),
                    load=load,
                    mount_seconds=round(m.mount.seconds, 3),
                    bytes_downloaded=fetch["bytes_downloaded"],
                )
        finally:
            remove(cache)
        if self.static_url is not None:
            load = self.before()
            with rclone_mounted(self.static_url, self.art.name, self.ctx.work_dir, "off", self.ctx.cache_parent) as m:
                seconds = first_read(m.file)
                self.record(
                    "first 4 KiB",
                    "rclone mount --vfs-cache-mode off",
                    seconds,
                    rss_kib=m.hwm_kib(),
                    load=load,
                    mount_seconds=round(m.mount.seconds, 3),
                )

    def safetensors(self, prefetch: str) -> None:
        tensors = self.art.data.tensors
        name = tensors[len(tensors) // 2]
        cache = fresh_dir(self.ctx.cache_parent, "ocifs-bench-cache")
        try:
            with ocifs_mounted(self.art, self.ctx.work_dir, cache, "--prefetch", prefetch) as m:
                load = self.before()
                cpu = m.cpu()
                res = run_measured([sys.executable, "-c", _SAFETENSORS_LOAD, str(m.file), name]).check("safetensors")
                loaded = json.loads(res.stdout)
                time.sleep(0.5)  # let read-ahead started by the load finish, so it is counted
                stats = m.stats()
                fetch = stats["fetch"]
                full = self.full_pull_bytes or self.art.size
                self.record(
                    "safetensors",
                    f"one tensor via the mount, prefetch {prefetch}",
                    loaded["seconds"],
                    rss_kib=m.hwm_kib(),
                    cpu=m.cpu() - cpu,
                    load=load,
                    tensor=name,
                    tensor_bytes=loaded["bytes"],
                    process_seconds=round(res.seconds, 3),
                    bytes_downloaded=fetch["bytes_downloaded"],
                    downloads=fetch["downloads"],
                    full_pull_bytes=full,
                    fraction_of_full_pull=round(fetch["bytes_downloaded"] / full, 4),
                    fuse_reads=stats["fs"]["reads"],
                )
        finally:
            remove(cache)


# =================================================================================================
# Profiles (diagnostics, not part of the tables)
# =================================================================================================


MOUNT_VARIANTS = (
    "as is",
    "no cache write",
    "no chunk sha256",
    "no cache write + no chunk sha256",
    "MALLOC_MMAP_THRESHOLD_=1M",
)


def mount_attribution(ctx: Any, art: Artifact, repeat: int) -> list[dict[str, Any]]:
    """Cold reads (fresh cache on --cache-parent) through daemons with one cost removed."""
    rows = []
    for rep in range(repeat):
        log(f"attribution, cold read of {size_label(art.size)}: repetition {rep + 1}/{repeat}")
        for variant in MOUNT_VARIANTS:
            cache = fresh_dir(ctx.cache_parent, "ocifs-bench-cache")
            try:
                with ocifs_mounted(art, ctx.work_dir, cache, variant=variant) as m:
                    sync_and_settle()
                    load = load1()
                    cpu = m.cpu()
                    res = dd(m.file)
                    cpu = m.cpu() - cpu
                    rows.append(
                        {
                            "variant": variant,
                            "size": art.size,
                            "mib_per_second": round(art.size / MIB / res.seconds, 1),
                            "cpu_s_per_gib": round(cpu / (art.size / (1 << 30)), 2),
                            "rss_mib": round(m.hwm_kib() / 1024, 1),
                            "load1": load,
                        }
                    )
                    log(
                        f"  {variant:40} {rows[-1]['mib_per_second']:6.0f} MiB/s  cpu {rows[-1]['cpu_s_per_gib']} s/GiB"
                    )
            finally:
                remove(cache)
    return rows


def profile(ctx: Any, art: Artifact) -> dict[str, Any]:
    """One cold read under py-spy (sampling the daemon's Python stacks), one under perf (by thread and library)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {}
    pyspy = str(Path(sys.executable).parent / "py-spy")
    cache = fresh_dir(ctx.cache_parent, "ocifs-bench-cache")
    try:
        with ocifs_mounted(art, ctx.work_dir, cache) as m:
            raw = RESULTS_DIR / f"{stamp}-mount-pyspy-{art.size // MIB}m.txt"
            argv = [pyspy, "record", "--pid", str(m.pid), "--format", "raw", "--rate", "100", "--threads"]
            spy = subprocess.Popen(
                [*argv, "--nonblocking", "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                time.sleep(1.0)
                res = dd(m.file)
            finally:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            result["pyspy"] = {"file": str(raw), "dd_seconds": round(res.seconds, 3), **top_frames(raw)}
    finally:
        remove(cache)
    cache = fresh_dir(ctx.cache_parent, "ocifs-bench-cache")
    try:
        with ocifs_mounted(art, ctx.work_dir, cache) as m:
            data = ctx.work_dir / "perf.data"
            perf = subprocess.Popen(
                ["perf", "record", "-F", "499", "-g", "-p", str(m.pid), "-o", str(data)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(0.5)
                cpu = m.cpu()
                res = dd(m.file)
                cpu = m.cpu() - cpu
            finally:
                perf.send_signal(signal.SIGINT)
                perf.wait(timeout=60)
            result["perf"] = {"dd_seconds": round(res.seconds, 3), "daemon_cpu_seconds": round(cpu, 2)}
            result["perf"]["top"] = perf_summary(data)
            remove(data)
    finally:
        remove(cache)
    return result


# =================================================================================================
# The suite
# =================================================================================================


def run(ctx: Any) -> dict[str, Any]:
    setup = shared_setup(ctx)
    measurements: list[Measurement] = []
    failures: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    static_dir = ctx.work_dir / "static"
    code = [code_state()]
    attribution: list[dict[str, Any]] = []
    try:
        static_dir.mkdir(exist_ok=True)
        for size in ctx.sizes:
            art = setup.artifact("tmpfs", size)
            link = static_dir / art.name
            if not link.exists():
                os.link(art.data.path, link)
        with contextlib.ExitStack() as stack:
            url, pid = (None, None) if ctx.no_rclone else stack.enter_context(static_server(static_dir))
            for size in ctx.sizes:
                art = setup.artifact("tmpfs", size)
                bench = Bench(ctx, art, url, pid)
                steps = [
                    bench.curl_registry,
                    bench.cold_warm,
                    bench.cold_shm,
                    bench.cold_whole,
                    bench.pull_then_read,
                    bench.local,
                    *([] if ctx.no_passthrough else [bench.passthrough]),
                    *([] if ctx.no_rclone else [bench.rclone]),
                    bench.ttfb,
                    lambda b=bench: b.safetensors("auto"),
                    lambda b=bench: b.safetensors("off"),
                ]
                repeat = ctx.repeat_for(size)
                for rep in range(repeat):
                    log(f"mount {size_label(size)}: repetition {rep + 1}/{repeat}")
                    for step in steps:
                        try:
                            step()
                        except Exception as exc:  # recorded, not fatal
                            name = getattr(step, "__name__", "step")
                            log(f"  {name} FAILED: {str(exc).splitlines()[0][:300]}")
                            failures.append({"step": name, "size": size, "error": str(exc)[:4000]})
                measurements += bench.out
            if ctx.attribution:
                attribution += mount_attribution(ctx, setup.artifact("tmpfs", min(ctx.sizes)), ctx.attribution)
            if ctx.mount_profile:
                log(f"profiling one cold read of {size_label(min(ctx.sizes))} (py-spy, then perf)")
                profiles[str(min(ctx.sizes))] = profile(ctx, setup.artifact("tmpfs", min(ctx.sizes)))
    finally:
        remove(static_dir)
        release_setup(ctx, SUITE)
        code.append(code_state())
    summaries = summarize(measurements)
    report = render(summaries, measurements)
    md = report["markdown"]
    if failures:
        md += "\n#### Failed steps\n\n" + "\n".join(
            f"- {f['step']}, {size_label(f['size'])}: {f['error'].splitlines()[0][:300]}" for f in failures
        )
    if attribution:
        md += "\n" + attribution_table(attribution, "daemon CPU s/GiB") + "\n"
    for size, prof in profiles.items():
        md += f"\n#### Profile of the daemon during one cold read of {size_label(int(size))}\n\n"
        perf = prof["perf"]
        md += f"perf (dd {perf['dd_seconds']} s, daemon {perf['daemon_cpu_seconds']} CPU-s), by thread and library:\n\n"
        md += "```\n" + "\n".join(perf["top"]) + "\n```\n\npy-spy, Python self time (% of samples):\n\n"
        md += markdown_table(["function", "% self"], [[f"`{k}`", v] for k, v in prof["pyspy"]["self_pct"]]) + "\n"
    return {
        "suite": SUITE,
        "cache_parent": ctx.cache_parent,
        "ocifs_code": code,
        "measurements": [m.to_json() for m in measurements],
        "summaries": [s.to_json() for s in summaries],
        "ratios": report["ratios"],
        "profiles": profiles,
        "attribution": attribution,
        "failures": failures,
        "markdown": md,
    }


# =================================================================================================
# The report
# =================================================================================================


def _find(summaries: list[Summary], size: int, tool: str, settings: str) -> Summary | None:
    for s in summaries:
        if s.size == size and s.tool == tool and s.settings == settings:
            return s
    return None


def _extra(s: Summary, key: str) -> float:
    values = [m.extra[key] for m in s.runs if isinstance(m.extra.get(key), int | float)]
    return median(values) if values else float("nan")


THROUGHPUT_ROWS = [
    ("curl", "registry chunk blobs, 1 process → /dev/null"),
    ("ocifs mount", "cold, prefetch auto"),
    ("ocifs mount", "cold, prefetch auto, cache on /dev/shm"),
    ("ocifs mount", "cold, --prefetch whole"),
    ("ocifs pull + dd", "cold cache; pull, then read the file"),
    ("curl", "static server, 1 GET → /dev/null"),
    ("rclone mount", "cold, --vfs-cache-mode off"),
    ("rclone mount", "cold, --vfs-cache-mode full"),
    ("ocifs mount", "warm: remount, cache evicted (disk)"),
    ("local file", "evicted from page cache (disk)"),
    ("ocifs mount", "warm: remount, cache in page cache"),
    ("pyfuse3 passthrough", "local file in page cache (FUSE ceiling)"),
    ("local file", "page cache"),
    ("ocifs mount", "page-cache re-read (same mount)"),
]


def _ratio(ratios: list[dict[str, Any]], size: int, name: str, value: float, target: str, ok: bool | None) -> None:
    ratios.append(
        {
            "size": size,
            "ratio": name,
            "value": round(value, 3),
            "target": target,
            "verdict": "" if ok is None else ("met" if ok else "missed"),
        }
    )


def render(summaries: list[Summary], measurements: list[Measurement]) -> dict[str, Any]:
    md: list[str] = []
    ratios: list[dict[str, Any]] = []
    for size in sorted({s.size for s in summaries}):
        rows = []
        for tool, settings in THROUGHPUT_ROWS:
            s = _find(summaries, size, tool, settings)
            if s is None:
                continue
            rows.append(
                [
                    tool,
                    settings,
                    s.mib_per_second,
                    s.seconds,
                    s.spread,
                    s.client_cpu_per_gib,
                    s.registry_cpu_per_gib,
                    s.max_rss_mib if s.max_rss_mib else float("nan"),
                    _extra(s, "load1"),
                ]
            )
        reps = max((len(s.runs) for s in summaries if s.size == size), default=0)
        md.append(f"#### {size_label(size)}: full sequential reads (`dd bs=1M`), median of {reps}\n")
        headers = ["reader", "how", "MiB/s", "s", "range MiB/s", "reader CPU s/GiB", "server CPU s/GiB"]
        headers += ["peak RSS MiB", "load (1 min)"]
        md.append(markdown_table(headers, rows, "ll" + "r" * 7))
        md.append("")
        lazy_rows = []
        for s in summaries:
            if s.size != size or s.tool not in ("first 4 KiB", "safetensors"):
                continue
            downloaded = _extra(s, "bytes_downloaded")
            lazy_rows.append(
                [
                    s.tool,
                    s.settings,
                    f"{_extra(s, 'mount_seconds'):.2f}" if s.tool == "first 4 KiB" else "",
                    f"{s.seconds:.3f}",
                    f"{downloaded / MIB:,.0f}" if downloaded == downloaded else "–",
                    f"{100 * _extra(s, 'fraction_of_full_pull'):.1f} %" if s.tool == "safetensors" else "",
                    s.max_rss_mib if s.max_rss_mib else float("nan"),
                    _extra(s, "load1"),
                ]
            )
        if lazy_rows:
            md.append(f"#### {size_label(size)}: first byte and lazy loading (median)\n")
            headers = ["what", "how", "mount command s", "s", "MiB downloaded", "of a full pull", "peak RSS MiB"]
            md.append(markdown_table([*headers, "load (1 min)"], lazy_rows, "llrrrrrr"))
            md.append("")

        f = functools.partial(_find, summaries, size)
        curl = f("curl", "registry chunk blobs, 1 process → /dev/null")
        for settings in ("cold, prefetch auto", "cold, prefetch auto, cache on /dev/shm", "cold, --prefetch whole"):
            cold = f("ocifs mount", settings)
            if cold and curl:
                v = cold.mib_per_second / curl.mib_per_second
                _ratio(ratios, size, f"mount {settings} / curl GET", v, "≥ 0.70", v >= TARGET_COLD_VS_CURL)
            pr = f("ocifs pull + dd", "cold cache; pull, then read the file")
            if cold and pr and "/dev/shm" not in settings:  # the pull's cache is on --cache-parent
                v = cold.seconds / pr.seconds
                _ratio(
                    ratios,
                    size,
                    f"mount {settings}: time / pull-then-read time",
                    v,
                    "≤ 1.10",
                    v <= TARGET_MOUNT_VS_PULL_READ,
                )
        for prefetch in ("auto", "off"):
            st = f("safetensors", f"one tensor via the mount, prefetch {prefetch}")
            if st:
                v = _extra(st, "fraction_of_full_pull")
                _ratio(
                    ratios,
                    size,
                    f"safetensors one tensor (prefetch {prefetch}): bytes / full pull",
                    v,
                    "< 0.05",
                    v < TARGET_LAZY_FRACTION,
                )
        for warm_settings, local_settings in (
            ("warm: remount, cache in page cache", "evicted from page cache (disk)"),
            ("warm: remount, cache evicted (disk)", "evicted from page cache (disk)"),
            ("warm: remount, cache in page cache", "page cache"),
        ):
            warm, local = f("ocifs mount", warm_settings), f("local file", local_settings)
            if warm and local:
                v = warm.mib_per_second / local.mib_per_second
                _ratio(
                    ratios,
                    size,
                    f"{warm_settings} / local file ({local_settings})",
                    v,
                    "≥ 0.50",
                    v >= TARGET_WARM_VS_LOCAL,
                )
        reread, local = f("ocifs mount", "page-cache re-read (same mount)"), f("local file", "page cache")
        if reread and local:
            _ratio(
                ratios,
                size,
                "page-cache re-read / local page-cache read",
                reread.mib_per_second / local.mib_per_second,
                "memory speed",
                None,
            )
        ceiling = f("pyfuse3 passthrough", "local file in page cache (FUSE ceiling)")
        cold = f("ocifs mount", "cold, prefetch auto")
        if cold and ceiling:
            v = cold.mib_per_second / ceiling.mib_per_second
            _ratio(ratios, size, "mount cold, prefetch auto / FUSE ceiling", v, "", None)
        if ceiling and curl:
            v = ceiling.mib_per_second / curl.mib_per_second
            _ratio(ratios, size, "FUSE ceiling / curl GET", v, "", None)
        cold, rc = f("ocifs mount", "cold, prefetch auto"), f("rclone mount", "cold, --vfs-cache-mode off")
        if cold and rc:
            _ratio(
                ratios,
                size,
                "mount cold / rclone mount cold (vfs off)",
                cold.mib_per_second / rc.mib_per_second,
                "",
                None,
            )
    if ratios:
        md.append("#### Ratios against the targets\n")
        md.append(
            markdown_table(
                ["size", "ratio", "value", "target", "verdict"],
                [
                    [
                        size_label(r["size"]),
                        r["ratio"],
                        f"{r['value']:.2f}",
                        r["target"],
                        "**missed**" if r["verdict"] == "missed" else r["verdict"],
                    ]
                    for r in ratios
                ],
                "llrll",
            )
        )
        md.append("")
    daemon = [
        (m.size, m.settings, m.max_rss_kib / 1024)
        for m in measurements
        if m.tool in ("ocifs mount", "safetensors", "first 4 KiB") and "rclone" not in m.settings and m.max_rss_kib
    ]
    if daemon:
        md.append(
            "Daemon peak RSS (VmHWM) per size, largest of all its mounts: "
            + ", ".join(
                f"{size_label(size)} {max(r for s, _, r in daemon if s == size):.0f} MiB"
                for size in sorted({d[0] for d in daemon})
            )
            + ".\n"
        )
    loads = [m.extra["load1"] for m in measurements if "load1" in m.extra]
    if loads:
        md.append(
            f"Load (1-minute average) before the measurements: median {median(loads):.1f},"
            f" range {min(loads):.1f}–{max(loads):.1f}, on 2 cores.\n"
        )
    return {"markdown": "\n".join(md), "ratios": ratios}
