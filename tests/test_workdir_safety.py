"""A run directory is never trained from a wrong state, never shared by two runs, never a dead end."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from train_runs import REPO, TINY, final_params, losses, records, train_env

from vit_jax import train_cli as train
from vit_jax.formats.mapping import flatten
from vit_jax.training import workdir_lock
from vit_jax.training.workdir_lock import LOCK_FILE, WorkdirBusy, WorkdirLock

STEPS = 6
ARGS = TINY + ["--steps", str(STEPS), "--batch-size", "16", "--checkpoint-every", str(STEPS), "--eval-every",
               str(STEPS), "--log-every", "1", "--warmup-steps", "1"]
HOLDER = ("import sys, time\nfrom vit_jax.training.workdir_lock import WorkdirLock\n"
          "WorkdirLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(600)\n")


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("runs") / "fresh")
    assert train.main(ARGS + ["--workdir", workdir]) == 0
    return workdir


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@contextlib.contextmanager
def lock_held_elsewhere(workdir: str):
    """Another process that owns `workdir`'s lock until it is killed (SIGKILL: it cannot clean up)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], env=train_env(), cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


# -- case 1: --resume before the first checkpoint is a fresh start, not a start from zeros --------

def test_resume_before_the_first_checkpoint_gives_the_fresh_runs_numbers(fresh_run, tmp_path, capsys):
    killed = str(tmp_path / "killed")  # what a kill after config.json, before the first checkpoint, leaves
    os.makedirs(os.path.join(killed, "checkpoints"))
    shutil.copy(os.path.join(fresh_run, "config.json"), killed)
    assert train.main(["--resume", "--workdir", killed]) == 0
    assert "starting the run from step 0" in capsys.readouterr().err
    np.testing.assert_array_equal(losses(killed), losses(fresh_run))
    assert losses(killed)[-1] < losses(killed)[0]
    resumed, straight = flatten(final_params(killed)), flatten(final_params(fresh_run))
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


# -- case 3: one process owns a workdir ---------------------------------------------------------

def test_a_second_run_in_a_locked_workdir_is_one_line_naming_the_owner(fresh_run, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(fresh_run, run)
    with lock_held_elsewhere(run) as holder:
        for args in (["--resume", "--workdir", run, "--steps", str(STEPS + 2)], ARGS + ["--workdir", run]):
            assert train.main(args) == 1
            line = error_line(capsys)
            assert f"is in use by another run (PID {holder.pid} on " in line, line
    # Killed, the owner leaves its lock file behind; the kernel released the lock, so the next run takes it.
    assert os.path.isfile(os.path.join(run, LOCK_FILE))
    assert train.main(["--resume", "--workdir", run, "--steps", str(STEPS + 2)]) == 0
    assert not os.path.exists(os.path.join(run, LOCK_FILE))  # released at the end
    assert [r["step"] for r in records(run)] == list(range(1, STEPS + 3))


def test_the_lock_is_exclusive_and_released(tmp_path):
    first = WorkdirLock(str(tmp_path)).acquire()
    with pytest.raises(WorkdirBusy, match=f"PID {os.getpid()} on "):
        WorkdirLock(str(tmp_path)).acquire()
    first.release()
    assert not os.path.exists(os.path.join(tmp_path, LOCK_FILE))
    with WorkdirLock(str(tmp_path)):
        assert open(os.path.join(tmp_path, LOCK_FILE)).read().split()[0] == str(os.getpid())


# -- case 10: a run killed before its config.json is no dead end ---------------------------------

def test_a_run_killed_before_writing_its_config_can_start_again(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    os.makedirs(os.path.join(workdir, "checkpoints"))  # what a kill between the two leaves, with a stale lock
    open(os.path.join(workdir, LOCK_FILE), "w").write("999999 elsewhere\n")
    assert train.main(["--resume", "--workdir", workdir]) == 1
    assert "start it again without --resume" in error_line(capsys)
    assert train.main(ARGS + ["--workdir", workdir]) == 0
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(STEPS)]


# -- case 8: a regular file on the way to --workdir --------------------------------------------

def test_a_workdir_under_a_regular_file_is_one_error_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert train.main(ARGS + ["--workdir", str(tmp_path / "afile" / "sub" / "run")]) == 1
    line = error_line(capsys)
    assert f"{tmp_path / 'afile'} is a file, not a directory" in line, line


def test_sigkill_of_the_owner_frees_the_lock(tmp_path):
    with lock_held_elsewhere(str(tmp_path)) as holder:
        with pytest.raises(WorkdirBusy, match=f"PID {holder.pid} "):
            WorkdirLock(str(tmp_path)).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with WorkdirLock(str(tmp_path)):
            pass


# -- case 5: a full disk while checkpointing --------------------------------------------------

FULL_DISK_TRAIN = """
import os, resource, runpy, signal, sys, threading, time
sys.dont_write_bytecode = True  # only the run's own writes meet the limit
limit, after = int(sys.argv[1]), sys.argv[2]
workdir = sys.argv[sys.argv.index("--workdir") + 1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk

def fill_disk():  # once checkpoint `after` is on disk, files can no longer grow past `limit` bytes
    while after != "now" and not os.path.isdir(os.path.join(workdir, "checkpoints", after)):
        time.sleep(0.002)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

threading.Thread(target=fill_disk, daemon=True).start() if after != "now" else fill_disk()
sys.argv = ["train.py"] + sys.argv[3:]
runpy.run_path("train.py", run_name="__main__")
"""
# Above what a run writes besides checkpoints (config.json 3.8 kB, metrics and events < 3 kB), below the
# checkpoint's metadata files, whose sizes are fixed (12-33 kB). Its data files will not do: how orbax
# splits them into files depends on timing, and every piece can come out small.
CHECKPOINT_DATA_LIMIT = 8_000


@pytest.mark.parametrize("after", ["3", "now"], ids=["a-later-checkpoint", "the-first-checkpoint"])
def test_a_full_disk_while_checkpointing_is_one_line_and_resume_finishes_the_run(fresh_run, tmp_path, after):
    workdir = str(tmp_path / "run")
    args = ARGS + ["--checkpoint-every", "3", "--eval-every", "3", "--workdir", workdir]
    result = subprocess.run([sys.executable, "-c", FULL_DISK_TRAIN, str(CHECKPOINT_DATA_LIMIT), after, *args],
                            env=train_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    saved = "the last saved step, 3, is intact" if after == "3" else "no step was saved before it"
    step = 6 if after == "3" else 3
    assert result.stderr.splitlines() == [
        f"train.py: error: cannot write checkpoint step {step} in {workdir}/checkpoints (File too large (errno 27)); "
        f"{saved}; free space, then continue with --resume --workdir {workdir}"], result.stderr[-3000:]
    if after == "now":  # the run stays (its config.json): --resume starts it over (tested above)
        assert os.path.isfile(os.path.join(workdir, "config.json"))
        return
    # With space again, --resume finishes the run as if nothing had happened.
    assert train.main(["--resume", "--workdir", workdir]) == 0
    resumed, straight = flatten(final_params(workdir)), flatten(final_params(fresh_run))
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
    assert [r["step"] for r in records(workdir)] == list(range(1, STEPS + 1))


# -- case 6: --resume on a read-only run directory ----------------------------------------------

@contextlib.contextmanager
def read_only(path: str):
    """`path` read-only: by permissions, or (as root, whom permissions do not stop) by a read-only bind mount."""
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", path], check=True)
        try:
            yield
        finally:
            subprocess.run(["chmod", "-R", "u+w", path], check=True)
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", path, path], capture_output=True).returncode != 0:
        pytest.skip("running as root without the right to mount: cannot make a directory read-only")
    try:
        yield
    finally:
        subprocess.run(["umount", path], check=True)


def test_resume_on_a_read_only_run_is_one_line_and_eval_only_still_reads_it(fresh_run, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(fresh_run, run)
    with read_only(run):
        assert train.main(["--resume", "--workdir", run, "--steps", str(STEPS + 2)]) == 1
        line = error_line(capsys)
        assert line.startswith(f"train.py: error: --workdir {run}: cannot write there (") and "--eval-only" in line
        assert train.main(["--eval-only", "--workdir", run]) == 0
        assert '"step": 6' in capsys.readouterr().out


def test_an_export_over_a_device_is_refused_before_training(tmp_path, capsys):
    os.symlink("/dev/null", tmp_path / "final.safetensors")
    assert train.main(ARGS + ["--workdir", str(tmp_path / "run"), "--export-torch",
                              str(tmp_path / "final.safetensors")]) == 1
    assert error_line(capsys) == (f"train.py: error: --export-torch {tmp_path / 'final.safetensors'}: is a symlink "
                                  f"to a character device, not a regular file; refusing to replace it (choose a file "
                                  f"path)")
    assert os.path.islink(tmp_path / "final.safetensors") and not os.path.exists(tmp_path / "run")


# -- the lock file is opened as every output is: regular files only, never followed, never blocking ----

def _rescue_if_blocked(fifo: str) -> threading.Timer:
    """Opening the FIFO's other end unblocks an open() stuck on it: the test then fails instead of hanging."""
    def rescue():
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    timer = threading.Timer(20, rescue)
    timer.start()
    return timer


def test_a_fifo_as_the_lock_file_is_one_line_not_a_hang(tmp_path, capsys):
    fifo = str(tmp_path / LOCK_FILE)
    os.mkfifo(fifo)
    timer = _rescue_if_blocked(fifo)
    try:
        for args in (["--resume", "--workdir", str(tmp_path)], ARGS + ["--workdir", str(tmp_path)]):
            assert train.main(args) == 1
            assert f"{fifo} is a FIFO, not a regular lock file" in error_line(capsys)
    finally:
        timer.cancel()


@pytest.mark.parametrize("target", ["outside.txt", "missing.txt"], ids=["to-a-file", "dangling"])
def test_a_symlink_as_the_lock_file_is_refused_and_never_written_through(tmp_path, capsys, target):
    workdir, outside = tmp_path / "run", tmp_path / "outside.txt"
    workdir.mkdir()
    outside.write_text("someone's notes\n")
    os.symlink(tmp_path / target, workdir / LOCK_FILE)
    with pytest.raises(WorkdirBusy, match=f"is a symlink \\(to {tmp_path / target}\\), not a regular lock file"):
        WorkdirLock(str(workdir)).acquire()
    assert train.main(ARGS + ["--workdir", str(workdir)]) == 1
    assert "is a symlink" in error_line(capsys)
    assert outside.read_text() == "someone's notes\n"
    assert not (tmp_path / "missing.txt").exists() and os.listdir(workdir) == [LOCK_FILE]


def test_a_filesystem_without_flock_leaves_no_lock_file(tmp_path, monkeypatch):
    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(workdir_lock.fcntl, "flock", unsupported)
    with pytest.warns(UserWarning, match="cannot lock .* make sure no other run uses"):
        WorkdirLock(str(tmp_path)).acquire().release()
    assert os.listdir(tmp_path) == []


def test_an_existing_export_is_refused_before_training_unless_overwrite(tmp_path, capsys):
    export = tmp_path / "final.safetensors"
    export.write_text("an earlier export\n")
    assert train.main(ARGS + ["--workdir", str(tmp_path / "run"), "--export-torch", str(export)]) == 1
    assert f"--export-torch {export}: already exists (a file); pass --overwrite" in error_line(capsys)
    assert not (tmp_path / "run").exists() and export.read_text() == "an earlier export\n"
