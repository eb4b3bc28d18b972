"""vit_torch_ref.interop: timm and vit-pytorch import on a CPU-only machine, with torchvision absent or broken
(PyPI's CUDA wheel beside the CPU torch fails in its operator registrations); their models run; nothing of the
placeholders is left for other packages to find."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

CHECK = """
import importlib.util, sys, torch
from vit_torch_ref.interop import import_timm, import_vit_pytorch
timm, vit_pytorch = import_timm(), import_vit_pytorch()
model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, embed_dim=32, depth=1, num_heads=2,
                          img_size=28, patch_size=14, num_classes=3).eval()
print("timm", tuple(model(torch.zeros(1, 3, 28, 28)).shape))
vit = vit_pytorch.ViT(image_size=16, patch_size=4, num_classes=5, dim=32, depth=1, heads=2, mlp_dim=32)
print("vit_pytorch", tuple(vit(torch.zeros(1, 3, 16, 16)).shape))
print("left", "torchvision" in sys.modules, importlib.util.find_spec("torchvision") is not None)
"""


def _run(tmp_path, broken: bool) -> str:
    path = [str(tmp_path)] if broken else []
    if broken:  # what the CUDA wheel does on import beside a CPU torch
        (tmp_path / "torchvision").mkdir()
        (tmp_path / "torchvision" / "__init__.py").write_text(
            'raise RuntimeError("operator torchvision::nms does not exist")\n')
    code = f"import sys; sys.path[:0] = {path!r}\n" + textwrap.dedent(CHECK)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("broken", [False, True], ids=["absent", "broken"])
def test_timm_and_vit_pytorch_models_run_without_a_working_torchvision(tmp_path, broken):
    if not (importlib.util.find_spec("timm") and importlib.util.find_spec("vit_pytorch")):
        pytest.skip("timm or vit-pytorch is not installed (pip install --no-deps timm vit-pytorch)")
    out = _run(tmp_path, broken)
    assert "timm (1, 3)" in out and "vit_pytorch (1, 5)" in out
    assert f"left False {broken}" in out  # no placeholder stays; a broken package stays where it was
