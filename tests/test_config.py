import json

import pytest
from golden_params import GOLDEN_PARAM_COUNTS

import vit_jax
from vit_jax import ConfigError, ViTConfig, get_config

PRESET_SHAPES = {  # hidden, mlp, heads, layers, patch
    "ViT-Ti_16": (192, 768, 3, 12, 16),
    "ViT-S_16": (384, 1536, 6, 12, 16),
    "ViT-S_32": (384, 1536, 6, 12, 32),
    "ViT-B_16": (768, 3072, 12, 12, 16),
    "ViT-B_32": (768, 3072, 12, 12, 32),
    "ViT-B_8": (768, 3072, 12, 12, 8),
    "ViT-L_16": (1024, 4096, 16, 24, 16),
    "ViT-L_32": (1024, 4096, 16, 24, 32),
    "ViT-H_14": (1280, 5120, 16, 32, 14),
    "ViT-g_14": (1408, 6144, 16, 40, 14),
    "ViT-G_14": (1664, 8192, 16, 48, 14),
}


def test_every_registered_preset_has_a_golden():
    assert set(vit_jax.list_presets()) == set(GOLDEN_PARAM_COUNTS)


@pytest.mark.parametrize("name", sorted(GOLDEN_PARAM_COUNTS))
def test_flax_param_count_matches_golden(name):
    assert vit_jax.count_params(vit_jax.param_shapes(get_config(name))) == GOLDEN_PARAM_COUNTS[name]


@pytest.mark.parametrize("name", sorted(PRESET_SHAPES))
def test_preset_dimensions(name):
    c = get_config(name)
    assert (c.hidden_size, c.mlp_dim, c.num_heads, c.num_layers, c.patch_size) == PRESET_SHAPES[name]
    assert c.image_size == 224 and c.classifier == "token" and c.num_classes == 1000


def test_i21k_representation_golden():
    c = get_config("ViT-B_16", representation_size=768, num_classes=21843)
    assert vit_jax.count_params(vit_jax.param_shapes(c)) == 103_186_515


def test_override_and_short_name():
    c = get_config("ViT-B_16", num_classes=10)
    assert c.num_classes == 10 and c.hidden_size == 768 and c.name == "ViT-B_16"
    assert get_config("B/16") == get_config("ViT-B_16")
    assert get_config("S/8").patch_size == 8  # any variant/patch combination in short form
    assert get_config("ViT-B_16").num_classes == 1000  # the registry is not mutated


def test_json_round_trip(tmp_path):
    c = get_config("ViT-testing", image_size=(16, 24), gelu="exact", pixel_mean=(0.1, 0.2, 0.3))
    path = tmp_path / "config.json"
    path.write_text(c.to_json())
    assert ViTConfig.from_json(str(path)) == c
    assert json.loads(path.read_text())["gelu"] == "exact"


def test_derived_geometry():
    c = get_config("ViT-B_16")
    assert c.grid_size == (14, 14) and c.seq_len == 197 and c.head_dim == 64
    assert get_config("ViT-B_16", classifier="gap").seq_len == 196
    assert get_config("ViT-testing", image_size=(16, 24), patch_size=(4, 8)).grid_size == (4, 3)
    c = get_config("ViT-testing", num_heads=3, attention_head_dim=12)  # hidden 32 need not divide
    assert (c.head_dim, c.inner_dim) == (12, 36)
    rates = get_config("ViT-testing", num_layers=5, stochastic_depth_rate=0.2).drop_path_rates()
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


@pytest.mark.parametrize(
    "name,overrides,message",
    [
        ("ViT-Q_16", {}, "unknown preset 'ViT-Q_16'"),
        ("ViT-B16", {}, "Did you mean 'ViT-B_16'"),
        ("ViT-B_16", {"hidden_size": 770}, "hidden_size 770 is not divisible by num_heads 12"),
        ("ViT-B_16", {"image_size": 225}, "image size 225x225 is not divisible by patch size 16x16"),
        ("ViT-B_16", {"classifier": "cls"}, "classifier 'cls' is not one of"),
        ("ViT-B_16", {"gelu": "relu"}, "gelu 'relu' is not one of"),
        ("ViT-B_16", {"posemb": "rope"}, "posemb 'rope' is not one of"),
        ("ViT-B_16", {"num_classes": -1}, "num_classes must be an integer >= 0"),
        ("ViT-B_16", {"num_layers": 0}, "num_layers must be a positive integer"),
        ("ViT-B_16", {"dropout_rate": 1.0}, "dropout_rate must be in [0, 1)"),
        ("ViT-B_16", {"dtype": "int8"}, "dtype 'int8' is not one of"),
        ("ViT-B_16", {"remat_policy": "everything"}, "remat_policy 'everything' is not one of"),
        ("ViT-B_16", {"layer_norm_eps": 0.0}, "layer_norm_eps must be > 0"),
        ("ViT-B_16", {"num_channels": 1}, "pixel_mean has 3 values, expected one per channel (1)"),
        ("ViT-B_16", {"hidden_size": 30, "num_heads": 3, "posemb": "sincos2d"}, "divisible by 4"),
        ("ViT-B_16", {"representation_size": 0}, "representation_size must be a positive integer"),
        ("ViT-B_16", {"num_clases": 10}, "unknown config field(s): 'num_clases' (did you mean 'num_classes'?)"),
        ("ViT-B_16", {"recompute_gelu": True, "dropout_rate": 0.1, "kernels": "cpu"}, "recompute_gelu needs "
                                                                                      "dropout_rate 0, got 0.1"),
        ("ViT-B_16", {"recompute_gelu": True}, "recompute_gelu is a CPU kernel option"),
        ("ViT-B_16", {"attention_impl": "recompute"}, "attention_impl 'recompute' is a CPU kernel"),
        ("ViT-B_16", {"kernels": "gpu"}, "kernels 'gpu' is not one of"),
        ("ViT-B_16", {"attention_head_dim": 0}, "attention_head_dim must be a positive integer"),
        ("ViT-B_16", {"attention_out_proj": False, "attention_head_dim": 32}, "attention_out_proj=False needs "
                                                                              "num_heads x head_dim == hidden_size"),
    ],
)
def test_invalid_configs_name_the_problem(name, overrides, message):
    with pytest.raises(ConfigError) as err:
        get_config(name, **overrides)
    assert message in str(err.value)
