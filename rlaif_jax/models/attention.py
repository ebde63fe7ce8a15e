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

Single-token decoding over a KV cache uses :func:`decode_attend` (see its docstring).

Scores and softmax are float32 whatever the compute dtype. A query with no valid key (a pad
row of a left-padded batch) gets a finite, unspecified output; nothing valid reads it.
"""

from __future__ import annotations

import functools
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
# Single-token decoding: at most this many static attention widths (see decode_attend).
DECODE_WINDOWS = 8


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
    B, T, H, Dh = q.shape
    S = k.shape[1]
    Hc, G = _check_heads(H, k.shape[2])
    if key_valid.shape != (B, S):
        raise ValueError(f"key_valid shape {key_valid.shape} != {(B, S)}")
    key_valid = key_valid.astype(jnp.bool_)
    qt = q.reshape(B, T, Hc, G, Dh).transpose(0, 2, 3, 1, 4)  # [B, Hc, G, T, Dh]
    kt, vt = (x.transpose(0, 2, 1, 3) for x in (k, v))  # [B, Hc, S, Dh]
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
        out = jnp.einsum("bcqk,bckd->bcqd", weights.astype(v.dtype).reshape(*rows, n_keys), vt[:, :, :n_keys],
                         preferred_element_type=jnp.float32)
        out = out.reshape(B, Hc, G, stop - start, Dh)
        outs.append((out / total).astype(v.dtype))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


# Single-token decoding (T == 1 with a cache) has its own code, exact up to float rounding; the
# batched dots of `attend` are slow there on XLA:CPU:
#  * A dot with batch dims (b, h) makes XLA transpose the cache so that h is major, copying the
#    whole cache slice of every layer at every step. The single query is instead multiplied
#    with the cache in its own layout, as [B, S*Hc, Dh] matrices, and only the entries of each
#    query head's own key/value head are kept (H times the FLOPs, negligible for one query).
#  * Only the slots before the query's own (``index + 1``) can be attended, so the matmuls read
#    just the first ``width`` slots, for the smallest of a few static widths
#    (:func:`decode_widths`) that covers them, picked by ``lax.switch``. The skipped slots are
#    causally masked; scores and softmax still span all S slots.


def decode_widths(max_len: int) -> list[int]:
    """The static attention widths for decoding: at most ``DECODE_WINDOWS``, a multiple of 8
    apart, the last one ``max_len``."""
    step = -(-max_len // (8 * DECODE_WINDOWS)) * 8
    return list(range(step, max_len, step)) + [max_len]


def _same_group(n_query: int, n_cache: int) -> Array:
    """[n_cache, n_query] bool: cache head ``c`` serves query head ``h`` (``h // groups == c``)."""
    groups = n_query // n_cache
    return (jnp.arange(n_query)[None, :] // groups) == jnp.arange(n_cache)[:, None]


def _decode_scores(q, cache_k, layer, width):
    """float32 scores [B, H, S] of one query over the cache slots ``< width`` (the rest
    ``MASK_VALUE``)."""
    B, _, H, Dh = q.shape
    S, Hc = cache_k.shape[2], cache_k.shape[3]
    k = cache_k[layer, :, :width].reshape(B, width * Hc, Dh)
    pairs = jnp.einsum("bnd,bhd->bnh", k, q[:, 0], preferred_element_type=jnp.float32)
    own = _same_group(H, Hc)  # [cache head, query head]
    scores = jnp.sum(jnp.where(own, pairs.reshape(B, width, Hc, H), 0.0), axis=2)  # exact: adds zeros
    return jnp.pad(scores.transpose(0, 2, 1), ((0, 0), (0, 0), (0, S - width)), constant_values=MASK_VALUE)


def _decode_values(probs, cache_v, layer, width):
    """[B, 1, H, Dh]: ``probs`` [B, H, S] times the cache values over slots ``< width``; the
    probabilities are spread to [B, H, width*Hc] (zero off the query head's own value head)."""
    B, H, _ = probs.shape
    Hc, Dh = cache_v.shape[3], cache_v.shape[4]
    own = _same_group(H, Hc).T  # [query head, cache head]
    spread = jnp.where(own[:, None, :], probs[:, :, :width, None], 0).reshape(B, H, width * Hc)
    v = cache_v[layer, :, :width].reshape(B, width * Hc, Dh)
    return jnp.einsum("bhn,bnd->bhd", spread, v)[:, None]


def decode_attend(
    q: Array,
    cache_k: Array,
    cache_v: Array,
    layer: int,
    index: Array,
    key_valid: Array,
    *,
    scale: float,
    dropout: Callable[[Array], Array] | None = None,
) -> Array:
    """Attention of one query per row (``q`` [B, 1, H, Dh], at slot ``index``) over layer
    ``layer`` of the whole cache arrays ``cache_k``/``cache_v`` [L, B, S, Hc, Dh], whose slot
    ``index`` already holds the query's own key/value; ``key_valid`` [B, S]. Returns
    [B, 1, H, Dh] in the cache dtype."""
    _check_heads(q.shape[2], cache_k.shape[3])
    S = cache_k.shape[2]
    widths = decode_widths(S)
    branch = jnp.sum(jnp.asarray(widths) < index + 1)  # smallest width covering the query's slot
    scores = jax.lax.switch(
        branch, [functools.partial(_decode_scores, layer=layer, width=w) for w in widths], q, cache_k
    )
    valid = key_valid.astype(jnp.bool_) & (jnp.arange(S) <= index)[None, :]  # [B, S]
    scores = jnp.where(valid[:, None, :], scores * scale, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(cache_v.dtype)
    if dropout is not None:
        probs = dropout(probs)
    return jax.lax.switch(
        branch, [functools.partial(_decode_values, layer=layer, width=w) for w in widths], probs, cache_v
    )


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
    ``(cache_k, cache_v, layer, index)`` with the WHOLE cache arrays [L, B, S, Hc, Dh]: the ``T``
    new keys/values (``Hkv`` heads, repeated to the cache's ``Hc``) are written in place at
    slots ``[index, index + T)`` of ``layer``, then one query decodes with
    :func:`decode_attend` and several attend over the cache with :func:`attend`.
    """
    if layer_cache is None:
        return attend(q, k, v, key_valid, scale=scale, dropout=dropout), None
    cache_k, cache_v, layer, index = layer_cache
    H, Hkv, Hc = q.shape[2], k.shape[2], cache_k.shape[3]
    if Hc % Hkv or H % Hc:
        raise ValueError(f"cache has {Hc} heads; need a multiple of {Hkv} key/value heads "
                         f"dividing {H} query heads")
    start = (layer, 0, index, 0, 0)
    if Hc != Hkv:
        k, v = (jnp.repeat(t, Hc // Hkv, axis=2) for t in (k, v))
    cache_k, cache_v = (jax.lax.dynamic_update_slice(cache, t[None].astype(cache.dtype), start)
                        for cache, t in ((cache_k, k), (cache_v, v)))
    if q.shape[1] == 1:
        out = decode_attend(q, cache_k, cache_v, layer, index, key_valid, scale=scale, dropout=dropout)
    else:
        out = attend(q, cache_k[layer], cache_v[layer], key_valid, q_offset=index, scale=scale,
                     dropout=dropout)
    return out, (cache_k, cache_v)
