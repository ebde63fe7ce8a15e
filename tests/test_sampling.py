"""Tests for the compiled KV-cache sampler."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaif_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel
from rlaif_jax.sampling import (
    SamplingParams,
    _argmax,
    _categorical,
    default_segment,
    filter_logits,
    left_pad,
    make_generate_fn,
    positions_from_mask,
    segment_ends,
)

CFG = GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
MODEL = GPT2LMHeadModel(CFG)
PROMPT_LEN, N_NEW = 8, 10
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 2, 3], [40], [7, 7, 7, 7, 7, 7]]


def _params(seed, scale=0.3):
    """Random params with peaked output distributions."""
    params = jax.jit(MODEL.init)(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1000), len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


@pytest.fixture(scope="module")
def params():
    return _params(0)


def _sp(**kw):
    return SamplingParams(**{"max_new_tokens": N_NEW, "eos_id": 96, "pad_id": 0, **kw})


@jax.jit
def _forward_logits(params, ids, mask):
    return MODEL.apply({"params": params}, ids, positions=positions_from_mask(mask), attention_mask=mask).logits


def _full_logits(params, prompt_ids, prompt_mask, tokens):
    """Full-forward logits predicting each generated token: [B, N, V]."""
    ids = np.concatenate([prompt_ids, tokens], axis=1)
    mask = np.concatenate([prompt_mask, np.ones_like(tokens)], axis=1)
    return np.asarray(_forward_logits(params, ids, mask)[:, PROMPT_LEN - 1 : -1])


def _naive_greedy(params, prompt_ids, prompt_mask, n_new, eos_id, pad_id):
    """Reference: full forward over the sequence so far, argmax, append; pads after EOS.

    The sequence lives in a fixed [B, P + n_new] buffer so the forward compiles once;
    causal attention makes the not-yet-written tail irrelevant.
    """
    batch = len(prompt_ids)
    ids = np.concatenate([prompt_ids, np.zeros((batch, n_new), np.int32)], 1)
    mask = np.concatenate([prompt_mask, np.ones((batch, n_new), np.int32)], 1)
    done = np.zeros(batch, bool)
    for i in range(n_new):
        logits = _forward_logits(params, ids, mask)[:, PROMPT_LEN + i - 1]
        token = np.where(done, pad_id, np.asarray(jnp.argmax(logits, -1)))
        done |= token == eos_id
        ids[:, PROMPT_LEN + i] = token
    return ids[:, PROMPT_LEN:]


def test_left_pad_and_positions():
    ids, mask = left_pad([[1, 2, 3], [4, 5, 6, 7, 8, 9], []], 4, pad_id=0)
    np.testing.assert_array_equal(ids, [[0, 1, 2, 3], [6, 7, 8, 9], [0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(positions_from_mask(mask), [[0, 0, 1, 2], [0, 1, 2, 3], [0, 0, 0, 0]])


def test_sampling_params_validation():
    with pytest.raises(ValueError):
        _sp(temperature=0.0)
    with pytest.raises(ValueError):
        _sp(top_p=0.0)
    with pytest.raises(TypeError):
        SamplingParams(10, eos_id=1, pad_id=0)  # keyword-only


def _hard_logits(vocab, seed=0):
    """[rows, vocab] float32 logits with the awkward cases: ties, signed zeros, -inf, flat and peaked rows."""
    rs = np.random.RandomState(seed)
    ties = rs.randint(-4, 4, (16, vocab)).astype(np.float32)
    signed_zeros = np.where(ties == 0, np.float32(-0.0), ties)
    signed_zeros[:, ::5] = 0.0
    masked = rs.randn(16, vocab).astype(np.float32)
    masked[rs.rand(16, vocab) < 0.6] = -np.inf
    one_left = np.full((2, vocab), -np.inf, np.float32)
    one_left[:, 7] = 0.5
    return np.concatenate([3 * rs.randn(32, vocab), 12 * rs.randn(16, vocab), 0.01 * rs.randn(16, vocab),
                           ties, signed_zeros, masked, one_left, np.ones((2, vocab))]).astype(np.float32)


def test_argmax_and_categorical_match_jax():
    x = _hard_logits(CFG.vocab_size)
    np.testing.assert_array_equal(jax.jit(_argmax)(x), jnp.argmax(x, axis=-1))
    nan_rows = x[:4].copy()
    nan_rows[0, [5, 9]] = np.nan
    nan_rows[1, 0] = np.nan
    nan_rows[2, 3], nan_rows[2, 8] = np.inf, np.nan  # NaN beats an earlier +inf
    np.testing.assert_array_equal(jax.jit(_argmax)(nan_rows), jnp.argmax(nan_rows, axis=-1))
    for seed in range(5):
        key = jax.random.key(seed)
        np.testing.assert_array_equal(
            jax.jit(_categorical)(key, x), jax.jit(lambda k, l: jax.random.categorical(k, l, axis=-1))(key, x)
        )


def _sort_filter(logits, sampling):
    """Reference top-k / top-p via a full sort (the original implementation)."""
    logits = logits.astype(jnp.float32) / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        keep = (jnp.cumsum(probs, axis=-1) - probs) < sampling.top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


@pytest.mark.parametrize("vocab", [CFG.vocab_size, 4096])
def test_filter_logits_matches_sort_reference(vocab):
    """The sort-free thresholds equal the sorted ones: exactly for top-k; for top-p up
    to float rounding of the cumulative mass (these cases keep clear of the boundary)."""
    x = _hard_logits(vocab, seed=vocab)
    settings = [dict(top_k=1), dict(top_k=5), dict(top_k=vocab - 1), dict(top_p=0.3), dict(top_p=0.9),
                dict(top_p=1e-6), dict(top_k=50, top_p=0.8, temperature=0.7), dict(top_p=0.95, temperature=1.3)]
    for kw in settings:
        sp = _sp(**kw)
        ours = np.asarray(jax.jit(lambda l: filter_logits(l, sp))(x))
        ref = np.asarray(jax.jit(lambda l: _sort_filter(l, sp))(x))
        np.testing.assert_array_equal(ours, ref, err_msg=str(kw))
        assert (np.isfinite(ours).sum(-1) >= 1).all()


@pytest.mark.parametrize("segment", [N_NEW, 3])  # one full-width loop; four growing caches
def test_greedy_matches_naive_loop_and_eos(params, segment):
    ids, mask = left_pad(PROMPTS, PROMPT_LEN, pad_id=0)
    # An eos_id that greedy never emits: all rows run to max_new_tokens.
    free = _naive_greedy(params, ids, mask, N_NEW, eos_id=-1, pad_id=0)
    unused = sorted(set(range(CFG.vocab_size)) - set(free.ravel().tolist()))[0]
    out = make_generate_fn(MODEL, _sp(greedy=True, eos_id=unused), PROMPT_LEN, segment=segment)(
        params, ids, mask, jax.random.key(0))
    np.testing.assert_array_equal(out["tokens"], free)
    np.testing.assert_array_equal(out["lengths"], N_NEW)
    assert not np.asarray(out["done"]).any()
    assert out["tokens"].dtype == jnp.int32 and out["lengths"].dtype == jnp.int32
    assert out["logprobs"].dtype == jnp.float32 and out["done"].dtype == jnp.bool_

    # EOS = the token row 0 emits at step 3: rows stop at their first EOS and pad after it.
    eos = int(free[0, 3])
    pad = 95
    out = make_generate_fn(MODEL, _sp(greedy=True, eos_id=eos, pad_id=pad), PROMPT_LEN, segment=segment)(
        params, ids, mask, jax.random.key(0))
    tokens, lengths, done = (np.asarray(out[k]) for k in ("tokens", "lengths", "done"))
    first_eos = (free == eos).argmax(1)
    hit = (free == eos).any(1)
    assert hit[0] and first_eos[0] <= 3
    np.testing.assert_array_equal(done, hit)
    np.testing.assert_array_equal(lengths, np.where(hit, first_eos + 1, N_NEW))
    for row in range(len(PROMPTS)):
        n = lengths[row]
        np.testing.assert_array_equal(tokens[row, :n], free[row, :n])
        assert (tokens[row, n:] == pad).all() and (np.asarray(out["logprobs"])[row, n:] == 0).all()
        assert (np.asarray(out["logprobs"])[row, :n] < 0).all()


def test_segment_ends():
    assert segment_ends(10, 3) == [3, 6, 9, 10]
    assert segment_ends(10, 5) == [5, 10]
    assert segment_ends(10, 10) == segment_ends(10, 32) == [10]
    with pytest.raises(ValueError, match="segment"):
        segment_ends(10, 0)
    # Default: at most 4 loops, none shorter than 32 tokens.
    assert [default_segment(n) for n in (10, 32, 128, 129, 384)] == [32, 32, 32, 33, 96]
    assert [len(segment_ends(n, default_segment(n))) for n in (10, 64, 128, 384)] == [1, 2, 4, 4]


def test_segments_change_the_cache_widths_not_the_samples(params):
    ids, mask = _many_prompts(16)
    free = make_generate_fn(MODEL, _sp(top_p=0.9, eos_id=-1), PROMPT_LEN)(params, ids, mask, jax.random.key(3))
    sp = _sp(top_p=0.9, eos_id=int(np.asarray(free["tokens"])[0, 5]))  # some rows stop mid-run
    one = make_generate_fn(MODEL, sp, PROMPT_LEN, segment=N_NEW)
    grown = make_generate_fn(MODEL, sp, PROMPT_LEN, segment=4)
    a, b = (fn(params, ids, mask, jax.random.key(3)) for fn in (one, grown))
    for k in ("tokens", "lengths", "done"):
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_allclose(a["logprobs"], b["logprobs"], atol=1e-5)
    assert np.asarray(a["done"]).any() and not np.asarray(a["done"]).all()  # EOS inside the run

    # The compiled program holds each segment's cache width: prompt + 4, + 8, + 10 slots.
    head_dim = CFG.n_embd // CFG.n_head
    hlo = grown.lower(params, ids, mask, jax.random.key(3)).compile().as_text()
    for width in (PROMPT_LEN + 4, PROMPT_LEN + 8, PROMPT_LEN + N_NEW):
        assert f"f32[16,{CFG.n_head},{width},{head_dim}]" in hlo, width
    one_hlo = one.lower(params, ids, mask, jax.random.key(3)).compile().as_text()
    assert f"f32[16,{CFG.n_head},{PROMPT_LEN + 4},{head_dim}]" not in one_hlo


def test_top_k_1_equals_greedy(params):
    ids, mask = left_pad(PROMPTS, PROMPT_LEN, pad_id=0)
    greedy = make_generate_fn(MODEL, _sp(greedy=True), PROMPT_LEN)(params, ids, mask, jax.random.key(0))
    top1 = make_generate_fn(MODEL, _sp(top_k=1, temperature=1.7), PROMPT_LEN)(params, ids, mask, jax.random.key(1))
    for k in ("tokens", "lengths", "done"):
        np.testing.assert_array_equal(greedy[k], top1[k])
    np.testing.assert_allclose(greedy["logprobs"], top1["logprobs"], atol=1e-6)


def _many_prompts(n_rows, seed=0):
    rs = np.random.RandomState(seed)
    prompts = [rs.randint(1, CFG.vocab_size, rs.randint(1, PROMPT_LEN + 1)).tolist() for _ in range(n_rows)]
    return left_pad(prompts, PROMPT_LEN, pad_id=0)


@pytest.mark.parametrize("kw", [dict(top_k=5, temperature=1.3), dict(top_p=0.6, temperature=0.8)])
def test_samples_lie_in_filtered_set_and_logprobs_match(params, kw):
    ids, mask = _many_prompts(64)
    sp = _sp(eos_id=3, **kw)
    out = make_generate_fn(MODEL, sp, PROMPT_LEN)(params, ids, mask, jax.random.key(7))
    tokens, lengths, logprobs = (np.asarray(out[k]) for k in ("tokens", "lengths", "logprobs"))
    logits = _full_logits(params, ids, mask, tokens)
    valid = np.arange(N_NEW)[None] < lengths[:, None]
    assert valid.sum() > 200

    chosen = np.take_along_axis(logits, tokens[..., None], -1)[..., 0]
    if sp.top_k:
        in_set = chosen >= np.sort(logits, -1)[..., -sp.top_k]
    else:
        probs = np.asarray(jax.nn.softmax(logits / sp.temperature, -1))
        chosen_p = np.take_along_axis(probs, tokens[..., None], -1)[..., 0]
        mass_above = np.where(probs > chosen_p[..., None], probs, 0).sum(-1)
        in_set = mass_above < sp.top_p + 1e-5
        nucleus_size = (np.cumsum(-np.sort(-probs, -1), -1) < sp.top_p).sum(-1) + 1
        assert (nucleus_size[valid] < CFG.vocab_size // 2).all()  # the filter really removes tokens
    assert in_set[valid].all()
    assert (chosen[valid] < logits.max(-1)[valid]).any()  # not just greedy

    expected = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, -1)), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(logprobs[valid], expected[valid], atol=1e-4)
    assert (logprobs[~valid] == 0).all() and (tokens[~valid] == sp.pad_id).all()


def test_rng_determinism(params):
    ids, mask = _many_prompts(16)
    fn = make_generate_fn(MODEL, _sp(), PROMPT_LEN)
    a = fn(params, ids, mask, jax.random.key(0))
    b = fn(params, ids, mask, jax.random.key(0))
    c = fn(params, ids, mask, jax.random.key(1))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert (np.asarray(a["tokens"]) != np.asarray(c["tokens"])).any()


def test_no_retrace_on_new_params_and_prompts(params):
    traces = []

    class CountingLM(GPT2LMHeadModel):
        def hidden_states(self, input_ids, **kw):
            traces.append(input_ids.shape)
            return super().hidden_states(input_ids, **kw)

    fn = make_generate_fn(CountingLM(CFG), _sp(top_k=10, top_p=0.9), PROMPT_LEN)
    ids, mask = _many_prompts(8, seed=1)
    first = fn(params, ids, mask, jax.random.key(0))
    n_traces = len(traces)
    assert n_traces == 2  # prefill + the while_loop body
    ids2, mask2 = _many_prompts(8, seed=2)
    second = fn(_params(5), ids2, mask2, jax.random.key(1))
    assert len(traces) == n_traces and fn._cache_size() == 1
    assert (np.asarray(first["tokens"]) != np.asarray(second["tokens"])).any()
    # A new batch size compiles once more.
    fn(params, ids[:4], mask[:4], jax.random.key(0))
    assert fn._cache_size() == 2


def test_bf16_model_generates():
    cfg = dataclasses.replace(CFG, dtype="bfloat16")
    model = GPT2LMHeadModel(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    ids, mask = _many_prompts(4)
    out = make_generate_fn(model, _sp(), PROMPT_LEN)(params, ids, mask, jax.random.key(0))
    assert out["tokens"].shape == (4, N_NEW) and np.isfinite(np.asarray(out["logprobs"])).all()


def test_growing_cache_needs_no_more_memory_than_one_loop():
    """Compiled temporary memory (XLA's own accounting): growing the cache in segments holds no
    more than one loop over a full-width cache, whose loop state is a copy of that cache."""
    cfg = GPT2Config(vocab_size=97, n_positions=160, n_embd=32, n_layer=2, n_head=4)
    model = GPT2LMHeadModel(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    ids = mask = jnp.ones((32, 32), jnp.int32)
    sp = SamplingParams(max_new_tokens=128, eos_id=-1, pad_id=0)
    cache_bytes = 2 * cfg.n_layer * 32 * (32 + 128) * cfg.n_embd * 4
    temp = {segment: make_generate_fn(model, sp, 32, segment=segment).lower(
        params, ids, mask, jax.random.key(0)).compile().memory_analysis().temp_size_in_bytes
        for segment in (128, 32)}
    assert temp[128] >= cache_bytes  # the full-width cache is in there
    assert temp[32] <= temp[128]
