"""Operating ocifs on a host: ``mount -t fuse.ocifs``, fstab lines, a cache shared by mounts,
``ocifs status``, and logs under systemd — real mounts against the real registry, as root.

These go through the system's own tools exactly as an operator (or systemd) would:
``mount(8)`` finds the helper ``/sbin/mount.fuse.ocifs`` (``make setup`` links it and
``/usr/local/bin/ocifs`` to the virtualenv; docs/operations.md says why), and ``mount -T FILE``
tests an fstab line without touching /etc/fstab. The ``host_mounts`` fixture detaches every
mount point a test used (``umount -l``, then ``fusermount3 -u -z``) and stops the daemons left
on them, even when the test fails; each test then checks nothing was left behind.

What a user would notice: a mount through mount(8) or fstab reads right and ``umount`` ends
it; a typo or a broken config file gives one line and a failed ``mount``; two versions of a
model mounted side by side download their common chunks once; ``ocifs status`` tells what
every mount is doing and says when one is stuck; journald gets each line's priority.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.registry import RegistryServer

MiB = 1024 * 1024
CHUNK = 256 * 1024
PYTHON = [sys.executable, "-m", "ocifs"]
HELPER = Path("/sbin/mount.fuse.ocifs")
INSTALLED = Path("/usr/local/bin/ocifs")

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------ helpers


def run(*command: str | Path, timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, **kwargs)


def ocifs(*args: str | Path, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = run(*PYTHON, *args, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"ocifs {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def mount_lines() -> list[list[str]]:
    """/proc/self/mountinfo, split; read directly rather than through the code under test."""
    return [line.split(" ") for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def mount_entry(path: Path) -> dict[str, str] | None:
    """The mountinfo entry of ``path`` (its last mount): fstype, source, options, super options."""
    for fields in reversed(mount_lines()):
        if fields[4] == str(path):
            rest = fields[fields.index("-", 6) + 1 :]
            return {"fstype": rest[0], "source": rest[1], "options": fields[5], "super": rest[2]}
    return None


def mounted(path: Path) -> bool:
    return mount_entry(path) is not None


def daemons_on(path: Path) -> list[int]:
    """PIDs of processes whose command line names ``path`` (the daemon and libfuse's
    fusermount3 watcher: both get the mount point as an argument)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = proc.joinpath("cmdline").read_bytes().split(b"\0")
            state = proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if os.fsencode(path) in args and state != "Z":
            pids.append(int(proc.name))
    return pids


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def stats(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(os.getxattr(path, "user.ocifs.stats"))
    return data


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("ocifs: error: "), stderr
    return lines[0]


@dataclass
class HostMounts:
    """Mount points handed out to a test; every one is detached and its daemon stopped at teardown."""

    tmp: Path
    points: list[Path] = field(default_factory=list)
    public: list[Path] = field(default_factory=list)

    def point(self, name: str, *, public: bool = False) -> Path:
        """A new empty mount point; ``public``: where every user can reach it (pytest's
        directories are private to root), removed at teardown."""
        base = self.tmp
        if public:
            base = Path(tempfile.mkdtemp(prefix="ocifs-ops-"))
            base.chmod(0o755)
            self.public.append(base)
        path = base / name
        path.mkdir()
        self.points.append(path)
        return path

    def cleanup(self) -> None:
        for path in self.points:
            while mounted(path):  # a stacked mount hides the one below: detach all of them
                run("umount", "-l", path)
                if mounted(path):
                    run("fusermount3", "-u", "-z", path)
        for path in self.points:
            if not wait_for(lambda p=path: not daemons_on(p), timeout=5):
                for pid in daemons_on(path):
                    os.kill(pid, signal.SIGKILL)
        for base in self.public:
            if not any(mounted(p) for p in self.points if base in p.parents):
                shutil.rmtree(base)


@pytest.fixture
def host_mounts(tmp_path: Path) -> Iterator[HostMounts]:
    for tool, hint in ((HELPER, "make setup (install-bin)"), (INSTALLED, "make setup (install-bin)")):
        if not tool.exists():
            pytest.fail(f"{tool} missing: run `{hint}` as root", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("mount(8) of a FUSE filesystem with allow_other needs root here", pytrace=False)
    mounts = HostMounts(tmp_path)
    try:
        yield mounts
    finally:
        mounts.cleanup()
    assert not [p for p in mounts.points if mounted(p)], "a mount was left behind"
    assert not [p for p in mounts.points if daemons_on(p)], "a daemon was left behind"


@dataclass(frozen=True)
class Pushed:
    ref: str
    source: Path
    digest: str


def push(registry: RegistryServer, repo: str, source: Path) -> Pushed:
    ref = f"{registry.host}/{repo}"
    proc = ocifs("push", "-q", ref, source, "--chunk-size", "256K", timeout=60)
    digest = proc.stdout.strip().rsplit("@", 1)[1]
    return Pushed(ref, source, digest)


@pytest.fixture(scope="module")
def model(shared_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """A 3-chunk-and-a-bit file and a small one under a directory, pushed once for the module."""
    source = tmp_path_factory.mktemp("model") / "src"
    (source / "config").mkdir(parents=True)
    (source / "weights.bin").write_bytes(random.Random(1).randbytes(3 * CHUNK + 999))
    (source / "config" / "model.json").write_text('{"layers": 3}\n')
    return push(shared_registry, "ops/model:v1", source)


def assert_reads_like(mountpoint: Path, source: Path) -> None:
    for original in sorted(p for p in source.rglob("*") if p.is_file()):
        name = original.relative_to(source)
        assert (mountpoint / name).read_bytes() == original.read_bytes(), name


# ------------------------------------------------------------------------------ mount(8) and fstab


def test_mount_t_fuse_ocifs_reads_and_umount_ends_it(host_mounts: HostMounts, model: Pushed, tmp_path: Path) -> None:
    mp = host_mounts.point("mnt")
    options = f"ro,allow_other,cache_dir={tmp_path / 'cache'},prefetch=off,plain_http,log_file={tmp_path / 'log'}"
    proc = run("mount", "-t", "fuse.ocifs", model.ref, mp, "-o", options)
    assert proc.returncode == 0, proc.stderr
    entry = mount_entry(mp)
    assert entry is not None
    # The reference's ':' and '/' reach the daemon intact, and it shows pinned to its digest.
    assert entry["fstype"] == "fuse.ocifs" and entry["source"] == f"{model.ref}@{model.digest}"
    assert {"ro", "nosuid", "nodev"} <= set(entry["options"].split(","))
    assert "allow_other" in entry["super"].split(",")
    assert_reads_like(mp, model.source)
    assert stats(mp)["prefetch"]["mode"] == "off"  # our own -o keys reached the daemon

    proc = run("umount", mp)
    assert proc.returncode == 0, proc.stderr
    assert not mounted(mp)
    assert wait_for(lambda: not daemons_on(mp), timeout=5), "the daemon outlived umount"
    assert "unmounted" in (tmp_path / "log").read_text()


def test_an_fstab_line_mounts_with_mount_T(host_mounts: HostMounts, model: Pushed, tmp_path: Path) -> None:
    mp = host_mounts.point("models llama")  # a space: fstab spells it \040
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a comment, as in /etc/fstab\n"
        f"{model.ref} {str(mp).replace(' ', chr(92) + '040')} fuse.ocifs"
        f" ro,_netdev,nofail,allow_other,x-systemd.automount,cache_dir={tmp_path / 'cache'},plain_http 0 0\n"
    )
    proc = run("mount", "-T", fstab, mp)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    entry = mount_entry(mp.parent / "models\\040llama")  # mountinfo escapes the space the same way
    assert entry is not None and entry["source"] == f"{model.ref}@{model.digest}", entry
    assert_reads_like(mp, model.source)
    assert run("umount", mp).returncode == 0
    assert mount_entry(mp.parent / "models\\040llama") is None


def test_without_the_helper_mount_fuse3_runs_ocifs_with_no_subcommand(
    host_mounts: HostMounts, model: Pushed, tmp_path: Path
) -> None:
    # A host that links only /usr/local/bin/ocifs: mount.fuse3 runs `ocifs REF MP -o OPTS`
    # through sh with an empty environment (mount(8) strips PATH).
    mp = host_mounts.point("mnt")
    proc = run("env", "-i", "/usr/sbin/mount.fuse3", model.ref, mp, "-t", "fuse.ocifs",
               "-o", f"ro,_netdev,nofail,cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert mount_entry(mp) is not None and mount_entry(mp)["fstype"] == "fuse.ocifs"  # type: ignore[index]
    assert_reads_like(mp, model.source)
    assert run("umount", mp).returncode == 0


def test_mount_errors_are_one_line_and_a_failed_mount(host_mounts: HostMounts, model: Pushed, tmp_path: Path) -> None:
    mp = host_mounts.point("mnt")
    cache = f"cache_dir={tmp_path / 'cache'}"
    broken = tmp_path / "broken.toml"
    broken.write_text('[cache]\nmax_size = "lots"\n')
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[cache\n")
    cases: list[tuple[list[str], dict[str, str], str]] = [
        # libfuse refuses an option it does not know; the line names it.
        (["-o", f"ro,bogus_opt=1,{cache}"], {}, "bogus_opt=1"),
        (["-o", f"prefetch=maybe,{cache}"], {}, "prefetch"),
        # mount(8) run by root passes the environment on, so $OCIFS_CONFIG reaches the helper.
        (["-o", cache], {"OCIFS_CONFIG": str(bad_toml)}, f"{bad_toml}: invalid toml"),
        (["-o", cache], {"OCIFS_CONFIG": str(broken)}, f"{broken} line 2"),
    ]
    for options, env, text in cases:
        proc = run("mount", "-t", "fuse.ocifs", model.ref, mp, *options, env={**os.environ, **env})
        assert proc.returncode != 0, proc.stderr
        assert text in one_error_line(proc.stderr).lower(), proc.stderr
        assert not mounted(mp)
    missing = f"{model.ref.rsplit(':', 1)[0]}:no-such-tag"
    proc = run("mount", "-t", "fuse.ocifs", missing, mp, "-o", cache)
    assert proc.returncode != 0 and "manifest unknown" in one_error_line(proc.stderr).lower()
    # The same typo in an fstab line.
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{model.ref} {mp} fuse.ocifs ro,_netdev,nofail,bogus_opt=1,{cache} 0 0\n")
    proc = run("mount", "-T", fstab, mp)
    assert proc.returncode != 0 and "bogus_opt=1" in one_error_line(proc.stderr)
    assert not mounted(mp)


# ------------------------------------------------------------------------------ one cache, two versions


def test_two_versions_mounted_side_by_side_fetch_common_chunks_once(
    host_mounts: HostMounts, shared_registry: RegistryServer, tmp_path: Path
) -> None:
    data = random.Random(2).randbytes(16 * CHUNK)
    changed = bytearray(data)
    changed[5 * CHUNK + 100 : 5 * CHUNK + 104] = b"v2!!"  # one chunk of sixteen differs
    for version, content in (("v1", data), ("v2", bytes(changed))):
        (tmp_path / version).mkdir()
        (tmp_path / version / "model.bin").write_bytes(content)
        (tmp_path / version / "tokenizer.json").write_text('{"same": true}\n')  # a plain layer, shared
    v1 = push(shared_registry, "ops/shared:v1", tmp_path / "v1")
    v2 = push(shared_registry, "ops/shared:v2", tmp_path / "v2")
    options = f"ro,cache_dir={tmp_path / 'cache'},prefetch=auto"
    mp1, mp2 = host_mounts.point("v1-mnt"), host_mounts.point("v2-mnt")
    for pushed, mp in ((v1, mp1), (v2, mp2)):
        proc = run("mount", "-t", "fuse.ocifs", pushed.ref, mp, "-o", options)
        assert proc.returncode == 0, proc.stderr
    assert mounted(mp1) and mounted(mp2)

    assert_reads_like(mp1, v1.source)  # both mounted, read one after the other
    assert_reads_like(mp2, v2.source)
    first, second = stats(mp1)["fetch"], stats(mp2)["fetch"]
    # v1: its chunk index, 16 chunks and the tokenizer; v2: its own index and the changed chunk.
    assert first["downloads"] == 18, first
    assert second["downloads"] == 2, second
    assert second["disk_hits"] >= 16, second  # 15 common chunks and the tokenizer, from v1's fetches
    unique = len(data) + CHUNK
    total = first["bytes_downloaded"] + second["bytes_downloaded"]
    assert unique <= total < unique + 64 * 1024, (total, unique)  # plus two small indexes; not 2x
    for mp in (mp1, mp2):
        assert run("umount", mp).returncode == 0


def test_upgrade_by_symlink_then_the_old_mount_unmounts_once_idle(
    host_mounts: HostMounts, model: Pushed, tmp_path: Path
) -> None:
    # The recipe of docs/operations.md, run from a "shell" that holds a file of the old mount
    # open while it mounts the new one (a daemon must not keep the files its caller had open).
    old, new = host_mounts.point("llama-v1"), host_mounts.point("llama-v2")
    options = ["-o", f"ro,cache_dir={tmp_path / 'cache'}"]
    assert run("mount", "-t", "fuse.ocifs", model.ref, old, *options).returncode == 0
    current = tmp_path / "llama"
    current.symlink_to(old.name)
    fd = os.open(current / "weights.bin", os.O_RDONLY)
    try:
        proc = run("mount", "-t", "fuse.ocifs", f"{model.ref}@{model.digest}", new, *options, pass_fds=(fd,))
        assert proc.returncode == 0, proc.stderr
        (tmp_path / "llama.new").symlink_to(new.name)
        assert run("mv", "-T", tmp_path / "llama.new", current).returncode == 0  # rename(2): atomic
        assert os.readlink(current) == new.name
        assert_reads_like(current, model.source)
        busy = run("umount", old)
        assert busy.returncode != 0 and "busy" in busy.stderr  # the open file still reads
        assert os.pread(fd, 10, 0) == (model.source / "weights.bin").read_bytes()[:10]
    finally:
        os.close(fd)
    proc = run("umount", old)
    assert proc.returncode == 0, proc.stderr  # the new mount's daemon holds nothing of the old one
    assert not mounted(old) and mounted(new)


# ------------------------------------------------------------------------------ ocifs status


def test_status_lists_every_mount_and_details_one(host_mounts: HostMounts, model: Pushed, tmp_path: Path) -> None:
    mp1, mp2 = host_mounts.point("a"), host_mounts.point("b")
    for mp in (mp1, mp2):
        proc = run("mount", "-t", "fuse.ocifs", model.ref, mp, "-o", f"cache_dir={tmp_path / 'cache'},prefetch=off")
        assert proc.returncode == 0, proc.stderr
    (mp1 / "weights.bin").read_bytes()

    listing = ocifs("status").stdout.splitlines()  # other tests' mounts may be listed too
    ours = {line.split("  ")[0]: line for line in listing if line.split("  ")[0] in {str(mp1), str(mp2)}}
    assert set(ours) == {str(mp1), str(mp2)}
    assert f"{model.ref}@{model.digest[:19]}" in ours[str(mp1)]
    assert " 0 errors" in ours[str(mp1)] and "fetched" in ours[str(mp1)]

    detail = ocifs("status", mp1).stdout
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in detail.splitlines())
    assert fields["reference"] == model.ref and fields["digest"] == model.digest
    assert fields["state"] == "ok"
    assert re.fullmatch(r"\d+s", fields["uptime"]), fields["uptime"]
    assert "in 5 downloads" in fields["fetched"]  # the index and 4 chunks
    assert fields["cache misses"] == "5" and fields["errors"].startswith("0 failed fetches")
    assert fields["in flight"].startswith("0 fetches") and fields["prefetch"].startswith("off:")

    doc = json.loads(ocifs("status", "--json", mp1).stdout)
    assert doc["reference"] == model.ref and doc["digest"] == model.digest and doc["state"] == "ok"
    assert doc["stats"]["fetch"]["downloads"] == 5
    assert doc["stats"]["fs"]["bytes_read"] == (model.source / "weights.bin").stat().st_size
    everything = json.loads(ocifs("status", "--json").stdout)["mounts"]
    assert {str(mp1), str(mp2)} <= {m["mountpoint"] for m in everything}

    link = tmp_path / "current"  # the upgrade recipe's symlink names the mount too
    link.symlink_to(mp2)
    assert json.loads(ocifs("status", "--json", link).stdout)["mountpoint"] == str(mp2)


def test_status_of_what_is_not_an_ocifs_mount_is_one_line(
    host_mounts: HostMounts, model: Pushed, tmp_path: Path
) -> None:
    mp = host_mounts.point("mnt")
    assert run("mount", "-t", "fuse.ocifs", model.ref, mp, "-o", f"cache_dir={tmp_path / 'cache'}").returncode == 0
    for path, text in (
        (tmp_path, "is not an ocifs mount"),
        (mp / "weights.bin", f"inside the ocifs mount {mp}"),
        (tmp_path / "nowhere", "does not exist"),
    ):
        proc = ocifs("status", path, check=False)
        assert proc.returncode == 2 and text in one_error_line(proc.stderr), proc.stderr


def test_status_says_when_a_daemon_does_not_answer(host_mounts: HostMounts, model: Pushed, tmp_path: Path) -> None:
    mp = host_mounts.point("mnt")
    assert run("mount", "-t", "fuse.ocifs", model.ref, mp, "-o", f"cache_dir={tmp_path / 'cache'}").returncode == 0
    (daemon,) = [pid for pid in daemons_on(mp) if b"fusermount3" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.kill(daemon, signal.SIGSTOP)
    try:
        started = time.monotonic()
        proc = ocifs("status", mp, check=False)
        assert time.monotonic() - started < 15
        assert proc.returncode == 1 and "not answering" in proc.stdout, proc.stdout
    finally:
        os.kill(daemon, signal.SIGCONT)
    assert ocifs("status", mp).returncode == 0


def test_status_reports_a_dead_mount_and_how_to_detach_it(
    host_mounts: HostMounts, model: Pushed, tmp_path: Path
) -> None:
    mp = host_mounts.point("mnt")
    assert run("mount", "-t", "fuse.ocifs", model.ref, mp, "-o", f"cache_dir={tmp_path / 'cache'}").returncode == 0
    os.stat(mp)  # the kernel caches the root's attributes: a stat alone would not notice the death
    # Both the daemon and libfuse's auto_unmount watcher die (kill -9 of the whole service, OOM).
    watcher = [pid for pid in daemons_on(mp) if b"fusermount3" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    daemon = [pid for pid in daemons_on(mp) if pid not in watcher]
    for pid in watcher + daemon:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not daemons_on(mp), timeout=5)
    assert mounted(mp)
    proc = ocifs("status", mp, check=False)
    assert proc.returncode == 1 and "dead" in proc.stdout and f"fusermount3 -u -z {mp}" in proc.stdout, proc.stdout
    assert run("fusermount3", "-u", "-z", mp).returncode == 0
    assert not mounted(mp)


def test_status_as_another_user(host_mounts: HostMounts, model: Pushed, tmp_path: Path) -> None:
    # FUSE lets only the mounting user in unless allow_other: not a fault of the mount.
    private, shared = host_mounts.point("private", public=True), host_mounts.point("shared", public=True)
    for mp, options in ((private, "ro"), (shared, "ro,allow_other")):
        proc = run("mount", "-t", "fuse.ocifs", model.ref, mp, "-o", f"{options},cache_dir={tmp_path / 'cache'}")
        assert proc.returncode == 0, proc.stderr
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *PYTHON, "status"]
    env = {**os.environ, "HOME": "/nonexistent"}
    proc = run(*nobody, private, env=env, cwd="/")
    assert proc.returncode == 0 and "no access" in proc.stdout and "allow_other" in proc.stdout, proc
    proc = run(*nobody, "--json", shared, env=env, cwd="/")
    assert proc.returncode == 0 and json.loads(proc.stdout)["state"] == "ok", proc


def test_parse_mountinfo_reads_every_mount_and_tells_ocifs_apart() -> None:
    from ocifs.commands.status import split_source
    from ocifs.fs.mounts import FSTYPE, parse_mountinfo

    text = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:39 / /mnt/models\\040x ro,nosuid,nodev,relatime shared:7 master:2 - fuse.ocifs"
        " r.example:5000/m/l:v1@sha256:ab ro,user_id=0,group_id=0,allow_other\n"
        "41 22 0:40 / /mnt/other ro - fuse.sshfs host:/ ro\n"
    )
    assert [m.fstype for m in parse_mountinfo(text)] == ["ext4", FSTYPE, "fuse.sshfs"]
    (entry,) = [m for m in parse_mountinfo(text) if m.fstype == FSTYPE]
    assert entry.mountpoint == "/mnt/models x" and entry.source == "r.example:5000/m/l:v1@sha256:ab"
    assert split_source(entry.source) == ("r.example:5000/m/l:v1", "sha256:ab")
    assert split_source("r.example:5000/m/l:v1") == ("r.example:5000/m/l:v1", None)


# ------------------------------------------------------------------------------ logs under systemd


def test_logs_carry_syslog_priorities_when_stderr_is_the_journal(
    host_mounts: HostMounts, model: Pushed, tmp_path: Path
) -> None:
    mp = host_mounts.point("mnt")
    err = tmp_path / "stderr"
    address = f"ocifs-test-{secrets.token_hex(8)}"
    with err.open("wb") as out, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(f"\0{address}")
        sock.settimeout(20)
        st = os.fstat(out.fileno())  # systemd's JOURNAL_STREAM: the stream's device:inode
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", NOTIFY_SOCKET=f"@{address}")
        daemon = subprocess.Popen([*PYTHON, "mount", "-f", model.ref, str(mp), "--cache-dir", str(tmp_path / "c")],
                                  stdout=out, stderr=out, env=env)  # fmt: skip
        try:
            while "READY=1" not in sock.recv(4096).decode():
                pass
            assert_reads_like(mp, model.source)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=10) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    lines = err.read_text().splitlines()
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert any(line.startswith(f"<6>mounted {model.ref}@{model.digest}") for line in lines), lines
    assert "<6>SIGTERM received: unmounting" in lines
    assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in lines), "journald adds its own timestamps"

    # An error before the mount, and stderr that is not the journal (a redirected child).
    with err.open("wb") as out:
        st = os.fstat(out.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        failed = subprocess.run([*PYTHON, "mount", "-f", model.ref, str(mp), "-o", "jobs=0"], stderr=out, env=env)
    assert failed.returncode == 2
    assert err.read_text().startswith("<3>ocifs: error: option -o jobs")
    proc = ocifs("mount", "-f", model.ref, mp, "-o", "jobs=0", check=False, env={**os.environ, "JOURNAL_STREAM": "1:2"})
    assert proc.stderr.startswith("ocifs: error: option -o jobs")


def test_journal_formatter_prefixes_every_line_with_its_priority() -> None:
    from ocifs.commands.cli import JournalFormatter

    formatter = JournalFormatter("%(message)s")
    expected = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
    for level, priority in expected.items():
        record = logging.LogRecord("ocifs.x", level, __file__, 1, "two\nlines", None, None)
        assert formatter.format(record) == f"<{priority}>two\n<{priority}>lines"
