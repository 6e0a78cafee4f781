"""A userspace TCP proxy on 127.0.0.1 that emulates a WAN link: delay plus a bounded window.

This kernel has no ``netem`` qdisc, so benchmarks put this proxy between a client and the
registry. Per connection and per direction it is a pipeline, not stop-and-wait:

    reader thread ──(queue of (due time, bytes))──▶ writer thread
    recv() as soon as the window allows            sleeps until due = read time + RTT/2, sendall()

- One-way delay: every piece of data is forwarded RTT/2 after the proxy read it.
- Window: at most ``window`` bytes per direction are "unacknowledged"; a byte stays
  unacknowledged until RTT/2 after it was forwarded (the ACK's trip back). So a single
  connection moves at most window / RTT, like TCP with that window — e.g. 4 MiB / 40 ms ≈
  100 MiB/s — and parallel connections add up, as they do on a real long fat network.
- Connection set-up costs one RTT (the handshake): forwarding starts RTT after accept.
- The proxy's own sockets get small kernel buffers so that little data hides in them.

Not modelled: loss, slow start, bandwidth limits. Run it standalone::

    python bench/latency_proxy.py --target 127.0.0.1:5000 --rtt-ms 40 [--listen-port 0] [--window 4M]

It prints ``LISTENING 127.0.0.1:<port>`` on stdout once it accepts connections, then runs until
SIGTERM/SIGINT; with ``--stats`` it prints bytes forwarded per direction at exit.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import signal
import socket
import sys
import threading
import time
from typing import Any

_RECV_MAX = 1 << 20
_SOCKET_BUFFER = 256 * 1024
_EOF = b""


class _Direction:
    """One direction of one connection: src → (delay, window) → dst."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float, window: int) -> None:
        self.src = src
        self.dst = dst
        self.delay = delay
        self.window = window
        self.cond = threading.Condition()
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.acks: collections.deque[tuple[float, int]] = collections.deque()  # (time acked, bytes)
        self.unacked = 0
        self.closed = False
        self.bytes = 0

    def _credit(self) -> int:
        """Wait until the window has room; return how many bytes may be read now."""
        with self.cond:
            while True:
                if self.closed:
                    return 0
                now = time.monotonic()
                while self.acks and self.acks[0][0] <= now:
                    self.unacked -= self.acks.popleft()[1]
                room = self.window - self.unacked
                if room > 0:
                    return min(room, _RECV_MAX)
                self.cond.wait(self.acks[0][0] - now if self.acks else None)

    def reader(self) -> None:
        try:
            while True:
                room = self._credit()
                if room == 0:
                    return
                data = self.src.recv(room)
                with self.cond:
                    self.queue.append((time.monotonic() + self.delay, data))
                    self.unacked += len(data)
                    self.cond.notify_all()
                if not data:
                    return
        except OSError:
            self._abort()

    def writer(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.closed:
                        self.cond.wait()
                    if self.closed and not self.queue:
                        return
                    due, data = self.queue.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
                self.bytes += len(data)
                with self.cond:
                    self.acks.append((time.monotonic() + self.delay, len(data)))
                    self.cond.notify_all()
        except OSError:
            self._abort()

    def _abort(self) -> None:
        with self.cond:
            self.closed = True
            self.queue.clear()
            self.cond.notify_all()
        for sock in (self.src, self.dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class LatencyProxy:
    """Accepts on ``listen_host:listen_port`` (0 = any free port) and forwards to ``target``."""

    def __init__(
        self,
        target: tuple[str, int],
        rtt: float,
        *,
        window: int = 4 << 20,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        if listen_host != "127.0.0.1" or target[0] not in ("127.0.0.1", "localhost"):
            raise ValueError("the latency proxy only listens on and forwards to 127.0.0.1")
        self.target = target
        self.rtt = rtt
        self.window = window
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((listen_host, listen_port))
        self.listener.listen(128)
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LatencyProxy:
        self._thread = threading.Thread(target=self.serve_forever, name="latency-proxy", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        while not self._stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _handle(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
        time.sleep(self.rtt)  # the TCP handshake over the emulated link
        delay = self.rtt / 2
        up = _Direction(client, upstream, delay, self.window)
        down = _Direction(upstream, client, delay, self.window)
        threads = [threading.Thread(target=fn, daemon=True) for fn in (up.reader, up.writer, down.reader, down.writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self._lock:
            self.bytes_up += up.bytes
            self.bytes_down += down.bytes
        client.close()
        upstream.close()


def _parse_size(text: str) -> int:
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if text[-1:] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to (127.0.0.1 only)")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="round-trip time to add (default 40)")
    parser.add_argument("--window", type=_parse_size, default=4 << 20, help="in-flight bytes per direction (4M)")
    parser.add_argument("--listen-port", type=int, default=0, help="port on 127.0.0.1 (default: any free)")
    parser.add_argument("--stats", action="store_true", help="print bytes forwarded at exit")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    proxy = LatencyProxy((host, int(port)), args.rtt_ms / 1000, window=args.window, listen_port=args.listen_port)
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    proxy.start()
    print(f"LISTENING {proxy.address}", flush=True)
    done.wait()
    proxy.stop()
    if args.stats:
        print(f"connections {proxy.connections} up {proxy.bytes_up} down {proxy.bytes_down}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
