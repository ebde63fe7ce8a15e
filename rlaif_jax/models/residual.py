"""A materialisation point for the residual stream's gradient, shared by the model families.

In the backward pass the gradient of the residual stream at block ``i`` is the sum of the
contributions of every block above it. XLA:CPU fuses that elementwise sum into each consumer
(a block's layer-norm backward, and the transposed copy feeding its weight-gradient matmuls)
instead of materialising it, so the kernels of block ``i`` recompute the layer-norm backward of
blocks ``i+1..L-1``, reading dozens of arrays in transposed order: work quadratic in the depth.
Measured on a 6 x 512 GPT-2 SFT step (2 CPU cores): 1.5 s of 5.7 s of XLA kernel time in fusions
named after the layer norms, 0.35 s with :func:`materialize_grad` (benchmarks/README.md).

``lax.optimization_barrier`` does not help here (XLA:CPU removes it before fusion), nor does an
identity ``while`` or ``cond`` (simplified away). A matmul is never fused into its operand's
producers, so the backward multiplies the gradient by the identity matrix: exact in any float
dtype (each output is one product by 1 plus zeros), at ``2 * D`` FLOPs per element, a few
percent of a block's backward. Other backends keep the plain identity. GPT-2 blocks use it; the
Llama blocks do not need it (XLA:CPU keeps their RMSNorm backward within a block: one block per
fusion in the same check, tests/test_residual.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def materialize_grad(x: jax.Array) -> jax.Array:
    """Identity; on the CPU backend its gradient is computed once, not fused into consumers."""
    return x


def _forward(x):
    return x, None


def _backward(_, g):
    if jax.default_backend() != "cpu":
        return (g,)
    eye = jnp.eye(g.shape[-1], dtype=g.dtype)
    return (jnp.einsum("...d,de->...e", g, eye, preferred_element_type=g.dtype),)


materialize_grad.defvjp(_forward, _backward)
