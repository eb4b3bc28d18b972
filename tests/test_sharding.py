"""The placement rules (vit_jax/sharding.py) and the mesh flag, on shapes alone: no devices needed."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from vit_jax import get_config, param_shapes
from vit_jax.sharding import param_specs
from vit_jax.training.mesh import follow_params, parse_mesh, resolve_mesh
from vit_jax.training.optim import make_optimizer

MIB = 2**20


@functools.lru_cache(maxsize=None)
def shapes_of(name: str, **overrides):
    return param_shapes(get_config(name, **overrides))


def specs_of(name: str, mesh: dict, min_bytes: int = 0, **overrides):
    return param_specs(shapes_of(name, **overrides), mesh, min_bytes)


def test_megatron_and_fsdp_placement_of_a_block():
    specs = specs_of("ViT-B_16", {"fsdp": 4, "model": 2})
    block = specs["Transformer"]["encoderblock_0"]
    attention, mlp = block["MultiHeadDotProductAttention_0"], block["MlpBlock_0"]
    for name in ("query", "key", "value"):  # column-parallel: (embed, heads, head_dim)
        assert attention[name]["kernel"] == P("fsdp", "model")
        assert attention[name]["bias"] == P("model", "fsdp")  # no embed axis: fsdp takes head_dim
    assert attention["out"]["kernel"] == P("model", None, "fsdp")  # row-parallel: (heads, head_dim, embed)
    assert mlp["Dense_0"]["kernel"] == P("fsdp", "model") and mlp["Dense_0"]["bias"] == P("model")
    assert mlp["Dense_1"]["kernel"] == P("model", "fsdp") and mlp["Dense_1"]["bias"] == P("fsdp")
    assert block["LayerNorm_0"]["scale"] == P("fsdp")
    assert specs["embedding"]["kernel"] == P(None, None, None, "fsdp")
    assert specs["Transformer"]["posembed_input"]["pos_embedding"] == P(None, None, "fsdp")
    assert specs["head"]["kernel"] == P("fsdp")  # 1000 classes: not split by model


def test_small_weights_stay_replicated_and_the_stacked_layer_axis_is_never_split():
    specs = specs_of("ViT-B_16", {"fsdp": 8}, min_bytes=4 * MIB)
    block = specs["Transformer"]["encoderblock_0"]
    assert block["MlpBlock_0"]["Dense_0"]["kernel"] == P("fsdp")  # 768 x 3072 x 4 bytes = 9 MiB
    assert block["MultiHeadDotProductAttention_0"]["query"]["kernel"] == P()  # 2.25 MiB
    assert block["LayerNorm_0"]["scale"] == P()
    scanned = specs_of("ViT-B_16", {"fsdp": 8, "model": 2}, min_bytes=4 * MIB, scan=True)
    stacked = scanned["Transformer"]["encoderblock"]
    assert stacked["MultiHeadDotProductAttention_0"]["query"]["kernel"] == P(None, "fsdp", "model")  # 27 MiB
    assert stacked["MlpBlock_0"]["Dense_1"]["kernel"] == P(None, "model", "fsdp")


def test_fsdp_takes_the_largest_divisible_dimension_where_embed_is_not_divisible():
    # The hybrid's ResNet stem has no logical axes: its largest dimension fsdp divides.
    stem = {"conv_root": {"kernel": jax.ShapeDtypeStruct((7, 7, 3, 64), np.float32)}}
    assert param_specs(stem, {"fsdp": 8})["conv_root"]["kernel"] == P(None, None, None, "fsdp")
    # Width 36 is not divisible by 8: the q kernel (36, 4, 9) has no dimension it divides; Dense_0 (36, 72) has.
    odd = specs_of("ViT-testing", {"fsdp": 8}, hidden_size=36, num_heads=4, mlp_dim=72)
    block = odd["Transformer"]["encoderblock_0"]
    assert block["MultiHeadDotProductAttention_0"]["query"]["kernel"] == P()
    assert block["MlpBlock_0"]["Dense_0"]["kernel"] == P(None, "fsdp")


def test_optimizer_state_follows_its_parameter():
    params = shapes_of("ViT-testing")
    specs = param_specs(params, {"fsdp": 2, "model": 2})
    for name in ("adamw", "sgd"):
        tx = make_optimizer(params, name=name, schedule=optax.constant_schedule(1e-3), weight_decay=0.05,
                            grad_clip=1.0)
        state = jax.eval_shape(tx.init, params)
        followed = follow_params(state, params, specs)
        param_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
        mirrors = [s for s in jax.tree.leaves(followed, is_leaf=lambda x: isinstance(x, P))]
        # AdamW: mu and nu; SGD: the momentum trace; each a copy of the params' specs, in order, plus the counts.
        copies = 2 if name == "adamw" else 1
        assert [s for s in mirrors if s != P()] == [s for s in param_leaves if s != P()] * copies
        counts = [leaf for leaf in jax.tree.leaves(state) if np.shape(leaf) == ()]
        assert len(mirrors) == copies * len(param_leaves) + len(counts)


@pytest.mark.parametrize("text, expected", [
    ("data=-1", {"data": 8, "fsdp": 1, "model": 1}),
    ("fsdp=8", {"data": 1, "fsdp": 8, "model": 1}),
    ("data=2, fsdp=-1, model=2", {"data": 2, "fsdp": 2, "model": 2}),
])
def test_mesh_sizes(text, expected):
    assert resolve_mesh(parse_mesh(text), 8, 1) == expected


@pytest.mark.parametrize("text, message", [
    ("data=2,fsdp=2", "--mesh data=2,fsdp=2 has 4 devices, but this run has 8 device(s) across 2 process(es)"),
    ("data=3,fsdp=-1", "the other axes' 3 devices do not divide the 8 device(s) across 2 process(es)"),
])
def test_mesh_that_does_not_match_the_devices(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_mesh(parse_mesh(text), 8, 2)


@pytest.mark.parametrize("text, message", [
    ("tensor=2", "unknown axis 'tensor'"),
    ("data=2,data=4", "axis 'data' is given twice"),
    ("data=0", "'data=0' needs a positive size or -1"),
    ("data", "'data' needs a positive size or -1"),
    ("data=-1,model=-1", "at most one axis may be -1"),
])
def test_bad_mesh_text(text, message):
    with pytest.raises(ValueError, match=message):
        parse_mesh(text)
