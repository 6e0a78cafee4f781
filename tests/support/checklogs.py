"""Fail any test that logged a WARNING or worse it did not declare (after s3ql's pytest_checklogs).

Owns: the autouse ``check_logs`` fixture, the ``expect_log`` fixture / :func:`assert_logs`
context manager, and the ``expected_log`` marker. Must not: touch stdout/stderr checking
(pytest's ``-W`` options own Python warnings) or change logger levels.

Declaring expected records, three ways:

* ``with expect_log(r"retrying .* 503", count=2): ...`` (fixture) or ``with assert_logs(...)``
  (plain import): records emitted *inside the block*, from any thread, that match are allowed.
* ``@pytest.mark.expected_log(r"pattern", level=logging.ERROR, count=None, logger="ocifs.x")``:
  allowed anywhere in the test's setup, call and teardown.
* Both: ``pattern`` is a regex searched (``re.search``) in the *formatted* message;
  ``level`` matches exactly (default WARNING, so an expected warning does not excuse an
  ERROR); ``logger`` (optional) matches that logger and its children; ``count=None`` allows
  any number including zero, an int demands exactly that many.

Records are seen through pytest's ``caplog`` handler on the root logger, so a logger with
``propagate = False`` escapes the check. Warnings logged while a module- or session-scoped
fixture tears down come after the last check and are not caught.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import pytest

MARKER = "expected_log"
MARKER_HELP = (
    f"{MARKER}(pattern, level=logging.WARNING, count=None, logger=None): the test may log records"
    " matching pattern (re.search on the formatted message) at exactly that level"
)
_IGNORE_ATTR = "checklogs_ignore"


@dataclass(slots=True)
class LogExpectation:
    """One declared expectation; ``records`` collects what it matched (for further asserts)."""

    pattern: re.Pattern[str]
    level: int = logging.WARNING
    count: int | None = None
    logger: str | None = None
    records: list[logging.LogRecord] = field(default_factory=list)

    def matches(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is one this expectation allows."""
        if record.levelno != self.level:
            return False
        if self.logger is not None and not (record.name == self.logger or record.name.startswith(self.logger + ".")):
            return False
        return self.pattern.search(record.getMessage()) is not None

    def describe(self) -> str:
        """A short human description for failure messages."""
        where = f" from {self.logger}" if self.logger else ""
        return f"{logging.getLevelName(self.level)} /{self.pattern.pattern}/{where}"

    def check_count(self) -> None:
        """``pytest.fail`` unless the number of matches equals ``count`` (if set)."""
        if self.count is not None and len(self.records) != self.count:
            seen = "".join(f"\n  {format_record(r)}" for r in self.records)
            pytest.fail(
                f"expected {self.count} log record(s) {self.describe()}, got {len(self.records)}{seen}",
                pytrace=False,
            )


def _expectation(
    pattern: str | re.Pattern[str],
    level: int | str = logging.WARNING,
    count: int | None = None,
    logger: str | None = None,
) -> LogExpectation:
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(f"unknown log level {level!r}")
    return LogExpectation(re.compile(pattern), level, count, logger)


def format_record(record: logging.LogRecord) -> str:
    """``LEVEL logger: message`` (first line of the message only)."""
    message = record.getMessage().splitlines()[0] if record.getMessage() else ""
    return f"{record.levelname} {record.name}: {message}"


class _MarkingHandler(logging.Handler):
    """Marks records an expectation allows; installed on the root logger for a block."""

    def __init__(self, expectation: LogExpectation) -> None:
        super().__init__(logging.NOTSET)
        self.expectation = expectation

    def emit(self, record: logging.LogRecord) -> None:
        if self.expectation.matches(record):
            setattr(record, _IGNORE_ATTR, True)
            self.expectation.records.append(record)


@contextmanager
def assert_logs(
    pattern: str | re.Pattern[str],
    level: int | str = logging.WARNING,
    count: int | None = None,
    logger: str | None = None,
) -> Iterator[LogExpectation]:
    """Allow matching records logged inside the block; with ``count``, demand exactly that many.

    Yields the :class:`LogExpectation`, whose ``records`` fill as matches arrive.
    """
    expectation = _expectation(pattern, level, count, logger)
    handler = _MarkingHandler(expectation)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield expectation
    finally:
        root.removeHandler(handler)
    expectation.check_count()


@pytest.fixture
def expect_log() -> Callable[..., AbstractContextManager[LogExpectation]]:
    """The :func:`assert_logs` context manager, for tests that prefer a fixture to an import."""
    return assert_logs


@pytest.fixture(autouse=True)
def check_logs(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if an undeclared record of level WARNING or above was logged.

    Autouse fixtures are set up before the others of their scope, so records from the setup
    and teardown of function-scoped fixtures are checked too.
    """
    yield
    expectations = [_expectation(*marker.args, **marker.kwargs) for marker in request.node.iter_markers(MARKER)]
    unexpected: list[logging.LogRecord] = []
    for when in ("setup", "call", "teardown"):
        for record in caplog.get_records(when):
            if record.levelno < logging.WARNING or getattr(record, _IGNORE_ATTR, False):
                continue
            for expectation in expectations:
                if expectation.matches(record):
                    expectation.records.append(record)
                    break
            else:
                unexpected.append(record)
    if unexpected:
        lines = "".join(f"\n  {format_record(r)}" for r in unexpected)
        pytest.fail(
            f"test logged {len(unexpected)} unexpected record(s) at WARNING or above:{lines}\n"
            "declare expected ones with `with expect_log(pattern):` or"
            f" @pytest.mark.{MARKER}(pattern)",
            pytrace=False,
        )
    for expectation in expectations:
        expectation.check_count()


def register(config: pytest.Config) -> None:
    """Register the marker (call from ``pytest_configure``; the suite runs ``--strict-markers``)."""
    config.addinivalue_line("markers", MARKER_HELP)
