"""The kernels seam: the reference and CPU kernels compute the same function;
the reference path has full JAX semantics (jvp, grad of grad, vmap, no custom
derivatives); the CPU kernels' own forms keep their numbers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import apply, assert_same_gradients, random_images, rel_l2
from jax.flatten_util import ravel_pytree

import vit_jax
from vit_jax import VisionTransformer, get_config
from vit_jax.attention import explicit_attention
from vit_jax.cpu import attention as cpu_attention
from vit_jax.cpu.autodiff import ForwardModeError
from vit_jax.kernels import resolve_kernels
from vit_jax.model import apply_with_intermediates

TINY = get_config("ViT-testing", head_zero_init=False)
CPU_TINY = TINY.replace(kernels="cpu")

# Configurations whose function both kernel sets must compute alike.
SAME_FUNCTION_CASES = {
    "token": {},
    "gap_exact_gelu": {"classifier": "gap", "gelu": "exact"},
    "no_qkv_bias_pre_logits": {"qkv_bias": False, "representation_size": 24},
    "scan_remat": {"scan": True, "remat": True, "remat_policy": "dots_with_no_batch_dims_saveable"},
    "dropouts": {"dropout_rate": 0.1, "attention_dropout_rate": 0.1, "stochastic_depth_rate": 0.2},
    "head_dim_not_power_of_two": {"hidden_size": 24, "num_heads": 2, "mlp_dim": 48},
    # vit-pytorch's options: normed patch embedding, a head width of its own, no output projection
    "vit_pytorch": {"patch_norm": True, "num_heads": 3, "attention_head_dim": 12, "qkv_bias": False,
                    "classifier": "gap", "gelu": "exact", "layer_norm_eps": 1e-5},
    "vit_pytorch_identity_out": {"patch_norm": True, "num_heads": 1, "attention_head_dim": 32,
                                 "attention_out_proj": False, "qkv_bias": False},
    "float64": {"dtype": "float64", "param_dtype": "float64"},
    "bfloat16": {"dtype": "bfloat16"},
}


def _loss_and_grads(config, params, images, train):
    model = VisionTransformer(config)

    def loss(p):
        out = model.apply({"params": p}, images, train=train, rngs={"dropout": jax.random.key(7)})
        return jnp.sum(jnp.sin(out.astype(jnp.float32)))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("case", list(SAME_FUNCTION_CASES))
def test_reference_and_cpu_kernels_compute_the_same_function(case):
    overrides = SAME_FUNCTION_CASES[case]
    reference = TINY.replace(**overrides)
    cpu = reference.replace(kernels="cpu")
    x64 = reference.dtype == "float64"
    images = random_images(reference).astype(np.float64 if x64 else np.float32)
    with jax.enable_x64(x64):
        params = vit_jax.init_params(reference, 3)
        cpu_params = vit_jax.init_params(cpu, 3)
        assert jax.tree.structure(params) == jax.tree.structure(cpu_params)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(cpu_params)):
            np.testing.assert_array_equal(a, b)  # same names, shapes and initial values
        # rounding of the compute dtype: float32 ~1e-7, bf16 ~4e-3 (8 bits), float64 ~1e-16
        tol = {"float32": 2e-5, "bfloat16": 5e-2, "float64": 1e-12}[reference.dtype]
        (want, g_want), (got, g_got) = (_loss_and_grads(c, params, images, train=True) for c in (reference, cpu))
        assert abs(float(got) - float(want)) <= tol * max(1.0, abs(float(want))), (got, want)
        assert_same_gradients(g_got, g_want, rel=tol * 10 if reference.dtype == "bfloat16" else tol)
        if not reference.scan:
            ref_out, ref_inter = apply_with_intermediates(VisionTransformer(reference), {"params": params}, images)
            cpu_out, cpu_inter = apply_with_intermediates(VisionTransformer(cpu), {"params": params}, images)
            for name in ref_inter:
                assert rel_l2(cpu_inter[name], ref_inter[name]) < tol, name


def test_default_gradient_program_has_no_custom_derivatives():
    config = get_config("ViT-Ti_16", num_layers=2)
    params = vit_jax.param_shapes(config)
    images = jnp.zeros((1, 224, 224, 3))

    def loss(p):
        return jnp.mean(VisionTransformer(config).apply({"params": p}, images) ** 2)

    program = str(jax.make_jaxpr(jax.grad(loss))(params))
    assert "custom_vjp" not in program and "custom_jvp_call" not in program.replace("custom_jvp_call[name=", "")
    cpu_model = VisionTransformer(config.replace(kernels="cpu"))
    cpu_program = str(jax.make_jaxpr(jax.grad(lambda p: jnp.mean(cpu_model.apply({"params": p}, images) ** 2)))(params))
    assert "custom_vjp" in cpu_program  # the check above can fail


@pytest.mark.slow  # ~33 s on 2 cores
def test_reference_path_supports_jvp_hessian_vector_products_and_vmap():
    config = TINY.replace(dtype="float64", param_dtype="float64", classifier="gap")
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, vit_jax.init_params(config, 1))
        images = jnp.asarray(random_images(config), jnp.float64)
        model = VisionTransformer(config)

        def loss(p):
            return jnp.sum(jnp.sin(model.apply({"params": p}, images)))

        direction = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(p.size).standard_normal(p.shape)), params)
        # jvp against a central finite difference along the same direction
        _, tangent = jax.jvp(loss, (params,), (direction,))
        step = 1e-5
        def shifted(s):
            return loss(jax.tree.map(lambda p, d: p + s * d, params, direction))
        assert float(tangent) == pytest.approx(float((shifted(step) - shifted(-step)) / (2 * step)), rel=1e-6)
        # Hessian-vector product, forward over reverse, against a difference of gradients
        _, hvp = jax.jvp(jax.grad(loss), (params,), (direction,))
        g_plus, g_minus = jax.grad(loss)(jax.tree.map(lambda p, d: p + step * d, params, direction)), jax.grad(loss)(
            jax.tree.map(lambda p, d: p - step * d, params, direction)
        )
        fd = jax.tree.map(lambda a, b: (a - b) / (2 * step), g_plus, g_minus)
        assert rel_l2(ravel_pytree(hvp)[0], ravel_pytree(fd)[0]) < 1e-6
        # reverse over reverse agrees with forward over reverse
        hvp_rr = jax.grad(lambda p: jax.tree.reduce(jnp.add,
                                                    jax.tree.map(lambda g, d: jnp.sum(g * d), jax.grad(loss)(p),
                                                                 direction)))(params)
        assert rel_l2(ravel_pytree(hvp_rr)[0], ravel_pytree(hvp)[0]) < 1e-10
        # vmap over single images equals the batched call
        per_image = jax.vmap(lambda x: model.apply({"params": params}, x[None])[0])(images)
        np.testing.assert_allclose(per_image, model.apply({"params": params}, images), rtol=1e-12, atol=1e-14)


@pytest.mark.slow  # ~35 s on 2 cores
def test_cpu_kernels_name_the_switch_under_forward_mode():
    params = vit_jax.init_params(CPU_TINY)
    images = random_images(CPU_TINY)
    def loss(p):
        return jnp.sum(VisionTransformer(CPU_TINY).apply({"params": p}, images) ** 2)
    def scaled(w):
        return loss(jax.tree.map(lambda a: a * w, params))
    forward_mode = {
        "jvp": lambda: jax.jvp(loss, (params,), (params,)),
        "jit of jvp": lambda: jax.jit(lambda p: jax.jvp(loss, (p,), (p,)))(params),
        "jvp of grad under jit": lambda: jax.jit(lambda p: jax.jvp(jax.grad(loss), (p,), (p,)))(params),
        "hessian": lambda: jax.hessian(scaled)(1.0),
    }
    for name, call in forward_mode.items():
        with pytest.raises(ForwardModeError, match="kernels='reference'"):
            call()
            pytest.fail(name)
    # reverse mode, batched or nested, still works
    jax.jit(jax.grad(loss))(params)
    jax.vmap(lambda x: jax.grad(lambda p: jnp.sum(VisionTransformer(CPU_TINY).apply({"params": p},
                                                                                    x[None])))(params))(images)
    assert np.isfinite(jax.grad(jax.grad(scaled))(1.0))


def test_resolve_kernels():
    assert resolve_kernels("auto") == ("cpu" if jax.default_backend() == "cpu" else "reference")
    assert resolve_kernels("reference") == "reference" and resolve_kernels("cpu") == "cpu"
    with pytest.raises(vit_jax.ConfigError, match="kernels 'gpu' is not one of"):
        resolve_kernels("gpu")
    with pytest.raises(vit_jax.ConfigError, match="recompute_gelu is a CPU kernel option"):
        get_config("ViT-Ti_16", recompute_gelu=True)


# -- the CPU kernels' own forms ----------------------------------------------------


def test_cpu_class_token_norm_matches_the_full_final_norm_forward_and_backward():
    # With classifier 'token' the CPU kernels normalise only the class token at the end;
    # with the intermediates captured it normalises every token (the 'norm' intermediate).
    params = vit_jax.init_params(CPU_TINY)
    images = random_images(CPU_TINY)
    model = VisionTransformer(CPU_TINY)

    def loss(p, capture=False):
        variables = {"params": p}
        logits = apply_with_intermediates(model, variables, images)[0] if capture else model.apply(variables, images)
        return jnp.sum(jnp.sin(logits))

    class_only = jax.jit(jax.value_and_grad(loss))(params)
    full_norm = jax.jit(jax.value_and_grad(functools.partial(loss, capture=True)))(params)
    np.testing.assert_allclose(class_only[0], full_norm[0], rtol=1e-6)
    grads, ref = jax.tree.leaves(class_only[1]), jax.tree.leaves(full_norm[1])
    scale = max(float(jnp.abs(g).max()) for g in ref)
    assert scale > 1.0 and float(jnp.abs(full_norm[1]["embedding"]["kernel"]).max()) > 0.1
    for a, b in zip(grads, ref):
        # elementwise against the largest gradient: some leaves (the key bias) are 0 up to rounding
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("gelu", ["tanh", "exact"])
@pytest.mark.parametrize("scan", [False, True])
def test_recompute_gelu_gives_the_same_outputs_and_gradients(gelu, scan):
    """recompute_gelu changes what the backward pass keeps, not the numbers, in
    training with stochastic depth and, with scan, under remat."""
    base = CPU_TINY.replace(gelu=gelu, scan=scan, remat=scan, stochastic_depth_rate=0.2)
    recompute = base.replace(recompute_gelu=True)
    params = vit_jax.init_params(base, 4)
    images = random_images(base)
    rngs = {"dropout": jax.random.key(5)}

    def loss(p, config):
        logits = VisionTransformer(config).apply({"params": p}, images, train=True, rngs=rngs)
        return jnp.sum(jnp.sin(logits))

    step = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (want, g), (got, g_recompute) = step(params, base), step(params, recompute)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert_same_gradients(g_recompute, g)
    recompute_params = vit_jax.init_params(recompute, 4)
    assert jax.tree.structure(recompute_params) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(recompute_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)  # same names, shapes and initial values
    np.testing.assert_array_equal(apply(recompute, params, images), apply(base, params, images))


@pytest.mark.parametrize("impl", ["auto", "recompute", "xla", "explicit"])
def test_cpu_attention_cores_agree_forward_and_backward(impl):
    """Every CPU attention core computes the same function and gradients as the explicit one."""

    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 17, 3, 8)), jnp.float32) for _ in range(3))
    d_out = jnp.asarray(rng.standard_normal((2, 17, 3, 8)), jnp.float32)

    def vjp(fn):
        out, pullback = jax.vjp(fn, q, k, v)
        return (out, *pullback(d_out))

    ref = vjp(lambda q, k, v: explicit_attention(q, k, v)[0])
    got = jax.jit(lambda: vjp(lambda q, k, v: cpu_attention.attention(q, k, v, impl)))()
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert rel_l2(a, b) < 1e-5, name


@pytest.mark.parametrize("head_dim,dtype", [(64, "float32"), (64, "bfloat16"), (16, "float32")])
def test_recompute_core_scales_q_with_the_same_bits(head_dim, dtype, monkeypatch):
    """With a power-of-two 1/sqrt(head_dim) the recompute core scales q (and, in the
    backward pass, d_q) instead of the scores (and dS): the same bits, forward and
    backward, as the scores-scaled form it takes for other head dims."""

    assert cpu_attention._exact_scale(head_dim) == head_dim**-0.5
    assert cpu_attention._exact_scale(80) is None  # ViT-H/14: the scores-scaled form
    rng = np.random.default_rng(1)
    q, k, v, d_out = (jnp.asarray(rng.standard_normal((2, 33, 3, head_dim)) * 3, dtype) for _ in range(4))

    def forward_and_grads():  # traced afresh on each call
        def run():
            out, pullback = jax.vjp(cpu_attention.recompute_attention, q, k, v)
            return (out, *pullback(d_out), cpu_attention.recompute_attention(q, k, v))

        return [np.asarray(x, np.float32) for x in jax.jit(run)()]

    scaled_q = forward_and_grads()
    monkeypatch.setattr(cpu_attention, "_exact_scale", lambda head_dim: None)
    scaled_scores = forward_and_grads()
    for name, a, b in zip(("out", "dq", "dk", "dv", "inference out"), scaled_q, scaled_scores):
        np.testing.assert_array_equal(a, b, err_msg=name)
    reference = explicit_attention(*(x.astype(jnp.float32) for x in (q, k, v)))[0]
    assert rel_l2(scaled_q[0], reference) < (1e-2 if dtype == "bfloat16" else 1e-5)
