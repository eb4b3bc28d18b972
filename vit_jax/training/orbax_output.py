"""Orbax's own output on failure: held back, so that the caller's one error line is all the user sees."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator


@contextlib.contextmanager
def quiet_failures() -> Iterator[None]:
    """Hold orbax's output back during a read or write, and print it only if the block succeeds.

    A failed orbax read or write (a damaged checkpoint, a full disk) prints a
    traceback per background thread, some from native callbacks; the error
    the caller raises says it once. Hence stderr's file descriptor, not only
    absl's logger, is redirected for the block.
    """
    _drop_closed_loop_reports()
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    sys.stderr.flush()
    saved = os.dup(2)
    _holding.append(saved)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            _holding.remove(saved)
            os.close(saved)
            logger.setLevel(level)
            if not failed:
                held.seek(0)
                os.write(2, held.read())


_previous_hook: list = []


def _drop_closed_loop_reports() -> None:
    """From the first read or write on: a failed one leaves orbax's storage threads calling back into its
    closed event loop, reported (unraisable, or by native code through sys.excepthook) at any later moment,
    even mid-way through the release of the held output. That one error says nothing: drop it, always."""
    if sys.unraisablehook is not _drop_closed_loop_callbacks:
        _previous_hook.append(sys.unraisablehook)
        sys.unraisablehook = _drop_closed_loop_callbacks
    if sys.excepthook is not _drop_closed_loop_exceptions:
        _previous_excepthook.append(sys.excepthook)
        sys.excepthook = _drop_closed_loop_exceptions
    asyncio_logger = logging.getLogger("asyncio")
    if _drop_orbax_orphans not in asyncio_logger.filters:
        asyncio_logger.addFilter(_drop_orbax_orphans)
        # Only orbax runs coroutines in this process; the ones a failed write abandons are reported when collected.
        warnings.filterwarnings("ignore", message="coroutine '.*' was never awaited", category=RuntimeWarning)


def _drop_orbax_orphans(record: logging.LogRecord) -> bool:
    """On a full disk each of orbax's concurrent writes fails; orbax raises the first, and asyncio reports every
    other ("Task/Future exception was never retrieved") whenever it is collected, long after the hold. The
    error raised for the write says it once."""
    message = record.getMessage()
    orbax = any(mark in message for mark in ("/orbax/", ".orbax-checkpoint-tmp", "OCDBT database"))
    return not (orbax and "exception was never retrieved" in message)


_holding: list[int] = []  # the real stderr of each hold in progress (a checkpoint write spans training steps)


def release_stderr() -> None:
    """Point stderr back at the terminal now, for a process about to exit in the middle of a hold."""
    if _holding:
        sys.stderr.flush()
        os.dup2(_holding[0], 2)


def _is_closed_loop(error: BaseException | None) -> bool:
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _drop_closed_loop_exceptions(kind, error, traceback) -> None:
    if not _is_closed_loop(error):
        _previous_excepthook[0](kind, error, traceback)


_previous_excepthook: list = []


def _drop_closed_loop_callbacks(unraisable) -> None:
    """After a failed read or write, orbax's storage threads keep calling back into its closed event loop."""
    if _is_closed_loop(unraisable.exc_value):
        return
    _previous_hook[0](unraisable)
