"""Compiled autoregressive sampling for either model family (GPT-2, Llama).

One prefill call over the left-padded prompt fills a KV cache, then
``jax.lax.while_loop`` calls decode one token per step until every row has emitted EOS or
``max_new_tokens`` is reached.

The cache grows in segments: the first loop decodes ``segment`` tokens with a cache of
``prompt_len + segment`` slots, then the cache is padded by ``segment`` slots (one copy) and the
next loop decodes the next ``segment`` tokens, and so on. A decode step reads every slot of its
cache (XLA:CPU has no cheaper way to skip unwritten slots inside one loop: slicing them out
copies), so with 64-token prompts and 128 new tokens, four segments of 32 read 144 slots per step
on average instead of 192. Each segment is its own copy of the decode step in the compiled
program, so by default (:func:`default_segment`) there are at most ``MAX_SEGMENTS`` of them, and
none shorter than ``MIN_SEGMENT`` tokens (``config.sample.cache_segments = 1``: one loop).
Growing the cache does not raise the compiled program's memory: for 8 layers x 64 rows x 512
slots (a 128 MB cache), XLA:CPU's temporary buffers were 147 MB with four segments and 290 MB
with one loop, whose loop state is a second copy of the full cache.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax.models.build import init_cache


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Decoding settings (keyword-only).

    Tokens are drawn from ``softmax(logits / temperature)`` restricted to the
    ``top_k`` most likely tokens (if > 0) and to the ``top_p`` nucleus (if < 1);
    ``greedy`` takes the argmax of the raw logits instead.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    eos_id: int
    pad_id: int

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def left_pad(token_lists: Sequence[Sequence[int]], prompt_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads (or left-truncates, keeping the end) prompts to ``prompt_len``.

    Returns ``(ids [B, prompt_len] int32, mask [B, prompt_len] int32)``.
    """
    ids = np.full((len(token_lists), prompt_len), pad_id, np.int32)
    mask = np.zeros((len(token_lists), prompt_len), np.int32)
    for row, tokens in enumerate(token_lists):
        tokens = list(tokens)[-prompt_len:] if prompt_len > 0 else []
        if tokens:
            ids[row, -len(tokens):] = tokens
            mask[row, -len(tokens):] = 1
    return ids, mask


def positions_from_mask(mask) -> jax.Array:
    """Position ids for left-padded rows: ``max(cumsum(mask) - 1, 0)`` along the last axis."""
    return jnp.maximum(jnp.cumsum(jnp.asarray(mask, jnp.int32), axis=-1) - 1, 0)


def _order_key(x: jax.Array) -> jax.Array:
    """float32 -> uint32 whose unsigned order is the float order (-0.0 just below +0.0)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    sign = jnp.uint32(1 << 31)
    return jnp.where(bits >= sign, ~bits, bits | sign)


def _largest_key(ok: Callable[[jax.Array], jax.Array], batch: int) -> jax.Array:
    """Per row, the largest uint32 ``c`` with ``ok(c)``; [batch, 1].

    ``ok([batch, 1] uint32) -> [batch, 1] bool`` must hold for all ``c`` up to the
    answer and fail above it (0 if it never holds). The answer is built bit by bit
    from the most significant one: 32 vectorised reductions instead of a sort.
    """

    def set_bit(i, c):
        candidate = c | (jnp.uint32(1 << 31) >> i.astype(jnp.uint32))
        return jnp.where(ok(candidate), candidate, c)

    return jax.lax.fori_loop(0, 32, set_bit, jnp.zeros((batch, 1), jnp.uint32))


def filter_logits(logits: jax.Array, sampling: SamplingParams) -> jax.Array:
    """Temperature, top-k and top-p filtering of [B, V] logits; removed entries are -inf.

    top-k keeps the logits >= the k-th largest one; top-p keeps a token if the
    probability mass of the tokens with larger logits is < ``top_p`` (so the top
    token always stays), i.e. the smallest nucleus in sorted order. Both thresholds
    are found with :func:`_largest_key` rather than sorting the vocabulary, which
    XLA:CPU does slowly (tens of ms per decode step at batch 32).
    """
    logits = logits.astype(jnp.float32) / sampling.temperature
    batch = logits.shape[0]
    if 0 < sampling.top_k < logits.shape[-1]:
        order = _order_key(logits)
        # The k-th largest key is the largest c with at least k keys >= c.
        kth_key = _largest_key(lambda c: jnp.sum(order >= c, axis=-1, keepdims=True) >= sampling.top_k, batch)
        kth = jnp.min(jnp.where(order >= kth_key, logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        order = _order_key(logits)
        probs = jax.nn.softmax(logits, axis=-1)

        def enough_mass(c):  # mass of the tokens with keys >= c reaches top_p
            return jnp.sum(jnp.where(order >= c, probs, 0.0), axis=-1, keepdims=True) >= sampling.top_p

        # A token is kept iff the mass of the tokens above it is < top_p, so the
        # smallest kept key is the largest c with enough_mass(c) (if rounding left
        # the total mass below top_p, c = 0 and every token is kept).
        cut = _largest_key(enough_mass, batch)
        threshold = jnp.min(jnp.where(order >= cut, logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _argmax(x: jax.Array) -> jax.Array:
    """``jnp.argmax(x, axis=-1)`` (first maximal index; NaN counts as maximal) as int32.

    ``jnp.argmax`` lowers to a variadic (value, index) reduction, which XLA:CPU runs
    as a scalar loop together with everything fused into it (when sampling, the two
    logs per entry of the Gumbel noise). A max followed by a min over the indices
    attaining it gives the same index with vectorised single-output reductions.
    """
    best = jnp.max(x, axis=-1, keepdims=True)
    is_best = (x == best) | jnp.isnan(x)  # if the row has a NaN, only NaNs count
    index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(is_best, index, x.shape[-1]), axis=-1)


def _categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """Same draw as ``jax.random.categorical(key, logits, axis=-1)`` (argmax of
    logits + Gumbel noise), with the faster :func:`_argmax`."""
    return _argmax(jax.random.gumbel(key, logits.shape, logits.dtype) + logits)


def _choose(logits: jax.Array, rng: jax.Array, sampling: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """Picks one token per row; returns ``(token [B] int32, log_softmax(logits)[token] [B])``."""
    if sampling.greedy:
        token = _argmax(logits)
    else:
        token = _categorical(rng, filter_logits(logits, sampling))
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
    return token, logprob


# Cache segments by default (module docstring; the gain is measured in benchmarks/bench_generate):
# at most MAX_SEGMENTS loops (config.sample.cache_segments), each at least MIN_SEGMENT new tokens
# long. Every segment compiles one more copy of the decode step (about +0.6 s each for the tiny
# GPT-2 here), and fewer than 32 tokens save too few slot reads to pay for it.
MAX_SEGMENTS = 4
MIN_SEGMENT = 32


def default_segment(n_new: int, max_segments: int = MAX_SEGMENTS) -> int:
    """New tokens per cache segment for ``n_new`` new tokens: ``max(MIN_SEGMENT, ceil(n_new /
    max_segments))`` (one segment, i.e. one loop, when ``n_new <= MIN_SEGMENT`` or
    ``max_segments == 1``)."""
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}")
    return max(MIN_SEGMENT, -(-n_new // max_segments))


def segment_ends(n_new: int, segment: int) -> list[int]:
    """The ``step`` at which each decode loop stops: ``[segment, 2 * segment, ..., n_new]``."""
    if segment < 1:
        raise ValueError(f"segment must be >= 1, got {segment}")
    return list(range(segment, n_new, segment)) + [n_new]


def _grow(cache: dict, width: int) -> dict:
    """``cache`` with every layer's k/v padded with empty slots to ``width``."""
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, width - x.shape[2]), (0, 0)))
    return {"k": tuple(map(pad, cache["k"])), "v": tuple(map(pad, cache["v"])), "index": cache["index"]}


def make_generate_fn(model: nn.Module, sampling: SamplingParams, prompt_len: int, *,
                     segment: int | None = None, max_segments: int = MAX_SEGMENTS) -> Callable:
    """Builds a jitted ``generate(params, prompt_ids, prompt_mask, rng) -> dict``.

    ``params`` is the model's parameter tree (what goes under ``"params"``);
    ``prompt_ids``/``prompt_mask`` are [B, prompt_len] LEFT-padded. Returns
    ``tokens`` [B, N] int32 (EOS included, ``pad_id`` after it), ``logprobs`` [B, N]
    float32 (log_softmax of the raw model logits at the chosen token, 0 after
    done), ``lengths`` [B] int32 (generated tokens incl. EOS) and ``done`` [B] bool
    (EOS emitted), with ``N = max_new_tokens``. Compiles once per batch size.

    ``segment`` is the number of new tokens per cache segment (module docstring; None:
    ``default_segment(max_new_tokens, max_segments)``); ``segment >= max_new_tokens`` or
    ``max_segments=1`` gives one loop over a full-width cache. Segments change which cache
    slots a step reads, not what it computes.
    """
    n_new = sampling.max_new_tokens
    total_len = prompt_len + n_new
    if total_len > model.config.n_positions:
        raise ValueError(f"prompt_len + max_new_tokens = {total_len} exceeds n_positions={model.config.n_positions}")
    ends = segment_ends(n_new, default_segment(n_new, max_segments) if segment is None else segment)

    def generate(params, prompt_ids, prompt_mask, rng):
        batch = prompt_ids.shape[0]
        if prompt_ids.shape != (batch, prompt_len) or prompt_mask.shape != (batch, prompt_len):
            raise ValueError(f"expected [B, {prompt_len}] prompts, got {prompt_ids.shape} / {prompt_mask.shape}")
        variables = {"params": params}
        prompt_mask = prompt_mask.astype(jnp.int32)
        # Generated slots are always valid keys; causality hides the future ones.
        kv_mask = jnp.concatenate([prompt_mask, jnp.ones((batch, n_new), jnp.int32)], axis=1)
        # Prefill; LM logits only for the last prompt column (left padding).
        hidden, cache = model.apply(
            variables,
            prompt_ids.astype(jnp.int32),
            positions=positions_from_mask(prompt_mask),
            attention_mask=kv_mask[:, :prompt_len + ends[0]],
            cache=init_cache(model.config, batch, prompt_len + ends[0]),
            method="hidden_states",
        )
        first_logits = model.apply(variables, hidden[:, -1], method="lm_logits")
        next_pos = jnp.sum(prompt_mask, axis=-1)  # position id of the first new token

        def emit(state, logits, key):
            """Chooses token ``step`` from ``logits`` and records it."""
            step, done = state["step"], state["done"]
            token, logprob = _choose(logits, key, sampling)
            token = jnp.where(done, sampling.pad_id, token)
            logprob = jnp.where(done, 0.0, logprob)
            return dict(
                state,
                step=step + 1,
                tokens=state["tokens"].at[:, step].set(token),
                logprobs=state["logprobs"].at[:, step].set(logprob),
                lengths=state["lengths"] + (~done).astype(jnp.int32),
                done=done | (token == sampling.eos_id),
                last=token,
            )

        def body(state):
            # Feeds token step - 1 at slot prompt_len + step - 1 and chooses token step.
            rng, key = jax.random.split(state["rng"])
            positions = (next_pos + state["step"] - 1)[:, None]
            width = state["cache"]["k"][0].shape[2]
            out = model.apply(variables, state["last"][:, None], positions=positions,
                              attention_mask=kv_mask[:, :width], cache=state["cache"])
            return emit(dict(state, cache=out.cache, rng=rng), out.logits[:, -1], key)

        rng, key = jax.random.split(rng)
        state = dict(
            step=jnp.zeros((), jnp.int32),
            tokens=jnp.full((batch, n_new), sampling.pad_id, jnp.int32),
            logprobs=jnp.zeros((batch, n_new), jnp.float32),
            lengths=jnp.zeros((batch,), jnp.int32),
            done=jnp.zeros((batch,), jnp.bool_),
            last=jnp.zeros((batch,), jnp.int32),
            cache=cache,
            rng=rng,
        )
        state = emit(state, first_logits, key)
        for i, end in enumerate(ends):  # one loop per cache segment
            if i:
                state = dict(state, cache=_grow(state["cache"], prompt_len + end))

            def cond(st, end=end):
                return (st["step"] < end) & ~jnp.all(st["done"])

            state = jax.lax.while_loop(cond, body, state)
        return {k: state[k] for k in ("tokens", "logprobs", "lengths", "done")}

    return jax.jit(generate)
