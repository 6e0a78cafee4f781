"""Secrets stay secret, end to end: the real registry, the real CLI in subprocesses, real mounts.

The requirement: credentials never in logs, errors, ``ps`` output or process titles; TLS
verified by default; no ``Authorization`` to cross-host redirects.

How it is shown: a distinctive password is stored with ``ocifs login --password-stdin`` (the
only way in besides a docker config written by hand), then push, inspect, pull and a mount run
with ``--debug`` (every logger at DEBUG, httpx's included) through a :class:`FaultProxy` that
injects 503 bursts, a 401 that forces a new challenge round (a token refresh under Bearer auth)
and 307 redirects of blob GETs to another host. Everything a user or another local user could
see is collected - stdout and stderr of every command, the daemon's log, ``/proc/PID/cmdline``,
``comm``, ``environ`` and every thread's ``comm``, ``ps`` output, the mount table, ``ocifs
status`` - and searched for the password, ``base64(user:password)`` and every ``Authorization``
value the proxy saw on the wire (for Bearer auth: each token and its signature). The proxy's
records also show the secrets were really sent (the test is not vacuous) and that the redirect
target never got an ``Authorization`` header.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.cachefiles import cache_entries
from support.fault_proxy import FaultProxy, Record, Redirect, Rule, Status
from support.mounts import mounted, mounter
from support.registry import DockerConfig, RegistryFactory, RegistryServer, make_tls_material

pytestmark = pytest.mark.timeout(60)

USER = "alice"
REPO = "secrets/model"
CHUNK = 64 * 1024
BLOB_GET = r"^/v2/.+/blobs/sha256:"
MANIFEST_PATH = r"^/v2/.+/manifests/"
# What an object store's pre-signed redirect URL carries in its query: a credential too.
SIGNATURE = f"Sig-{secrets.token_hex(16)}"


def distinctive_password() -> str:
    """A password no output could contain by chance (and no encoding changes: [A-Za-z0-9-])."""
    return f"Pw-{secrets.token_hex(12)}-S3cret"


def basic_value(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# -- running the CLI and collecting what it shows ------------------------------------------------


@dataclass
class Evidence:
    """Every text a user (or ``ps``) could see, by where it came from."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.texts[where if where not in self.texts else f"{where}#{len(self.texts)}"] = text

    @property
    def size(self) -> int:
        return sum(len(t) for t in self.texts.values())

    def assert_free_of(self, needles: dict[str, str]) -> None:
        """Fail naming each (source, secret) pair where a secret shows up."""
        assert all(len(value) >= 8 for value in needles.values()), needles.keys()
        found = [
            f"{name} in {where}: ...{text[max(0, text.index(value) - 160) : text.index(value) + 40]}..."
            for where, text in self.texts.items()
            for name, value in needles.items()
            if value in text
        ]
        assert found == [], f"secrets leaked: {found}"


def ocifs(
    evidence: Evidence | None,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 45,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ocifs ARGS`` (the DOCKER_CONFIG of the test is inherited)."""
    result = subprocess.run(
        [sys.executable, "-m", "ocifs", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if evidence is not None:
        where = " ".join(args[:2])
        evidence.add(f"stdout of {where}", result.stdout)
        evidence.add(f"stderr of {where}", result.stderr)
    return result


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def make_source(directory: Path) -> dict[str, bytes]:
    """model.bin in 17 chunks of 64 KiB (many requests, so many Authorization headers) and a README."""
    contents = {"model.bin": os.urandom(16 * CHUNK + 4321), "README.md": b"a small model\n"}
    for name, data in contents.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return contents


def process_evidence(evidence: Evidence, pid: int, label: str) -> None:
    """What ``ps`` and /proc show about ``pid``: argv, title, environment, thread names."""
    proc = Path(f"/proc/{pid}")
    cmdline = (proc / "cmdline").read_bytes()
    assert b"mount" in cmdline, cmdline  # it is the daemon
    evidence.add(f"{label} /proc/cmdline", cmdline.replace(b"\0", b" "))
    evidence.add(f"{label} /proc/comm", (proc / "comm").read_bytes())
    evidence.add(f"{label} /proc/environ", (proc / "environ").read_bytes().replace(b"\0", b"\n"))
    threads = sorted((proc / "task").iterdir())
    assert len(threads) > 1  # trio, the FUSE workers and the fetch threads
    for task in threads:
        evidence.add(f"{label} thread {task.name} comm", (task / "comm").read_bytes())
    ps = subprocess.run(["ps", "-ww", "-L", "-o", "pid,tid,comm,args", "-p", str(pid)], capture_output=True,
                        text=True, check=True)  # fmt: skip
    assert str(pid) in ps.stdout
    evidence.add(f"{label} ps -L", ps.stdout)
    ps_all = subprocess.run(["ps", "-ww", "-eo", "pid,comm,args"], capture_output=True, text=True, check=True)
    evidence.add("ps -e", ps_all.stdout)
    with open("/proc/self/mountinfo") as f:
        evidence.add("mountinfo", f.read())


# -- the registries ------------------------------------------------------------------------------


@dataclass
class Setup:
    """A registry with one user and a distinctive password, and a fault proxy in front of it."""

    kind: str
    server: RegistryServer
    password: str
    proxy: FaultProxy

    @property
    def ref(self) -> str:
        return f"{self.proxy.host}/{REPO}:v1"

    def challenge_401(self) -> Status:
        """A 401 as the registry sends it: the client must redo its auth round (new token)."""
        if self.kind == "basic":
            header = 'Basic realm="ocifs-test"'
        else:
            token_server = self.server.token_server
            assert token_server is not None
            header = (f'Bearer realm="{token_server.realm}",service="{token_server.service}",'
                      f'scope="repository:{REPO}:pull"')  # fmt: skip
        body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}).encode()
        return Status(401, headers={"WWW-Authenticate": header}, body=body)


@pytest.fixture(params=["basic", "token"])
def setup(request: pytest.FixtureRequest, registry_factory: RegistryFactory) -> Iterator[Setup]:
    password = distinctive_password()
    if request.param == "basic":
        server = registry_factory(basic={USER: password})
        presigned = f"Basic {basic_value(USER, password)}"
    else:
        server = registry_factory(token={"users": {USER: password}, "allow_anonymous": False})
        assert server.token_server is not None
        presigned = f"Bearer {server.token_server.issue_token(USER, [f'repository:{REPO}:pull'])}"
    # The redirect target plays a pre-signed URL: it brings its own credentials upstream.
    with FaultProxy(server.host, redirect_authorization=presigned) as proxy:
        yield Setup(request.param, server, password, proxy)
        assert proxy.errors == []


# -- a detached mount ----------------------------------------------------------------------------


@dataclass
class Detached:
    path: Path
    pid: int
    log: Path


def mount_detached(evidence: Evidence, ref: str, mountpoint: Path, *flags: str) -> Detached:
    """``ocifs --debug mount`` without ``-f``: the parent exits once mounted; the daemon's PID
    comes from the ``MAINPID=`` it sends to ``$NOTIFY_SOCKET``."""
    mountpoint.mkdir()
    log = mountpoint.parent / "daemon.log"
    address = f"ocifs-secrets-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(f"\0{address}")
        sock.settimeout(5)
        result = ocifs(evidence, "--debug", "mount", ref, str(mountpoint), "--log-file", str(log), *flags,
                       env={"NOTIFY_SOCKET": f"@{address}"})  # fmt: skip
        assert result.returncode == 0, result.stderr
        message = sock.recv(4096).decode()
    fields = dict(line.partition("=")[::2] for line in message.splitlines())
    assert fields.get("READY") == "1", message
    assert mounted(mountpoint)
    return Detached(mountpoint, int(fields["MAINPID"]), log)


def unmount_detached(mount: Detached) -> None:
    if mounted(mount.path):
        subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], capture_output=True, check=False)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{mount.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if Path(f"/proc/{mount.pid}").exists():
        os.kill(mount.pid, signal.SIGKILL)
        pytest.fail(f"daemon {mount.pid} did not exit after its unmount")


# -- 1. the whole life of an artifact, every output searched -------------------------------------


def authorization_values(records: list[Record]) -> set[str]:
    return {r.headers["authorization"] for r in records if "authorization" in r.headers}


def secret_needles(setup: Setup, seen: set[str]) -> dict[str, str]:
    """The password, base64(user:password), and every Authorization value seen on the wire with
    its credential part (for a JWT also the signature and claims segments, each unique)."""
    b64 = basic_value(USER, setup.password)
    needles = {"password": setup.password, "base64(user:password)": b64, "base64 unpadded": b64.rstrip("=")}
    for n, value in enumerate(sorted(seen)):
        scheme, _, credential = value.partition(" ")
        needles[f"Authorization #{n}"] = value
        needles[f"{scheme} credential #{n}"] = credential
        if scheme == "Bearer":
            _, claims, signature = credential.split(".")
            needles[f"token #{n} claims"] = claims
            needles[f"token #{n} signature"] = signature
    return needles


def test_no_secret_in_any_output_process_title_or_log(
    setup: Setup, docker_config: DockerConfig, tmp_path: Path
) -> None:
    proxy = setup.proxy
    evidence = Evidence()

    # Login: the password only ever travels on stdin.
    login = ocifs(evidence, "--debug", "login", proxy.host, "-u", USER, "--password-stdin", stdin=setup.password + "\n")
    assert login.returncode == 0, login.stderr
    assert docker_config.read()["auths"][proxy.host] == {"auth": basic_value(USER, setup.password)}

    # Push, with a 503 burst on uploads and a 401 on the manifest PUT: a new auth round (a new
    # token) for a request that carried valid credentials. (Not on a request that may be in its
    # first auth round already: a second 401 in a row is a rejection, as it should be.)
    source = make_source(tmp_path / "src")
    rules: list[Rule] = [
        proxy.add(Status(503), method="PUT", path=r"/blobs/uploads/", times=2),
        proxy.add(setup.challenge_401(), method="PUT", path=MANIFEST_PATH),
    ]
    push = ocifs(evidence, "--debug", "push", setup.ref, *(str(p) for p in sorted((tmp_path / "src").iterdir())),
                 "--chunk-size", "64K", "-j", "4")  # fmt: skip
    assert push.returncode == 0, push.stderr[-3000:]

    # Inspect and pull: a 401 on the manifest, a 503 burst and cross-host redirects on blobs.
    proxy.clear()
    rules += [
        proxy.add(setup.challenge_401(), method="GET", path=MANIFEST_PATH),
        proxy.add(Status(503), method="GET", path=BLOB_GET, times=2),
    ]
    proxy.add(Redirect(signature=SIGNATURE), method="GET", path=BLOB_GET, times=None)
    inspect = ocifs(evidence, "--debug", "inspect", setup.ref)
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    assert "model.bin" in inspect.stdout
    pull = ocifs(evidence, "--debug", "pull", setup.ref, "-o", str(tmp_path / "out"), "--cache-dir",
                 str(tmp_path / "pull-cache"), "-j", "4")  # fmt: skip
    assert pull.returncode == 0, pull.stderr[-3000:]
    assert tree(tmp_path / "out") == source

    # A mount (Basic: foreground, as systemd runs it; Bearer: detached with --log-file) with a
    # fresh cache so every chunk is fetched through the proxy, redirected, one 503 on the way.
    proxy.clear()
    rules.append(proxy.add(Status(503), method="GET", path=BLOB_GET, times=1))
    proxy.add(Redirect(signature=SIGNATURE), method="GET", path=BLOB_GET, times=None)
    mount_flags = ("--cache-dir", str(tmp_path / "mount-cache"))
    if setup.kind == "basic":
        with mounter(tmp_path) as mounts:
            fg = mounts(setup.ref, "--debug", *mount_flags)
            read_through_mount(evidence, fg.path, fg.proc.pid, source)
            assert mounts.cleanup() == []
        evidence.add("daemon log (foreground)", fg.log_text())
        daemon_log = fg.log_text()
    else:
        detached = mount_detached(evidence, setup.ref, tmp_path / "mnt", *mount_flags)
        try:
            read_through_mount(evidence, detached.path, detached.pid, source)
        finally:
            unmount_detached(detached)
        daemon_log = detached.log.read_text(errors="replace")
        evidence.add("daemon log (detached)", daemon_log)

    # Not vacuous: every fault fired, the logs are the verbose ones, secrets were on the wire.
    assert [rule.fired for rule in rules] == [2, 1, 1, 2, 1], rules
    assert "DEBUG" in daemon_log and "HTTP Request: GET" in daemon_log
    assert "HTTP 503" in push.stderr and "new session" in push.stderr and "HTTP 503, retry" in pull.stderr
    on_wire = proxy.records()
    seen = authorization_values(on_wire)
    schemes = {value.split(" ", 1)[0] for value in seen}
    if setup.kind == "basic":
        assert seen == {f"Basic {basic_value(USER, setup.password)}"}
    else:
        assert schemes == {"Bearer"} and len(seen) >= 3  # push, pull scopes and the refreshes
        token_server = setup.server.token_server
        assert token_server is not None
        assert len(token_server.token_requests()) >= len(seen)  # every token came from the realm
        requests = token_server.token_requests()
        assert {r.user for r in requests} == {USER}
        # The push's token, then a new one after the injected 401 on its manifest PUT.
        assert [r.scope for r in requests].count(f"repository:{REPO}:pull,push") == 2
    assert sum("authorization" in r.headers for r in on_wire) > 50  # 17 chunks up, down, mounted

    # No Authorization to the other host the blob GETs were redirected to.
    redirected = proxy.records(listener="redirect")
    assert len(redirected) >= 17 * 2  # every chunk, by pull and by the mount
    assert [r.headers for r in redirected if "authorization" in r.headers] == []
    assert all(r.status in (200, 206) for r in redirected), [r.status for r in redirected]

    assert all(SIGNATURE in r.target for r in redirected)  # the signed URL was followed
    needles = {**secret_needles(setup, seen), "pre-signed URL signature": SIGNATURE}
    evidence.assert_free_of(needles)
    assert evidence.size > 100_000, evidence.size  # the debug logs really were collected
    print(f"{setup.kind}: {len(seen)} Authorization value(s), {len(needles)} needles,"
          f" {evidence.size // 1024} KiB in {len(evidence.texts)} texts: none found")  # fmt: skip


def read_through_mount(evidence: Evidence, path: Path, pid: int, source: dict[str, bytes]) -> None:
    for name, data in source.items():
        assert (path / name).read_bytes() == data
    process_evidence(evidence, pid, "daemon")
    status = ocifs(evidence, "status", str(path))
    assert status.returncode == 0, status.stderr
    status_json = ocifs(evidence, "status", str(path), "--json")
    assert status_json.returncode == 0, status_json.stderr
    evidence.add("user.ocifs.stats", os.getxattr(path, "user.ocifs.stats"))


# -- 2. wrong credentials ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_wrong_password_is_one_error_line_without_the_password(
    kind: str, registry_factory: RegistryFactory, docker_config: DockerConfig, tmp_path: Path
) -> None:
    password = distinctive_password()
    if kind == "basic":
        server = registry_factory(basic={USER: password})
    else:
        server = registry_factory(token={"users": {USER: password}, "allow_anonymous": False})
    wrong = distinctive_password()
    docker_config.add_auth(server.host, USER, wrong)
    needles = {"wrong password": wrong, "base64(user:wrong)": basic_value(USER, wrong)}
    ref = f"{server.host}/{REPO}:v1"
    out = tmp_path / "out"

    plain = Evidence()
    result = ocifs(plain, "pull", ref, "-o", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("ocifs: error: ") and f"user '{USER}'" in line and "ocifs login" in line, line
    plain.assert_free_of(needles)
    assert not out.exists() or tree(out) == {}

    # With --debug (traceback included), and for a mount, the same line: never the password.
    debug = Evidence()
    result = ocifs(debug, "--debug", "pull", ref, "-o", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 1
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("ocifs: error:")] == [line]
    assert "Traceback" in result.stderr  # the exception chain is shown, and searched too
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    for flags in ([], ["--debug"]):
        result = ocifs(debug, *flags, "mount", ref, str(mountpoint), "--cache-dir", str(tmp_path / "cache"))
        assert result.returncode == 1 and not mounted(mountpoint)
        assert [ln for ln in result.stderr.splitlines() if ln.startswith("ocifs: error:")] == [line]
    debug.assert_free_of(needles)


# -- 3. credentials typed into a reference -------------------------------------------------------


def test_credentials_typed_into_a_reference_are_refused_never_echoed_nor_sent(
    registry: RegistryServer, docker_config: DockerConfig, tmp_path: Path
) -> None:
    secret = distinctive_password()
    evidence = Evidence()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with FaultProxy(registry.host) as proxy:
        host = proxy.host
        references = [
            f"{USER}:{secret}@{host}/{REPO}:v1",
            f"https://{USER}:{secret}@{host}/{REPO}:v1",
            f"http://{USER}:{secret}@{host}/{REPO}@sha256:{'a' * 64}",
        ]
        commands = [
            ("pull", "{ref}", "-o", str(tmp_path / "out")),
            ("inspect", "{ref}"),
            ("push", "{ref}", str(tmp_path / "src" / "f")),
            ("mount", "{ref}", str(mountpoint)),
        ]
        for ref in references:
            for command in commands:
                args = [a.format(ref=ref) for a in command]
                result = ocifs(evidence, "--debug", *args)
                assert result.returncode == 2, result.stderr
                [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("ocifs: error:")]
                assert "credentials do not belong in the reference" in line, line
                assert f"ocifs login {host}" in line and "***@" in line, line
        # login takes HOST[:PORT]: the same refusal, and no docker config written.
        result = ocifs(evidence, "login", f"{USER}:{secret}@{host}", "-u", USER, "--password-stdin", stdin="x\n")
        assert result.returncode == 2 and "credentials do not belong" in result.stderr, result.stderr
        assert proxy.count() == 0  # refused before any request: the secret never left the process
    assert not docker_config.config_file.exists()
    assert not mounted(mountpoint) and not (tmp_path / "out").exists()
    evidence.assert_free_of({"secret": secret, "base64": basic_value(USER, secret)})


# -- 4. TLS is verified, through the CLI ---------------------------------------------------------


def test_tls_is_verified_by_every_command_and_a_configured_ca_works(
    registry_tls: RegistryServer, docker_config: DockerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert registry_tls.ca_file is not None
    ref = f"{registry_tls.host}/{REPO}:v1"
    source = make_source(tmp_path / "src")
    files = [str(p) for p in sorted((tmp_path / "src").iterdir())]
    # A CA that did not sign the registry's certificate (what a man in the middle would present).
    other_ca = make_tls_material(tmp_path / "other-ca").ca_file
    config = tmp_path / "ocifs.toml"

    def configure(ca_file: Path) -> dict[str, str]:
        config.write_text(f'[registry."{registry_tls.host}"]\nca_file = "{ca_file}"\n')
        return {"OCIFS_CONFIG": str(config)}

    def refused(result: subprocess.CompletedProcess[str]) -> str:
        assert result.returncode == 1, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith("ocifs: error: "), line
        return line

    out = tmp_path / "out"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cache = ("--cache-dir", str(tmp_path / "cache"))
    commands = {
        "push": ["push", ref, *files],
        "pull": ["pull", ref, "-o", str(out), *cache],
        "inspect": ["inspect", ref],
        "mount": ["mount", ref, str(mountpoint), *cache],
    }
    # No CA: a loopback registry is spoken to in plain HTTP, and one that speaks HTTPS is refused
    # (push starts with a HEAD, which gets Go's bare 400 without its explanation). Nothing falls
    # back to an unverified connection.
    for args in commands.values():
        line = refused(ocifs(None, *args))
        assert "this registry speaks HTTPS, not plain HTTP: pass --ca-file" in line, line
    # The wrong CA, by flag or by configuration file: certificate verification fails, at once
    # (the same certificate comes back on every attempt, so it is not retried).
    for flags, env in ((["--ca-file", str(other_ca)], {}), ([], configure(other_ca))):
        for args in commands.values():
            line = refused(ocifs(None, *args, *flags, env=env))
            assert "TLS handshake failed (CERTIFICATE_VERIFY_FAILED)" in line and "--ca-file" in line, line
    debug = ocifs(None, "--debug", *commands["pull"], "--ca-file", str(other_ca))
    assert debug.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in debug.stderr, debug.stderr
    assert ", retry " not in debug.stderr and "retrying" not in debug.stderr, debug.stderr
    assert not out.exists() and not mounted(mountpoint) and list(mountpoint.iterdir()) == []
    assert cache_entries(tmp_path / "cache") == {}

    # The registry's CA, by flag (push) and by configuration file (pull, mount): it works.
    push = ocifs(None, "push", ref, *files, "--ca-file", str(registry_tls.ca_file), "--chunk-size", "64K")
    assert push.returncode == 0, push.stderr
    env = configure(registry_tls.ca_file)
    pull = ocifs(None, "pull", ref, "-o", str(out), "--cache-dir", str(tmp_path / "c"), env=env)
    assert pull.returncode == 0, pull.stderr
    assert tree(out) == source
    monkeypatch.setenv("OCIFS_CONFIG", env["OCIFS_CONFIG"])  # the mounter inherits the environment
    with mounter(tmp_path) as mounts:
        mount = mounts(ref, "--cache-dir", str(tmp_path / "mount-cache"))
        assert tree(mount.path) == source
