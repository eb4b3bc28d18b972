"""The reference model lowers for accelerators without one: `jax.export` of
inference and of the training gradient, float32 and bfloat16, for CUDA and TPU.

A multi-platform export (cpu + cuda + tpu) is also run here on the CPU and
compared with the plain jitted call, so the exported program is checked to
compute the model's numbers, not only to lower.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_images, rel_l2
from jax import export

import vit_jax
from vit_jax import VisionTransformer

PLATFORMS = ("cuda", "tpu")


def _functions(config):
    model = VisionTransformer(config)

    def infer(params, images):
        return model.apply({"params": params}, images)

    def loss(params, images, labels):
        logits = model.apply({"params": params}, images, train=True).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return {"infer": jax.jit(infer), "grad": jax.jit(jax.grad(loss))}


def _args(config, name, concrete=False):
    params = vit_jax.init_params(config) if concrete else vit_jax.param_shapes(config)
    images = random_images(config) if concrete else jax.ShapeDtypeStruct((2, *config.image_hw, 3), jnp.float32)
    labels = np.array([1, 3], np.int32) if concrete else jax.ShapeDtypeStruct((2,), jnp.int32)
    return (params, images) if name == "infer" else (params, images, labels)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["infer", "grad"])
def test_reference_model_exports_for_cuda_and_tpu(name, dtype):
    config = vit_jax.get_config("ViT-testing", dtype=dtype)
    fn = _functions(config)[name]
    for platform in PLATFORMS:
        exported = export.export(fn, platforms=[platform])(*_args(config, name))
        assert exported.platforms == (platform,)
        module = exported.mlir_module()
        # no host callbacks or CPU-only custom calls in an accelerator program
        assert "xla_python_cpu_callback" not in module and "custom_call @__cpu" not in module, platform
        restored = export.deserialize(exported.serialize())
        assert restored.out_avals == exported.out_avals


@pytest.mark.parametrize("name", ["infer", "grad"])
def test_multi_platform_export_computes_the_models_numbers_on_cpu(name):
    config = vit_jax.get_config("ViT-testing", head_zero_init=False)
    fn = _functions(config)[name]
    args = _args(config, name, concrete=True)
    exported = export.export(fn, platforms=["cpu", *PLATFORMS])(*args)
    got, want = exported.call(*args), fn(*args)
    # over the whole output (the key biases' exact gradient is 0: rounding noise alone)
    def flat(tree):
        return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(tree)])
    assert rel_l2(flat(got), flat(want)) < 1e-6
