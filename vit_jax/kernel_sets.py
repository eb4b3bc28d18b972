"""Which kernel set a config gets (`ViTConfig.kernels`), for the model and its parts (glu, heads).

It sits above vit_jax/cpu, which builds its set from vit_jax.kernels, and imports that set only when a
config asks for it, so a reference model never loads the CPU kernels.
"""

from __future__ import annotations

from vit_jax.config import ViTConfig
from vit_jax.kernels import REFERENCE, Kernels


def kernels_for(config: ViTConfig) -> Kernels:
    """The operation set `config.kernels` names; the CPU set is imported only when asked for."""
    if config.kernels == "cpu":
        from vit_jax.cpu.kernel_set import CPU_KERNELS

        return CPU_KERNELS
    return REFERENCE
