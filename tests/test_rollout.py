"""Attention rollout math (vit_jax.rollout) against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vit_jax
from vit_jax.rollout import discard_lowest, head_maps, rollout_matrix

# Two layers, two heads, a class token and two patches: (layers, B=1, heads, seq, seq).
LAYER_1 = [[[0.5, 0.5, 0.0], [0, 1, 0], [0, 0, 1]],
           [[0.5, 0.0, 0.5], [0, 1, 0], [0, 0, 1]]]
LAYER_2 = [[[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]] * 2
PROBS = np.array([[LAYER_1], [LAYER_2]])


def test_two_layer_rollout_equals_hand_computation():
    # Layer 1: head mean [[.5, .25, .25], I rows]; + identity, rows / 2 -> [[.75, .125, .125], [0, 1, 0], [0, 0, 1]].
    # Layer 2: both heads the same; + identity, rows / 2 -> [[.5, .5, 0], [.25, .75, 0], [0, .25, .75]].
    a1 = np.array([[0.75, 0.125, 0.125], [0, 1, 0], [0, 0, 1]])
    a2 = np.array([[0.5, 0.5, 0], [0.25, 0.75, 0], [0, 0.25, 0.75]])
    # The later layer multiplies from the left: row 0 = .5 * a1[0] + .5 * a1[1].
    expected_joint = np.array([[0.375, 0.5625, 0.0625], [0.1875, 0.78125, 0.03125], [0.0, 0.25, 0.75]])
    np.testing.assert_allclose(a2 @ a1, expected_joint)
    np.testing.assert_allclose(rollout_matrix(PROBS)[0], expected_joint, atol=1e-15)
    rollout = vit_jax.attention_rollout(PROBS)
    assert rollout.dtype == np.float32 and rollout.shape == (1, 2)
    np.testing.assert_allclose(rollout[0], [0.5625, 0.0625], atol=1e-7)  # class token's row, patches only


def test_without_class_token_the_map_is_the_mean_of_all_rows():
    # Every token is a patch: the column means of the joint matrix above.
    rollout = vit_jax.attention_rollout(PROBS, num_prefix_tokens=0)
    np.testing.assert_allclose(rollout[0], [0.1875, 0.53125, 0.28125], atol=1e-7)
    maps = head_maps(PROBS, num_prefix_tokens=0)
    np.testing.assert_allclose(maps[0, 0, 1], [1 / 6, 1 / 3, 1 / 2], atol=1e-7)  # layer 1, head 2: row means


@pytest.mark.parametrize(
    "fusion, row0",
    [
        # max over heads: layer 1 row 0 [.5, .5, .5] + e0 -> [.6, .2, .2]; joint row 0 = .5 * that + .5 * [0, 1, 0].
        ("max", [0.3, 0.6, 0.1]),
        # min over heads: layer 1 row 0 [.5, 0, 0] + e0 -> [1, 0, 0]; joint row 0 = [.5, .5, 0].
        ("min", [0.5, 0.5, 0.0]),
    ],
)
def test_head_fusion_max_and_min(fusion, row0):
    np.testing.assert_allclose(rollout_matrix(PROBS, head_fusion=fusion)[0, 0], row0, atol=1e-15)
    np.testing.assert_allclose(vit_jax.attention_rollout(PROBS, head_fusion=fusion)[0], row0[1:], atol=1e-7)


def test_discard_drops_the_lowest_entries_but_never_the_class_tokens_self_attention():
    fused = np.array([[[0.02, 0.90, 0.08], [0.20, 0.30, 0.50], [0.10, 0.25, 0.65]]])
    # int(9 * 0.45) = 4 lowest: 0.02 (class token to itself: kept), 0.08, 0.10, 0.20 (zeroed).
    kept = discard_lowest(fused, 0.45, keep_first=True)
    np.testing.assert_array_equal(kept[0], [[0.02, 0.90, 0.0], [0.0, 0.30, 0.50], [0.0, 0.25, 0.65]])
    # Without a class token nothing is protected: the four lowest go.
    np.testing.assert_array_equal(discard_lowest(fused, 0.45, keep_first=False)[0],
                                  [[0.0, 0.90, 0.0], [0.0, 0.30, 0.50], [0.0, 0.25, 0.65]])
    assert discard_lowest(fused, 0.1, keep_first=True) is fused  # int(0.9) = 0 entries to drop
    # Through the rollout (one layer, one head): row 0 [0.02, 0.9, 0] + e0 = [1.02, 0.9, 0], over 1.92.
    rollout = vit_jax.attention_rollout(fused[:, None, None], discard_ratio=0.45)
    np.testing.assert_allclose(rollout[0], [0.9 / 1.92, 0.0], atol=1e-7)
    np.testing.assert_allclose(vit_jax.attention_rollout(fused[:, None, None])[0], [0.45, 0.04], atol=1e-7)


def test_inputs_as_intermediates_dict_torch_tensors_and_grid():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 2, 3, 17, 17))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = vit_jax.attention_rollout(list(probs), grid_size=(4, 4))
    assert expected.shape == (2, 4, 4)
    # Block 10 must come after block 9, not after block 1; other entries are ignored.
    inter = {f"blocks.{i}.attn_probs": torch.from_numpy(p) for i, p in reversed(list(enumerate(probs)))}
    inter["blocks.0.attn"] = torch.zeros(2, 17, 8)
    np.testing.assert_array_equal(vit_jax.attention_rollout(inter, grid_size=(4, 4)), expected)
    shuffled = vit_jax.attention_rollout(list(probs[::-1]), grid_size=(4, 4))
    assert np.abs(shuffled - expected).max() > 1e-3  # the order matters, so the dict's order was right
    # Every row of the joint matrix is a distribution.
    np.testing.assert_allclose(rollout_matrix(probs).sum(-1), 1.0, atol=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: vit_jax.attention_rollout({"blocks.0.attn": np.zeros((1, 3, 4))}), "return_attention=True"),
        (lambda: vit_jax.attention_rollout({"blocks.1.attn_probs": np.ones((1, 1, 2, 2))}), "expected blocks 0..0"),
        (lambda: vit_jax.attention_rollout([np.ones((1, 1, 2, 3))]), "(batch, heads, seq, seq)"),
        (lambda: vit_jax.attention_rollout(PROBS, head_fusion="median"), "head_fusion 'median'"),
        (lambda: vit_jax.attention_rollout(PROBS, discard_ratio=1.0), "discard_ratio must be in [0, 1)"),
        (lambda: vit_jax.attention_rollout(PROBS, grid_size=(3, 1)), "do not fill a 3x1 grid"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)
