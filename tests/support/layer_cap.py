"""A reverse proxy for tests that refuses manifests of more than N layers, as Amazon ECR does.

Owns: one loopback listener (a threaded ``http.server``) that forwards every request to the real
registry unchanged — ``Host`` included, so upload ``Location`` URLs point back at it — except a
manifest ``PUT`` whose ``layers`` outnumber ``max_layers``: that one is answered as ECR answers
it and never reaches the registry. Every request is recorded so a test can count blob uploads.

ECR's answer, as users reported it (github.com/openai/tart/issues/890)::

    405 {"errors":[{"code":"UNSUPPORTED","message":"Invalid parameter at 'ImageManifest' failed
         to satisfy constraint: 'Limit on number of layers per image exceeded'"}]}

Must not: listen anywhere but loopback, or log (the suite fails tests that log warnings).
Bodies are read whole (tests push megabytes, not gigabytes); ``Transfer-Encoding: chunked``
request bodies are decoded and forwarded with a length.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ECR_LAYER_LIMIT_STATUS = 405
ECR_LAYER_LIMIT_BODY = json.dumps(
    {
        "errors": [
            {
                "code": "UNSUPPORTED",
                "message": "Invalid parameter at 'ImageManifest' failed to satisfy constraint: "
                "'Limit on number of layers per image exceeded'",
            }
        ]
    }
).encode()

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class LayerCapProxy:
    """``with LayerCapProxy(registry.host, max_layers=3) as proxy:`` then push to ``proxy.host``.

    ``records`` holds ``(method, path)`` of every request, oldest first; ``refused`` counts the
    manifests refused for their layers; ``errors`` unexpected failures (tests assert it is empty).
    """

    def __init__(self, upstream: str, *, max_layers: int) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.max_layers = max_layers
        self.records: list[tuple[str, str]] = []
        self.refused = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="layer-cap-proxy", daemon=True)

    def __enter__(self) -> LayerCapProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def count(self, method: str, path_contains: str) -> int:
        with self._lock:
            return sum(1 for m, p in self.records if m == method and path_contains in p)

    def blob_uploads(self) -> int:
        """Requests that start or finish a blob upload (POST and PUT under ``/blobs/uploads/``)."""
        return self.count("POST", "/blobs/uploads/") + self.count("PUT", "/blobs/uploads/")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response_only(status)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                if self.command == "HEAD":
                    length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
                    self.send_header("Content-Length", length)
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)

            def _handle(self) -> None:
                path = self.path.split("?", 1)[0]
                with proxy._lock:
                    proxy.records.append((self.command, path))
                body = self._body()
                if self.command == "PUT" and "/manifests/" in path and self._too_many_layers(body):
                    with proxy._lock:
                        proxy.refused += 1
                    self._answer(ECR_LAYER_LIMIT_STATUS, [("Content-Type", "application/json")], ECR_LAYER_LIMIT_BODY)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    if body or self.command in ("PUT", "POST", "PATCH"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    self._answer(response.status, response.getheaders(), data)
                finally:
                    conn.close()

            def _too_many_layers(self, body: bytes) -> bool:
                try:
                    layers = json.loads(body).get("layers", [])
                except (ValueError, AttributeError):
                    return False
                return isinstance(layers, list) and len(layers) > proxy.max_layers

            def _safe(self) -> None:
                try:
                    self._handle()
                except (ConnectionError, TimeoutError):
                    self.close_connection = True
                except Exception as exc:  # a proxy bug must fail the test, not vanish
                    proxy.errors.append(f"{type(exc).__name__}: {exc}")
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _safe

        return Handler
