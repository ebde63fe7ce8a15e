"""The attention core shared by the model families: causal (grouped-query) softmax attention.

``q`` is ``[B, T, H, Dh]``; keys and values are ``[B, S, Hc, Dh]`` with ``Hc`` dividing ``H``
(query head ``h`` reads key/value head ``h // (H // Hc)``, HF's ``repeat_kv``; GPT-2 has
``Hc == H``). Query ``t`` sits at slot ``q_offset + t`` and attends to the slots ``<=`` its own
whose ``key_valid`` is true. No ``[B, 1, T, S]`` mask is built: the causal test is an iota
comparison fused into the select on the scores.

Multi-token calls (training, scoring, prefill) use :func:`attend`:

* **Block-causal**: when ``q_offset`` is a Python int (no cache, or a static one), the queries
  are split into blocks of ``block`` and each block only multiplies the keys up to its last
  slot, skipping the upper triangle: at ``T = 512`` and blocks of 128, 37.5% of the ``QK^T`` and
  ``PV`` work and of the ``[B, H, T, S]`` score traffic.
* **Deferred normalisation**: ``exp(s - max)`` is multiplied with the values and the
  ``[B, T, H, Dh]`` result is divided by the row sums, instead of normalising the
  ``[B, H, T, S]`` probabilities; dropout (elementwise) is applied to the unnormalised weights,
  which is the same as applying it to the probabilities.
* **Heads-major layout**: q, k, v are transposed once to ``[B, Hc, (G,) T, Dh]``, so XLA's
  batched dots do not transpose a slice of k/v for every block.

With a KV cache (:func:`cached_attend`), each layer's keys and values are kept heads-major,
``[B, Hc, S, Dh]``, in arrays of their own: new entries are written in place, a prefill attends
over them without a transpose, and single-token decoding (:func:`decode_attend`) multiplies one
query with them as plain batched matmuls.

Scores and softmax are float32 whatever the compute dtype. A query with no valid key (a pad
row of a left-padded batch) gets a finite, unspecified output; nothing valid reads it.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# Finite "minus infinity" for masked attention scores: a fully masked row gives a finite
# softmax instead of NaNs.
MASK_VALUE = -1e30
# Query block of the block-causal path (a multiple of 8; measured on XLA:CPU at T = 512,
# 64 and 256 were no better).
QUERY_BLOCK = 128


def weights_dropout(rate: float, deterministic: bool) -> Callable[[Array], Array] | None:
    """The ``dropout`` argument of :func:`attend` / :func:`decode_attend` for a flax module's
    attention-weight dropout (call it inside the module's ``__call__``); None when inactive."""
    if deterministic or rate == 0:
        return None
    return lambda weights: nn.Dropout(rate)(weights, deterministic=False)


def _check_heads(H: int, Hc: int) -> tuple[int, int]:
    """``(Hc, H // Hc)`` for ``H`` query and ``Hc`` key/value heads."""
    if H % Hc:
        raise ValueError(f"{H} query heads are not a multiple of {Hc} key/value heads")
    return Hc, H // Hc


def attend(
    q: Array,
    k: Array,
    v: Array,
    key_valid: Array,
    *,
    q_offset: int | Array = 0,
    scale: float,
    dropout: Callable[[Array], Array] | None = None,
    block: int = QUERY_BLOCK,
) -> Array:
    """Causal softmax attention of ``T`` queries over ``S`` key slots; returns ``[B, T, H, Dh]``.

    ``key_valid`` [B, S] marks the usable key slots (padding false). ``q_offset`` is the slot of
    the first query: a Python int enables the block-causal key skipping, a traced value (a
    cache index) attends over all ``S`` slots in one block. ``dropout`` maps the attention
    weights to their dropped-out version (None: no dropout). The result has ``v``'s dtype.
    """
    B, S = q.shape[0], k.shape[1]
    _check_heads(q.shape[2], k.shape[2])
    if key_valid.shape != (B, S):
        raise ValueError(f"key_valid shape {key_valid.shape} != {(B, S)}")
    kt, vt = (x.transpose(0, 2, 1, 3) for x in (k, v))  # [B, Hc, S, Dh]
    return _attend_heads_major(q, kt, vt, key_valid, q_offset=q_offset, scale=scale, dropout=dropout,
                               block=block)


def _attend_heads_major(q, kt, vt, key_valid, *, q_offset, scale, dropout, block):
    """:func:`attend` with heads-major keys and values ``kt``/``vt`` [B, Hc, S, Dh]."""
    B, T, H, Dh = q.shape
    S = kt.shape[2]
    Hc, G = _check_heads(H, kt.shape[1])
    key_valid = key_valid.astype(jnp.bool_)
    qt = q.reshape(B, T, Hc, G, Dh).transpose(0, 2, 3, 1, 4)  # [B, Hc, G, T, Dh]
    static = isinstance(q_offset, int)
    step = block if static else T
    outs = []
    for start in range(0, T, step):
        stop = min(start + step, T)
        n_keys = min(S, q_offset + stop) if static else S  # keys past the block's last slot: masked
        rows = (B, Hc, G * (stop - start))  # a plain [B, Hc] batch of matmuls (a copy if G > 1)
        s = jnp.einsum("bcqd,bckd->bcqk", qt[:, :, :, start:stop].reshape(*rows, Dh), kt[:, :, :n_keys],
                       preferred_element_type=jnp.float32)
        s = s.reshape(B, Hc, G, stop - start, n_keys) * scale
        shape = (1, 1, 1, stop - start, n_keys)
        q_slot = jax.lax.broadcasted_iota(jnp.int32, shape, 3) + (q_offset + start)
        k_slot = jax.lax.broadcasted_iota(jnp.int32, shape, 4)
        s = jnp.where((k_slot <= q_slot) & key_valid[:, None, None, None, :n_keys], s, MASK_VALUE)
        weights = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
        total = jnp.sum(weights, axis=-1, keepdims=True)
        if dropout is not None:
            weights = dropout(weights)
        out = jnp.einsum("bcqk,bckd->bcqd", weights.astype(vt.dtype).reshape(*rows, n_keys),
                         vt[:, :, :n_keys], preferred_element_type=jnp.float32)
        out = out.reshape(B, Hc, G, stop - start, Dh)
        outs.append((out / total).astype(vt.dtype))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


def decode_attend(
    q: Array,
    cache_k: Array,
    cache_v: Array,
    index: Array,
    key_valid: Array,
    *,
    scale: float,
    dropout: Callable[[Array], Array] | None = None,
) -> Array:
    """Attention of one query per row (``q`` [B, 1, H, Dh], at slot ``index``) over one layer's
    heads-major cache ``cache_k``/``cache_v`` [B, Hc, S, Dh], whose slot ``index`` already holds
    the query's own key/value; ``key_valid`` [B, S]. Returns [B, 1, H, Dh] in the cache dtype.

    The cache is already heads-major, so both products are plain batched matmuls over
    ``(b, c)`` with the ``G`` query heads of a key/value head as the rows: nothing is
    transposed or copied per step. All ``S`` slots are read; the ones after ``index`` are
    causally masked.
    """
    B, _, H, Dh = q.shape
    Hc, G = _check_heads(H, cache_k.shape[1])
    S = cache_k.shape[2]
    qg = q.reshape(B, Hc, G, Dh)  # query head h = c * G + g
    scores = jnp.einsum("bcgd,bcsd->bcgs", qg, cache_k, preferred_element_type=jnp.float32) * scale
    valid = key_valid.astype(jnp.bool_) & (jnp.arange(S) <= index)[None, :]  # [B, S]
    scores = jnp.where(valid[:, None, None, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(cache_v.dtype)
    if dropout is not None:
        probs = dropout(probs)
    out = jnp.einsum("bcgs,bcsd->bcgd", probs, cache_v, preferred_element_type=jnp.float32)
    return out.astype(cache_v.dtype).reshape(B, 1, H, Dh)


def empty_cache(n_layer: int, batch_size: int, max_len: int, n_heads: int, head_dim: int,
                dtype) -> dict:
    """An empty KV cache: ``{"k", "v": n_layer-tuples of zeros [batch_size, n_heads, max_len,
    head_dim] in dtype, "index": int32 0}`` (the number of slots already written)."""
    shape = (batch_size, n_heads, max_len, head_dim)
    return {
        "k": tuple(jnp.zeros(shape, dtype) for _ in range(n_layer)),
        "v": tuple(jnp.zeros(shape, dtype) for _ in range(n_layer)),
        "index": jnp.zeros((), jnp.int32),
    }


def cached_attend(
    q: Array,
    k: Array,
    v: Array,
    key_valid: Array,
    layer_cache: tuple | None,
    *,
    scale: float,
    dropout: Callable[[Array], Array] | None = None,
) -> tuple[Array, tuple[Array, Array] | None]:
    """One attention layer's core with an optional KV cache: ``(out [B, T, H, Dh], new cache)``.

    ``layer_cache`` is None (training / scoring: :func:`attend` over ``k``/``v``) or
    ``(cache_k, cache_v, index)`` with this layer's heads-major cache arrays [B, Hc, S, Dh]:
    the ``T`` new keys/values (``Hkv`` heads, repeated to the cache's ``Hc``) are written in
    place at slots ``[index, index + T)``, then one query decodes with :func:`decode_attend`
    and several attend over the cache with :func:`attend`. Returns the updated
    ``(cache_k, cache_v)``.
    """
    if layer_cache is None:
        return attend(q, k, v, key_valid, scale=scale, dropout=dropout), None
    cache_k, cache_v, index = layer_cache
    H, Hkv, Hc = q.shape[2], k.shape[2], cache_k.shape[1]
    if Hc % Hkv or H % Hc:
        raise ValueError(f"cache has {Hc} heads; need a multiple of {Hkv} key/value heads "
                         f"dividing {H} query heads")
    if Hc != Hkv:
        k, v = (jnp.repeat(t, Hc // Hkv, axis=2) for t in (k, v))
    cache_k, cache_v = (jax.lax.dynamic_update_slice(cache, t.transpose(0, 2, 1, 3).astype(cache.dtype),
                                                     (0, 0, index, 0))
                        for cache, t in ((cache_k, k), (cache_v, v)))
    if q.shape[1] == 1:
        out = decode_attend(q, cache_k, cache_v, index, key_valid, scale=scale, dropout=dropout)
    else:
        out = _attend_heads_major(q, cache_k, cache_v, key_valid, q_offset=index, scale=scale,
                                  dropout=dropout, block=QUERY_BLOCK)
    return out, (cache_k, cache_v)
