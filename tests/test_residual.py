"""models/residual.py: the residual-gradient materialisation point is exact, and on XLA:CPU it
keeps each block's backward kernels from recomputing the blocks above it."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaif_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel
from rlaif_jax.models.residual import materialize_grad


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradient_is_exactly_the_identity(dtype):
    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.randn(3, 5, 16), dtype)
    w = jnp.asarray(rs.randn(3, 5, 16), dtype)
    x = x.at[0, 0, :4].set(0.0)  # zeros (and a gradient with zeros) stay exact

    def loss(x, wrap):
        return jnp.sum((jnp.sin(wrap(x)) * w).astype(jnp.float32))

    plain = jax.jit(jax.grad(lambda x: loss(x, lambda v: v)))(x)
    wrapped = jax.jit(jax.grad(lambda x: loss(x, materialize_grad)))(x)
    assert wrapped.dtype == plain.dtype
    np.testing.assert_array_equal(np.asarray(wrapped, np.float32), np.asarray(plain, np.float32))
    np.testing.assert_array_equal(materialize_grad(x), x)


def _blocks_per_fusion(model, params, ids) -> int:
    """The most blocks whose normalisation ops one fused XLA computation of the compiled
    backward draws from."""
    def loss(p):
        return jnp.mean(model.apply({"params": p}, ids).logits ** 2)

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    most = 0
    for body in re.split(r"\n(?=%fused_computation)", hlo)[1:]:
        body = body.split("\n}\n")[0]
        blocks = set(re.findall(r'op_name="[^"]*/(?:h|layers)_(\d+)/[^"/]*(?:ln|layernorm)[^"/]*/', body))
        most = max(most, len(blocks))
    return most


def test_gpt2_backward_fusions_stay_within_a_block_on_cpu():
    """6 blocks: without the materialisation point XLA:CPU fuses the layer-norm backward of
    every block above into each block's kernels (measured: all 6 blocks in one fusion); with
    it, at most a block and its neighbour meet in one fusion."""
    if jax.default_backend() != "cpu":
        pytest.skip("the materialisation is XLA:CPU's (other backends keep the identity)")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=6,
                                       n_head=4))
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 16)), jnp.int32)
    params = model.init(jax.random.key(0), ids)["params"]
    assert _blocks_per_fusion(model, params, ids) <= 2
