"""The shared attention core (rlaif_jax/models/attention.py) against a naive masked reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaif_jax.models.attention import MASK_VALUE, attend, decode_attend

B, T, DH = 3, 21, 8  # T: not a multiple of the test's query blocks


def _reference(q, k, v, key_valid, q_offset=0, scale=None, weight_fn=None):
    """Materialised [B, H, T, S] mask and probabilities; grouped heads via repeat."""
    H, Hc = q.shape[2], k.shape[2]
    k, v = (jnp.repeat(x, H // Hc, axis=2) for x in (k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    slots = q_offset + jnp.arange(q.shape[1])
    causal = jnp.arange(k.shape[1])[None, :] <= slots[:, None]
    mask = causal[None, None] & key_valid[:, None, None, :].astype(bool)
    probs = jax.nn.softmax(jnp.where(mask, scores, MASK_VALUE), axis=-1)
    if weight_fn is not None:
        probs = weight_fn(probs)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def _qkv(seed, heads=4, kv_heads=4, t=T, s=T):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (B, t, heads, DH))
    k = jax.random.normal(ks[1], (B, s, kv_heads, DH))
    v = jax.random.normal(ks[2], (B, s, kv_heads, DH))
    return q * 2, k, v  # sharper softmax than unit scores


def _masks(kind, s=T):
    valid = np.ones((B, s), bool)
    if kind == "left":
        valid[1, :5] = False
        valid[2, :13] = False
    elif kind == "right":
        valid[1, 9:] = False
        valid[2, 16:] = False
    return jnp.asarray(valid)


def _rows_with_a_key(valid, q_offset=0, t=T):
    """[B, T] bool: queries that can attend to at least one valid key."""
    slots = q_offset + np.arange(t)
    first_valid = np.where(np.asarray(valid).any(1), np.asarray(valid).argmax(1), 10**9)
    return slots[None, :] >= first_valid[:, None]


@pytest.mark.parametrize("kind", ["none", "left", "right"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 1)])
@pytest.mark.parametrize("block", [4, 128])
def test_attend_matches_reference_forward_and_gradients(kind, heads, kv_heads, block):
    q, k, v = _qkv(0, heads, kv_heads)
    valid = _masks(kind)
    rows = jnp.asarray(_rows_with_a_key(valid))
    assert (~np.asarray(rows)).any() == (kind == "left")  # left pads: query rows with no valid key
    cot = jax.random.normal(jax.random.key(9), q.shape) * rows[:, :, None, None]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * cot)

    ours = lambda q, k, v: attend(q, k, v, valid, scale=DH**-0.5, block=block)  # noqa: E731
    ref = lambda q, k, v: _reference(q, k, v, valid)  # noqa: E731
    out, expected = ours(q, k, v), ref(q, k, v)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(out)[np.asarray(rows)], np.asarray(expected)[np.asarray(rows)],
                               atol=2e-5, rtol=0)
    grads = jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2))(q, k, v)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert np.abs(np.asarray(r)).max() > 0.1, name  # non-trivial gradients
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=5e-5, rtol=0, err_msg=name)


def test_block_causal_skips_keys_only_when_the_offset_is_static():
    """A traced q_offset (a cache index) attends over all slots; same result as the static one."""
    q, k, v = _qkv(1, t=6, s=T)
    valid = _masks("left")
    rows = _rows_with_a_key(valid, q_offset=7, t=6)
    static = attend(q, k, v, valid, q_offset=7, scale=0.3, block=4)
    traced = jax.jit(lambda o: attend(q, k, v, valid, q_offset=o, scale=0.3, block=4))(jnp.int32(7))
    expected = _reference(q, k, v, valid, q_offset=7, scale=0.3)
    for out in (static, traced):
        np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(expected)[rows], atol=2e-5, rtol=0)
    # the static path drops the keys past each block: the first block's keys are slots 0..10
    jaxpr = str(jax.make_jaxpr(lambda q: attend(q, k, v, valid, q_offset=7, scale=0.3, block=4))(q))
    assert "f32[3,4,4,11]" in jaxpr and "f32[3,4,4,21]" not in jaxpr


def test_dropout_on_unnormalised_weights_equals_dropout_on_probabilities():
    q, k, v = _qkv(2)
    valid = _masks("right")
    keep = jax.random.bernoulli(jax.random.key(4), 0.7, (B, 4, T, T)) / 0.7  # [B, H, T, S]
    # one block: the weights are [B, Hc, G, T, S] (here G = 1)
    ours = attend(q, k, v, valid, scale=DH**-0.5, block=T, dropout=lambda w: w * keep[:, :, None])
    expected = _reference(q, k, v, valid, weight_fn=lambda p: p * keep)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=2e-5, rtol=0)
    assert not np.allclose(np.asarray(ours), np.asarray(_reference(q, k, v, valid)), atol=1e-3)


def test_bfloat16_inputs_stay_close_to_float32():
    q, k, v = _qkv(3)
    valid = _masks("right")
    out = attend(*(x.astype(jnp.bfloat16) for x in (q, k, v)), valid, scale=DH**-0.5)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(_reference(q, k, v, valid)), atol=0.05)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("index", [0, 5, 20, 47])
def test_decode_attend_matches_reference(kv_heads, index):
    """One query at cache slot `index` over a heads-major [B, Hc, S, Dh] layer cache."""
    S = 48
    q, k, v = _qkv(5, 4, kv_heads, t=1, s=S)
    valid = np.ones((B, S), bool)
    valid[1, :3] = False
    valid[2, 40:] = False  # beyond the query for most indices
    valid = jnp.asarray(valid)
    cache_k, cache_v = (x.transpose(0, 2, 1, 3) for x in (k, v))
    out = jax.jit(lambda i: decode_attend(q, cache_k, cache_v, i, valid, scale=DH**-0.5))(jnp.int32(index))
    expected = _reference(q, k, v, valid, q_offset=index)
    rows = _rows_with_a_key(valid, q_offset=index, t=1)
    assert rows.any()
    np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(expected)[rows], atol=2e-5, rtol=0)


def test_bad_head_counts_and_mask_shapes_are_refused():
    q, k, v = _qkv(6, 4, 3)
    with pytest.raises(ValueError, match="not a multiple"):
        attend(q, k, v, _masks("none"), scale=1.0)
    q, k, v = _qkv(6)
    with pytest.raises(ValueError, match="key_valid shape"):
        attend(q, k, v, _masks("none")[:, :5], scale=1.0)
