"""The XLA:CPU kernels (kernel_set.py: `ViTConfig(kernels='cpu')`) and the opt-in oneDNN matmuls (onednn.py).

Empty on purpose: `vit_jax.cpu.onednn` is read by the option parsers before JAX starts, and must not
build the kernels (Flax modules) to do so.
"""
