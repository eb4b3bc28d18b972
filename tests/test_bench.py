"""FLOP counting against docs/design.md's yardsticks, and a real (tiny) benchmark run."""

import json

import pytest

from benchmarks import model_bench as bench
from vit_jax import get_config
from vit_jax.flops import forward_flops, train_step_flops

# docs/design.md: training FLOPs per image at 224 px (3x forward).
YARDSTICKS_GFLOP = {"ViT-Ti_16": 7.5, "ViT-S_16": 27.6, "ViT-B_16": 105.0, "ViT-L_16": 369.0}


@pytest.mark.parametrize("name", sorted(YARDSTICKS_GFLOP))
def test_train_flops_match_yardsticks(name):
    assert train_step_flops(get_config(name)) / 1e9 == pytest.approx(YARDSTICKS_GFLOP[name], rel=0.01)


def test_flops_count_attention_and_heads():
    base = get_config("ViT-Ti_16")
    # the attention core grows with the square of the sequence length
    s, d = base.seq_len, base.hidden_size
    assert forward_flops(base.replace(num_classes=0)) == forward_flops(base) - 2 * d * 1000
    assert forward_flops(base.replace(num_layers=13)) - forward_flops(base) >= 4 * s * s * d


def test_bench_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main([
        "--presets", "ViT-testing", "--image-size", "16", "--batch", "8", "--repeats", "2",
        "--warmup", "1", "--no-torch-compile", "--json", str(out),
    ])
    assert code == 0
    result = json.loads(out.read_text())
    assert [(r["preset"], r["mode"]) for r in result["rows"]] == [("ViT-testing", "infer"), ("ViT-testing", "train")]
    for row in result["rows"]:
        for backend in ("jax", "torch"):
            stats = row["backends"][backend]
            assert len(stats["times_s"]) == 2 and stats["images_per_s"] > 0
        assert row["jax_over_torch"] == pytest.approx(
            row["backends"]["jax"]["images_per_s"] / row["backends"]["torch"]["images_per_s"]
        )
        assert row["backends"]["jax"]["compile_s"] > 0
    printed = capsys.readouterr().out
    assert "| ViT-testing | train | 8 |" in printed
    # results differ a lot between CPU families: the table and the JSON name the host CPU
    assert result["device"]["cpu_model"] and f"host CPU {result['device']['cpu_model']}" in printed
    assert result["device"]["malloc"] in ("system", "tcmalloc", "jemalloc", "mimalloc")
    assert result["device"]["xla_cpu_matmuls"] == "xla" and "XLA:CPU matmuls: xla" in printed


def test_bench_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as err:
        bench.main(["--presets", "ViT-Q_16"])
    assert err.value.code == 2
    assert "unknown preset 'ViT-Q_16'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--modes", "infer,fly"])
