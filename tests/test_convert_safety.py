"""Conversion outputs are one unit (weights + config JSON), survive kills and full disks, and hold float weights."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from checkpoint_writers import random_flax_params, write_google_npz

from parity.convert import convert
from parity.convert_cli import main
from vit_jax import get_config
from vit_jax.formats import ConversionError
from vit_jax.formats.read import read_flax_params

CONFIG = get_config("ViT-testing")
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def npz(tmp_path):
    write_google_npz(tmp_path / "src.npz", random_flax_params(CONFIG))
    return tmp_path / "src.npz"


def run_python(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, **kwargs)


# -- item 4: the weights file and its config JSON are one unit --------------------------------

KILL_BETWEEN_RENAMES = """
import os, sys
from vit_jax.formats import base
from parity.convert import convert
real_replace, renamed = os.replace, []
def replace(src, dst):
    real_replace(src, dst)
    if not str(dst).endswith((".tmp", ".replacing")):
        renamed.append(dst)
        if len(renamed) == 1:
            os._exit(9)  # as a SIGKILL would: no cleanup
base.os.replace = replace
convert(sys.argv[1], sys.argv[2], config=sys.argv[3] if len(sys.argv) > 3 else None, overwrite=True)
"""


def test_a_kill_between_the_two_renames_is_refused_by_readers_and_completed_by_the_next_write(tmp_path, npz):
    dst = tmp_path / "out.npz"
    convert(npz, dst)  # the old pair: Google numerics (tanh GELU)
    exact = CONFIG.replace(gelu="exact", layer_norm_eps=1e-5)
    exact_json = tmp_path / "exact.json"
    exact_json.write_text(exact.to_json())

    result = run_python(KILL_BETWEEN_RENAMES, npz, dst, exact_json)
    assert result.returncode == 9, result.stderr
    # New weights beside the old config JSON: a reader must not pair them up.
    assert json.loads(Path(str(dst) + ".json").read_text())["gelu"] == "tanh"
    with pytest.raises(ConversionError, match="interrupted"):
        read_flax_params(dst)

    convert(npz, tmp_path / "other.npz")  # a write elsewhere leaves it alone
    assert (tmp_path / ".out.npz.replacing").exists()
    convert(npz, dst, config=exact_json, overwrite=True)  # the next write there finishes and replaces the pair
    config, _ = read_flax_params(dst)
    assert (config.gelu, config.layer_norm_eps) == ("exact", 1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["src.npz", "out.npz", "out.npz.json", "exact.json", "other.npz", "other.npz.json"])


KILL_MID_WRITE = """
import os, sys
import parity.convert
from vit_jax.formats import flax_ckpt
def killing(real_write):
    def write(path, *args, **kwargs):
        real_write(path, *args, **kwargs)
        os._exit(9)  # the temporary is complete, nothing renamed yet
    return write
flax_ckpt.write = killing(flax_ckpt.write)  # msgpack files
parity.convert.write_orbax = killing(parity.convert.write_orbax)  # orbax directories
parity.convert.convert(sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize("dst_name", ["out.msgpack", "out_dir"])
def test_temporaries_of_a_killed_conversion_are_removed_by_the_next_one(tmp_path, npz, dst_name):
    dst = tmp_path / dst_name
    result = run_python(KILL_MID_WRITE, npz, dst)
    assert result.returncode == 9, result.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{dst_name}.")]
    assert leftovers, "the kill left nothing to clean up; the test did not exercise anything"
    assert not dst.exists()
    convert(npz, dst)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    config, params = read_flax_params(dst)
    assert config.hidden_size == CONFIG.hidden_size


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
from parity.convert_cli import main
sys.exit(main([sys.argv[1], sys.argv[2], "-q"] + sys.argv[4:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("dst_name, extra", [
    ("out.npz", []), ("out.msgpack", []), ("out_dir", []), ("out.safetensors", []), ("out.pt", []),
    ("out_hf", ["--to", "hf"]),
])
def test_a_full_disk_gives_one_error_line_exit_2_and_nothing_partial(tmp_path, npz, dst_name, extra):
    big = CONFIG.replace(hidden_size=256, mlp_dim=512, num_heads=4)  # about 4 MB of weights
    write_google_npz(tmp_path / "big.npz", random_flax_params(big))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run_python(FULL_DISK, tmp_path / "big.npz", out_dir / dst_name, 200_000, *extra)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "nothing was written" in error_lines[0], result.stderr
    assert list(out_dir.iterdir()) == []


# -- item 5: weights must be floating point, and finite unless asked --------------------------

@pytest.mark.parametrize("dtype", [np.int32, np.bool_])
def test_integer_and_bool_tensors_are_refused_by_name(tmp_path, capsys, dtype):
    flat = random_flax_params(CONFIG)
    key = "Transformer/encoder_norm/scale"
    flat[key] = flat[key].astype(dtype)
    write_google_npz(tmp_path / "bad.npz", flat)
    assert main([str(tmp_path / "bad.npz"), str(tmp_path / "out.safetensors"), "-q"]) == 2
    err = capsys.readouterr().err
    assert key in err and np.dtype(dtype).name in err and "floating point" in err, err
    assert not (tmp_path / "out.safetensors").exists()


def test_non_finite_weights_are_refused_unless_asked_for(tmp_path, capsys):
    flat = random_flax_params(CONFIG)
    key = "head/bias"
    flat[key][1] = np.nan
    flat[key][2] = np.inf
    write_google_npz(tmp_path / "nan.npz", flat)
    assert main([str(tmp_path / "nan.npz"), str(tmp_path / "out.npz"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "head/bias" in err and "2 non-finite" in err and "--allow-nonfinite" in err, err
    assert not (tmp_path / "out.npz").exists()

    assert main([str(tmp_path / "nan.npz"), str(tmp_path / "out.npz"), "-q", "--allow-nonfinite"]) == 0
    _, params = read_flax_params(tmp_path / "out.npz", allow_nonfinite=True)
    assert np.isnan(params["head"]["bias"][1]) and np.isinf(params["head"]["bias"][2])
    with pytest.raises(ConversionError, match="non-finite"):
        read_flax_params(tmp_path / "out.npz")


# -- item 9: a config's head dropped because the file has none --------------------------------

def test_a_config_head_dropped_for_lack_of_head_tensors_warns(tmp_path):
    flat = {k: v for k, v in random_flax_params(CONFIG).items() if not k.startswith("head/")}
    write_google_npz(tmp_path / "headless.npz", flat)
    config_json = tmp_path / "ten.json"
    config_json.write_text(CONFIG.replace(num_classes=10).to_json())
    with pytest.warns(UserWarning, match="10-class head of the given config is dropped"):
        config, params = read_flax_params(tmp_path / "headless.npz", config=config_json)
    assert config.num_classes == 0 and "head" not in params
    # Asking for a fresh head is not news.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config, params = read_flax_params(tmp_path / "headless.npz", config=config_json, num_classes=10)
    assert params["head"]["kernel"].shape == (CONFIG.hidden_size, 10)


@pytest.mark.slow
def test_sigterm_during_a_conversion_exits_143_and_leaves_nothing(tmp_path):
    import signal
    import time

    big = CONFIG.replace(hidden_size=512, mlp_dim=2048, num_heads=8, num_layers=4)  # about 50 MB: long enough to catch
    write_google_npz(tmp_path / "big.npz", random_flax_params(big))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # `python -m parity convert`, with progress lines even for this small model: they say when to signal
    code = ("import runpy, sys; import vit_jax.formats.read as read; read.PROGRESS_MIN_ELEMENTS = 0; "
            f"sys.argv = ['parity', 'convert', {str(tmp_path / 'big.npz')!r}, {str(out_dir / 'big.safetensors')!r}]; "
            "runpy.run_module('parity', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        line = proc.stderr.readline()
        if "converted" in line:  # reading and converting: temporaries may appear any moment
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "interrupted" in err, err
    assert list(out_dir.iterdir()) == []


# -- what a conversion must never replace, and what a killed one must not leave -----------

SPECIAL_FILES = {
    "FIFO": lambda p: os.mkfifo(p),
    "socket": lambda p: socket.socket(socket.AF_UNIX).bind(str(p)),
    "symlink to a character device": lambda p: os.symlink("/dev/null", p),
    "character device": lambda p: os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(1, 3)),
}


@pytest.mark.parametrize("kind", list(SPECIAL_FILES))
@pytest.mark.parametrize("dst_name", ["out.npz", "out.safetensors"])
def test_a_device_fifo_or_socket_is_never_replaced(tmp_path, npz, capsys, kind, dst_name):
    dst = tmp_path / dst_name
    try:
        SPECIAL_FILES[kind](dst)
    except PermissionError:
        pytest.skip("creating a device node needs root")
    before = os.lstat(dst)
    assert main([str(npz), str(dst)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {dst}: is a {kind}, not a regular file; refusing to replace it (choose a file path)", err
    after = os.lstat(dst)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src.npz", dst_name])
    # Only the weights' own name is checked up front; the config JSON beside it is checked too.
    os.remove(dst)
    SPECIAL_FILES[kind](tmp_path / f"{dst_name}.json")
    assert main([str(npz), str(dst)]) == 2
    assert "refusing to replace it" in capsys.readouterr().err
    assert not dst.exists()


KILL_IN_SAFETENSORS = """
import resource, signal, sys
sys.dont_write_bytecode = True  # only the conversion's writes meet the limit
from parity.convert import convert
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # a write past the limit kills the process mid-write, as kill -9 would
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
convert(sys.argv[1], sys.argv[2])
"""


def test_a_conversion_killed_inside_safetensors_leaves_nothing_the_next_one_keeps(tmp_path, npz):
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "model.safetensors"
    result = run_python(KILL_IN_SAFETENSORS, npz, dst)
    assert result.returncode == -signal.SIGXFSZ, result.stderr
    assert list(out.iterdir()), "the kill left nothing to clean up; the test did not exercise anything"
    convert(npz, dst)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "model.safetensors.json"]


def test_an_output_under_a_regular_file_is_one_error_line(tmp_path, npz, capsys):
    from parity.report_cli import main as report_main

    (tmp_path / "existing.txt").write_text("x")
    assert main([str(npz), str(tmp_path / "existing.txt" / "out.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"{tmp_path / 'existing.txt'} is a file, not a directory" in err, err
    assert report_main(["--config", "ViT-testing", "--out", str(tmp_path / "existing.txt" / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path / 'existing.txt'} is a file, not a directory" in err, err
