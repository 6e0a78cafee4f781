"""Progress reporting for long transfers: a rich progress bar on a terminal, log lines otherwise.

The transfer code calls :class:`Progress` methods only; whether that draws a bar, writes
periodic log-friendly lines, or nothing (``--quiet``/``--json``) is decided here.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress

log = logging.getLogger(__name__)

# Without a terminal, one summary line this often keeps CI and journald logs readable.
_LOG_INTERVAL = 10.0


class Progress:
    """Bytes and chunks of one transfer. ``mode`` is "bar", "log" or "off"."""

    def __init__(self, verb: str, total_bytes: int, total_chunks: int, mode: str) -> None:
        self.verb = verb
        self.total_bytes = total_bytes
        self.total_chunks = total_chunks
        self.mode = mode
        self.bytes_done = 0
        self.chunks_done = 0
        self.chunks_skipped = 0
        self._started = time.monotonic()
        self._last_log = self._started
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    @staticmethod
    def choose_mode(quiet: bool) -> str:
        if quiet:
            return "off"
        return "bar" if sys.stderr.isatty() else "log"

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TextColumn("{task.fields[chunks]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.verb, total=self.total_bytes, chunks=self._chunk_text())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)

    def _chunk_text(self) -> str:
        text = f"{self.chunks_done}/{self.total_chunks} chunks"
        if self.chunks_skipped:
            text += f" ({self.chunks_skipped} already there)"
        return text

    def advance(self, nbytes: int, *, chunk_done: bool = False, skipped: bool = False) -> None:
        """Record ``nbytes`` more done; ``chunk_done`` counts a finished chunk (``skipped``: not sent)."""
        self.bytes_done += nbytes
        if chunk_done:
            self.chunks_done += 1
            if skipped:
                self.chunks_skipped += 1
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.bytes_done, chunks=self._chunk_text())
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last_log >= _LOG_INTERVAL:
                self._last_log = now
                log.info("%s", self.summary_line())

    def summary_line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = self.bytes_done / elapsed / (1 << 20)
        pct = 100.0 * self.bytes_done / self.total_bytes if self.total_bytes else 100.0
        return (
            f"{self.verb}: {self.bytes_done / (1 << 20):,.1f}/{self.total_bytes / (1 << 20):,.1f} MiB "
            f"({pct:.0f}%), {rate:,.1f} MiB/s, {self._chunk_text()}"
        )

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started
