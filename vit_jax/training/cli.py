"""Process setup for the command-line tools: one-line warnings, and Ctrl-C / SIGTERM that always end the process.

A Python signal handler runs only between bytecodes of the main thread, so an
interrupt can be lost (raised inside a garbage-collection callback, where
Python prints "Exception ignored" and carries on: JAX installs one) or held
back for as long as the main thread sits in native code (an XLA compile, an
orbax write). Here, inside `interruptible()` the handler raises `Interrupted`
(re-sending the signal to itself when it lands in a gc callback, so that it
is raised just after); outside, the process ends at once, as nothing needs
undoing there. A watchdog thread, woken by the signal's wakeup byte, ends the
process with 128 + signum if the main thread has not within `GRACE_SECONDS`.

In a job of several processes (`defer_signals`) a first signal is only
recorded: every process must stop at the same step, and
vit_jax.training.job.agree_to_stop decides which.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
import warnings
from typing import Callable, Iterator

GRACE_SECONDS = 10.0
# SIGHUP (the terminal closed) and SIGQUIT (Ctrl-\) end a run as SIGTERM does: with its cleanup and one line.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

_received: list[int] = []
_emergency_cleanups: list[Callable[[], None]] = []
_sockets: list[socket.socket] = []  # the wakeup pair lives as long as the process
_state: dict = {"raise": False, "deferred": False, "agreed": False, "grace": GRACE_SECONDS, "reported": False,
                "detail": None}
_report_lock = threading.Lock()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM, SIGHUP or SIGQUIT; `exit_code` is the shell's convention (130, 143, 129, 131)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def one_line_warnings(prog: str) -> None:
    """Warnings print as `PROG: warning: MESSAGE`, without the source line."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)

    warnings.showwarning = show


def _release_stderr() -> None:
    """A checkpoint write may be holding stderr back (orbax_output): the closing line must reach the user."""
    holder = sys.modules.get("vit_jax.training.orbax_output")  # not imported: nothing held (no import in a handler)
    if holder is not None:
        holder.release_stderr()


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _in_gc_callback(frame) -> bool:
    codes = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame) -> None:
    if _state["agreed"] and not _received:  # a multi-process job: recorded, acted on by every process at a step
        _received.append(signum)
        return
    if _state["deferred"]:
        _state["deferred"] = False
    elif _received or not _state["raise"]:  # a second Ctrl-C, or nothing to undo yet: stop now
        _release_stderr()
        print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
        _flush_and_exit(128 + signum)
    else:
        _received.append(signum)
    if _in_gc_callback(frame):  # an exception here would be printed and dropped: deliver the signal again shortly
        _state["deferred"] = True  # (raised at once, it re-entered this handler inside the same callback)
        threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, Ctrl-C / SIGTERM raise `Interrupted` (so cleanup runs) instead of ending the process."""
    previous = _state["raise"]
    _state["raise"] = True
    try:
        yield
    finally:
        _state["raise"] = previous


def _watchdog(reader: socket.socket) -> None:
    received = reader.recv(1)
    if not received:
        return
    signum = received[0]
    time.sleep(_state["grace"])
    for cleanup in list(_emergency_cleanups):
        try:
            cleanup()
        except Exception:
            pass
    _release_stderr()
    print(f"{os.path.basename(sys.argv[0])}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
    _flush_and_exit(128 + signum)


def install(prog: str) -> None:
    """Call once, first thing in a command-line entry point (main thread)."""
    one_line_warnings(prog)
    if _sockets:
        return
    reader, writer = socket.socketpair()
    _sockets.extend((reader, writer))
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    threading.Thread(target=_watchdog, args=(reader,), daemon=True, name="interrupt-watchdog").start()


def interrupted() -> bool:
    return bool(_received)


def defer_signals(grace: float) -> None:
    """From now on a first signal is only recorded (`pending_signal`); the watchdog waits `grace` seconds.

    For a job of several processes, which must all stop at the same step
    (vit_jax.training.job.agree_to_stop); a second signal still ends the process at once.
    """
    _state["agreed"] = True
    _state["grace"] = max(grace, GRACE_SECONDS)


def report_interrupt(prog: str) -> None:
    """Print the one closing line of an interrupted run (once per process, whichever thread gets here first)."""
    with _report_lock:
        if _state["reported"]:
            return
        _state["reported"] = True
    detail = _state["detail"]
    print(f"{prog}: interrupted" + (f"; {detail()}" if detail else ""), file=sys.stderr, flush=True)


def set_interrupt_detail(detail: Callable[[], str]) -> None:
    """What the closing line of an interrupted run adds (read when it is printed, after the cleanup)."""
    _state["detail"] = detail


def pending_signal() -> int:
    """The signal received and not yet acted on, else 0."""
    return _received[0] if _received else 0


def check_interrupted() -> None:
    """Raise `Interrupted` if a signal arrived whose exception was swallowed; call at safe points of a loop."""
    if _received:
        raise Interrupted(_received[0])


def on_forced_exit(cleanup: Callable[[], None]) -> Callable[[], None]:
    """Run `cleanup` if the watchdog has to end the process; returns a function that unregisters it."""
    _emergency_cleanups.append(cleanup)
    return lambda: _emergency_cleanups.remove(cleanup) if cleanup in _emergency_cleanups else None


def exit_now(code: int) -> None:
    """End the process with `code` at once, from any thread, output flushed and nothing torn down."""
    _release_stderr()
    _flush_and_exit(code)


def exit(code: int) -> None:
    """End the process with `code`; after an interrupt, without interpreter teardown.

    Teardown while XLA or orbax threads are mid-work is where interrupted runs
    crashed (exit 139) or printed orbax tracebacks after the error line.
    """
    if _received or code in (128 + s for s in SIGNALS):
        _flush_and_exit(code)
    sys.exit(code)
