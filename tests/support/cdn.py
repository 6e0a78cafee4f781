"""A CDN-backed registry on 127.0.0.1: distribution's ``redirect`` storage middleware answers
every blob GET with a 307 to an nginx serving the registry's storage directory — what GHCR,
Docker Hub, ECR, GAR and Quay do with object storage (docs/platform.md, "Registries in the
field"). nginx logs every request with its ``Authorization`` header, so a test can prove no
credential reached the storage host; while :meth:`StorageHost.refusing` holds, it answers 403 to
everything, as object storage answers a signed URL that has expired.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .registry import MissingToolError, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_CONFIG = """\
{user}worker_processes 1;
daemon on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{}}
http {{
    log_format probe '$request_method $uri $status range="$http_range" authorization="$http_authorization"';
    access_log {prefix}/access.log probe;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
            if (-f {prefix}/refuse) {{ return 403; }}
        }}
    }}
}}
"""


class StorageHost:
    """nginx serving ``root`` (a registry's storage directory) on a free port; ``base_url`` is
    what the registry's redirect middleware points at. :meth:`requests` reads the access log."""

    def __init__(self, work_dir: Path, root: Path) -> None:
        if not os.path.exists(NGINX):
            raise MissingToolError("nginx not found: apt-get install nginx-light (make setup installs it)")
        self.prefix = Path(work_dir)
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/"
        self.config = self.prefix / "nginx.conf"
        # As root, workers would drop to "nobody", who cannot read pytest's 0700 temp dirs.
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.config.write_text(_CONFIG.format(user=user, prefix=self.prefix, port=self.port, root=root))

    def start(self) -> StorageHost:
        subprocess.run([NGINX, "-c", str(self.config), "-p", str(self.prefix)], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while not (self.prefix / "nginx.pid").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(self.prefix / 'error.log').read_text()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        pid_file = self.prefix / "nginx.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGQUIT)

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """While inside: every request is answered 403 (the signed URLs "expired"); nginx checks
        a marker file per request, so no reload is needed either way."""
        marker = self.prefix / "refuse"
        marker.touch()
        try:
            yield
        finally:
            marker.unlink()

    def requests(self) -> list[str]:
        """Every request nginx served so far, one line each (method, path, status, Range,
        Authorization); nginx writes a line when the response is complete."""
        log = self.prefix / "access.log"
        return log.read_text().splitlines() if log.exists() else []


def redirect_config(storage: StorageHost) -> dict[str, object]:
    """The registry configuration that redirects blob GETs to ``storage``."""
    return {"middleware": {"storage": [{"name": "redirect", "options": {"baseurl": storage.base_url}}]}}
