"""One multi-process job: it stops as one on a signal, and a lost process is one line on each survivor.

A signal reaches one process; stopping that process alone would leave the
others blocked in a collective until they crash. So in a job of several
processes a signal is only recorded (`cli.defer_signals`), and every step
starts with `agree_to_stop`: each process posts its pending signal to the
coordination service and meets the others at a barrier. When any is set,
every process raises `cli.Interrupted` at the same step, after the same
checkpoints, and exits with the same status (130, 143).

A process that dies (SIGKILL, a crash, a lost host) stops sending heartbeats
to the coordination service (a dead process 0 takes the service with it).
Within `timeout` seconds each survivor is told, and instead of the C++
runtime's abort it prints one line that
names the lost process, the last checkpoint and the command that resumes,
then exits with LOST_PEER_EXIT. JAX's preemption service is switched off: it
takes SIGTERM for itself and never stops the run.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import signal
import sys
import tempfile
import time
from typing import Any

import jax

from vit_jax.formats.training_run import CHECKPOINTS
from vit_jax.training import cli

DEFAULT_TIMEOUT = 60  # seconds without a heartbeat before a process counts as gone
LOST_PEER_EXIT = 3
_KEY = "vit_jax/stop"
_job: dict[str, Any] = {"workdir": None, "stopping": 0, "stopped_after": None, "held_log": None,
                        "barrier_ms": 600_000}




def last_checkpoint(workdir: str | None) -> int | None:
    """The newest complete step under WORKDIR/checkpoints (orbax renames a step's directory to its number last)."""
    directory = os.path.join(workdir, CHECKPOINTS) if workdir else None
    if directory is None or not os.path.isdir(directory):
        return None
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    return max(steps) if steps else None


def _lost_tasks(status: str) -> set[int]:
    """The processes the coordination service's error text names as gone."""
    found = re.findall(r"task:(\d+)|Task (\d+) heartbeat timeout", status)
    for listed in re.findall(r"stopped sending heartbeats\):\s*([\d,\s]+)", status):
        found += [(number, "") for number in re.findall(r"\d+", listed)]
    return {int(a or b) for a, b in found}


def lost_peer_message(status: str, process_id: int, num_processes: int, workdir: str | None) -> str:
    """'process 1 of 2 is gone; the last checkpoint is step N; resume with ...' from the runtime's status text."""
    found = _lost_tasks(status)
    if not found and num_processes == 2:  # the runtime's text did not say: of two, it is the other one
        found = {1 - process_id}
    others = sorted(found - {process_id}) or ([0] if process_id != 0 else [])  # unnamed: the service went
    if not others:
        who = f"a process of {num_processes} is"
    elif len(others) == 1:
        who = f"process {others[0]} of {num_processes}{' (the coordinator)' if others[0] == 0 else ''} is"
    else:
        who = f"processes {', '.join(map(str, others))} of {num_processes} are"
    step = last_checkpoint(workdir)
    where = f"the last checkpoint is step {step}" if step is not None else "no checkpoint was written yet"
    again = f"--resume --workdir {workdir}" if workdir else "--resume --workdir WORKDIR"
    return f"{who} gone; {where}; resume with train.py {again} (start every process again)"


def _on_lost_peer(process_id: int, num_processes: int, status: Any) -> None:
    """Called by the coordination client from its own thread: one line, then end this process."""
    prog = os.path.basename(sys.argv[0])
    code = _job["stopping"] or LOST_PEER_EXIT
    try:
        if _job["stopping"]:  # the job agreed to stop and a faster process already left: that is no loss
            cli.report_interrupt(prog)
        else:
            print(f"{prog}: error: {lost_peer_message(str(status), process_id, num_processes, _job['workdir'])}",
                  file=sys.stderr, flush=True)
    finally:
        os._exit(code)  # (from the runtime's thread: nothing else may run, output is flushed above)


def join(coordinator_address: str, num_processes: int, process_id: int, timeout: int = DEFAULT_TIMEOUT,
         workdir: str | None = None) -> None:
    """jax.distributed.initialize, with a lost peer reported in one line after `timeout` seconds.

    `workdir` is where that line looks for the last checkpoint.
    """
    from jax._src import distributed  # the client's missed-heartbeat callback is not a public argument

    _job["workdir"] = os.path.abspath(workdir) if workdir else None
    _job["barrier_ms"] = 1000 * max(600, 10 * timeout)  # a step apart at most, but one may be compiling

    jax.config.update("jax_enable_preemption_service", False)
    callback = functools.partial(_on_lost_peer, process_id, num_processes)
    make_client = distributed._jax.get_distributed_runtime_client
    patched = functools.partial(make_client, missed_heartbeat_callback=callback)
    distributed._jax.get_distributed_runtime_client = patched
    try:
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id,
                                   initialization_timeout=max(timeout, 30), heartbeat_timeout_seconds=timeout,
                                   shutdown_timeout_seconds=timeout)
    finally:
        distributed._jax.get_distributed_runtime_client = make_client
    if num_processes > 1:
        cli.defer_signals(grace=2 * timeout)  # a stop waits for every process to reach its next step
        cli.set_interrupt_detail(_stop_detail)
        _hold_runtime_log()
        _catch_runtime_abort(process_id, num_processes)
        _wait_for_peers_on_error(timeout)


def _hold_runtime_log() -> None:
    """The C++ runtime's log lines (a lost peer prints a dozen) go to an unnamed file; Python's stderr stays.

    The survivor's own line says what happened; the runtime's view of it is
    the same fact many times over.
    """
    sys.stderr.flush()
    terminal = os.dup(2)
    held = tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    _job["held_log"] = held
    sys.stderr = os.fdopen(terminal, "w", buffering=1)


def _held_log_tail() -> str:
    held = _job["held_log"]
    try:
        held.seek(max(0, os.fstat(held.fileno()).st_size - 20000))
        return held.read().decode(errors="replace")
    except (OSError, ValueError):
        return ""


def _catch_runtime_abort(process_id: int, num_processes: int) -> None:
    """The runtime aborts a process whose peer is gone (its error callback cannot even be called: a std::bad_cast
    ends in abort()); a native SIGABRT handler turns that into the lost-peer line and LOST_PEER_EXIT.

    The handler calls back into Python (ctypes takes the GIL), reads the held
    runtime log for the lost process's number, prints and leaves with os._exit.
    """
    def on_abort(signum: int) -> None:
        _on_lost_peer(process_id, num_processes, _held_log_tail())

    handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(on_abort)
    _job["abort_handler"] = handler  # kept alive for the process's life
    ctypes.CDLL(None).signal(signal.SIGABRT, handler)


def _wait_for_peers_on_error(timeout: int) -> None:
    """An error that reaches the top is, in a job, most often a collective whose peer is gone ('Connection
    closed by peer'): give the coordination service the time to say who, so that its one line is printed."""
    previous = sys.excepthook

    def hook(kind, error, traceback) -> None:
        if not issubclass(kind, KeyboardInterrupt):
            time.sleep(timeout + 5)  # _on_lost_peer ends the process meanwhile if a peer is gone
        previous(kind, error, traceback)
        cli.exit_now(1)

    sys.excepthook = hook


def _stop_detail() -> str:
    step, last = _job["stopped_after"], last_checkpoint(_job["workdir"])
    stopped = f"every process of {jax.process_count()} stopped after step {step}" if step is not None else ""
    kept = f"the last checkpoint is step {last}" if last is not None else "no checkpoint was written"
    return "; ".join(filter(None, (stopped, kept)))


def agree_to_stop(step: int) -> None:
    """Raise cli.Interrupted in every process if any of them got a signal; call at the same point of each step.

    `step` is the last step completed (its checkpoint, if one was due, is written by then). The agreement
    goes through the coordination service's key-value store and a barrier, not an XLA collective: one
    issued from this thread could interleave with orbax's own collectives in its writer threads.
    """
    if jax.process_count() == 1:
        cli.check_interrupted()
        return
    from jax._src import distributed

    client = distributed.global_state.client
    pending = cli.pending_signal()
    if pending:  # under this step's key: a slower process still reading an earlier step never sees it
        client.key_value_set(f"{_KEY}/{step}/{jax.process_index()}", str(pending), allow_overwrite=True)
    client.wait_at_barrier(f"{_KEY}/{step}", _job["barrier_ms"])  # every key of this step is set by now
    signals = [int(value) for _, value in client.key_value_dir_get(f"{_KEY}/{step}/")]
    if signals:
        _job["stopping"], _job["stopped_after"] = 128 + signals[0], step
        raise cli.Interrupted(signals[0])
