"""Tests for the flax GPT-2 model, its heads, KV cache and HF name mapping."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaif_jax.models.gpt2 import (
    CausalLMWithValueHead,
    GPT2Config,
    GPT2LMHeadModel,
    ModelOutput,
    RewardModel,
    count_params,
    init_cache,
)
from rlaif_jax.models.hf_names import from_hf_state_dict, to_hf_state_dict
from rlaif_jax.sampling import positions_from_mask

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CFG = GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
B, T = 3, 12


def _ids(seed=0, shape=(B, T)):
    return jnp.asarray(np.random.RandomState(seed).randint(0, CFG.vocab_size, shape), jnp.int32)


def _init(model, seed=0):
    return jax.jit(model.init)(jax.random.key(seed), _ids())["params"]


def _left_padded_mask():
    """Rows with 0, 4 and 7 left pads."""
    mask = np.ones((B, T), np.int32)
    mask[1, :4] = 0
    mask[2, :7] = 0
    return jnp.asarray(mask)


@pytest.fixture(scope="module")
def hf_model():
    """A transformers GPT2LMHeadModel with random, non-trivial weights (eager attention)."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CFG.to_hf(), attn_implementation="eager"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def params(hf_model):
    return from_hf_state_dict(hf_model.state_dict(), CFG)


def _hf_logits(hf_model, ids, mask=None, positions=None):
    kwargs = {}
    if mask is not None:
        kwargs["attention_mask"] = torch.tensor(np.asarray(mask))
    if positions is not None:
        kwargs["position_ids"] = torch.tensor(np.asarray(positions))
    with torch.no_grad():
        return hf_model(torch.tensor(np.asarray(ids)), **kwargs).logits.numpy()


def test_output_shapes_and_dtypes():
    ids = _ids()

    lm = GPT2LMHeadModel(CFG)
    lm_params = _init(lm)
    out = lm.apply({"params": lm_params}, ids)
    assert isinstance(out, ModelOutput) and out.cache is None
    assert out.logits.shape == (B, T, CFG.vocab_size) and out.logits.dtype == jnp.float32
    assert out.hidden.shape == (B, T, CFG.n_embd)
    assert set(lm_params) == {"transformer"}
    hidden, _ = lm.apply({"params": lm_params}, ids, method="hidden_states")
    np.testing.assert_array_equal(hidden, out.hidden)
    np.testing.assert_array_equal(lm.apply({"params": lm_params}, hidden[:, -1], method="lm_logits"), out.logits[:, -1])

    vh = CausalLMWithValueHead(CFG)
    vh_params = _init(vh)
    assert set(vh_params) == {"transformer", "value_head"}
    (vh_out, values) = vh.apply({"params": vh_params}, ids)
    assert vh_out.logits.shape == (B, T, CFG.vocab_size) and values.shape == (B, T)
    assert values.dtype == jnp.float32
    np.testing.assert_array_equal(values, 0.0)  # zero-initialised value head
    # The trunk is shared: the LM params plug into the value-head model unchanged.
    vh_out2, _ = vh.apply({"params": {**vh_params, "transformer": lm_params["transformer"]}}, ids)
    np.testing.assert_array_equal(vh_out2.logits, out.logits)

    rm = RewardModel(CFG)
    rm_params = _init(rm)
    assert set(rm_params) == {"transformer", "reward_head"}
    rewards = rm.apply({"params": rm_params}, ids, attention_mask=jnp.ones((B, T), jnp.int32))
    assert rewards.shape == (B,) and rewards.dtype == jnp.float32

    assert count_params(lm_params) == sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(lm_params))
    hf_count = sum(p.numel() for p in transformers.GPT2LMHeadModel(transformers.GPT2Config(**CFG.to_hf())).parameters())
    assert count_params(lm_params) == hf_count


def test_param_names_and_shapes_match_hf(hf_model):
    params = _init(GPT2LMHeadModel(CFG), 1)
    sd = to_hf_state_dict(params)
    hf_sd = hf_model.state_dict()
    assert set(sd) == set(hf_sd)
    for name, value in sd.items():
        assert value.shape == tuple(hf_sd[name].shape), name
    # flax leaves <-> HF names is one-to-one (lm_head is the tied wte).
    assert len(jax.tree_util.tree_leaves(params)) == len(hf_sd) - 1
    back = from_hf_state_dict(sd, CFG)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


def test_init_statistics():
    params = _init(GPT2LMHeadModel(dataclasses.replace(CFG, n_embd=64, n_layer=4)))["transformer"]
    assert abs(float(jnp.std(params["wte"]["embedding"])) - 0.02) < 0.002
    assert abs(float(jnp.std(params["h_0"]["attn"]["c_attn"]["kernel"])) - 0.02) < 0.002
    scaled = 0.02 / np.sqrt(2 * 4)
    assert abs(float(jnp.std(params["h_0"]["mlp"]["c_proj"]["kernel"])) - scaled) < 0.1 * scaled
    assert abs(float(jnp.std(params["h_3"]["attn"]["c_proj"]["kernel"])) - scaled) < 0.15 * scaled
    np.testing.assert_array_equal(params["ln_f"]["scale"], 1.0)


def test_from_hf_state_dict_errors(hf_model):
    sd = dict(hf_model.state_dict())
    del sd["transformer.h.1.mlp.c_fc.bias"]
    sd["transformer.h.2.ln_1.weight"] = sd["transformer.h.1.ln_1.weight"]
    with pytest.raises(KeyError, match=r"missing=\['transformer.h.1.mlp.c_fc.bias'\].*unexpected=\['transformer.h.2"):
        from_hf_state_dict(sd, CFG)
    # Buffers from older transformers versions are ignored.
    sd = dict(hf_model.state_dict())
    sd["transformer.h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    sd["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    from_hf_state_dict(sd, CFG)
    with pytest.raises(ValueError, match="shape"):
        from_hf_state_dict(hf_model.state_dict(), dataclasses.replace(CFG, vocab_size=98))


def test_logit_parity_with_transformers(hf_model, params):
    model = GPT2LMHeadModel(CFG)
    ids = _ids(1)
    ours = np.asarray(model.apply({"params": params}, ids).logits)
    theirs = _hf_logits(hf_model, ids)
    assert np.abs(theirs).max() > 1.0  # non-trivial logits
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)

    mask = _left_padded_mask()
    positions = positions_from_mask(mask)
    ours = np.asarray(model.apply({"params": params}, ids, positions=positions, attention_mask=mask).logits)
    assert np.isfinite(ours).all()
    theirs = _hf_logits(hf_model, ids, mask, positions)
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-4, rtol=0)


def test_exported_state_dict_loads_into_transformers():
    params = _init(GPT2LMHeadModel(CFG), 2)
    params = jax.tree_util.tree_map(
        lambda x: x + 0.2 * jax.random.normal(jax.random.key(3), x.shape), params
    )  # non-trivial weights
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CFG.to_hf(), attn_implementation="eager")).eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in to_hf_state_dict(params).items()}, strict=True)
    ids = _ids(4)
    ours = np.asarray(GPT2LMHeadModel(CFG).apply({"params": params}, ids).logits)
    np.testing.assert_allclose(ours, _hf_logits(hf, ids), atol=1e-4, rtol=0)
    assert GPT2Config.from_hf(hf.config) == CFG


@pytest.mark.parametrize("left_pad", [False, True])
def test_kv_cache_decoding_matches_full_forward(params, left_pad):
    model = GPT2LMHeadModel(CFG)
    ids = _ids(5)
    mask = _left_padded_mask() if left_pad else jnp.ones((B, T), jnp.int32)
    positions = positions_from_mask(mask)
    full = np.asarray(model.apply({"params": params}, ids, positions=positions, attention_mask=mask).logits)

    prompt_len, max_len = 8, T + 2  # spare cache slots stay unused
    kv_mask = jnp.pad(mask, ((0, 0), (0, max_len - T)))

    @jax.jit
    def step(params, tokens, pos, cache):
        out = model.apply({"params": params}, tokens, positions=pos, attention_mask=kv_mask, cache=cache)
        return out.logits, out.cache

    logits, cache = step(params, ids[:, :prompt_len], positions[:, :prompt_len], init_cache(CFG, B, max_len))
    assert int(cache["index"]) == prompt_len
    pieces = [np.asarray(logits)]
    for t in range(prompt_len, T):
        logits, cache = step(params, ids[:, t : t + 1], positions[:, t : t + 1], cache)
        pieces.append(np.asarray(logits))
    assert int(cache["index"]) == T
    assert step._cache_size() == 2  # one prefill + one decode compilation
    cached = np.concatenate(pieces, axis=1)
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(cached[valid], full[valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_token_by_token_decoding_matches_one_call(params, dtype):
    """Token-by-token decoding from slot 0 gives the full-forward logits and the same cache as
    one multi-token call."""
    cfg = dataclasses.replace(CFG, dtype=dtype)
    model = GPT2LMHeadModel(cfg)
    max_len, n = 64, 50
    ids = _ids(11, (B, n))
    mask = np.ones((B, n), np.int32)
    mask[1, :4] = 0  # left padding
    mask[2, :17] = 0
    positions = positions_from_mask(mask)
    full = np.asarray(model.apply({"params": params}, ids, positions=positions, attention_mask=mask).logits)
    kv_mask = jnp.pad(jnp.asarray(mask), ((0, 0), (0, max_len - n)))

    @jax.jit
    def step(tokens, pos, cache):
        out = model.apply({"params": params}, tokens, positions=pos, attention_mask=kv_mask, cache=cache)
        return out.logits, out.cache

    # 1-token prefill (also the decode path), then one token at a time past slot 48.
    cache = init_cache(cfg, B, max_len)
    pieces = []
    for t in range(n):
        logits, cache = step(ids[:, t : t + 1], positions[:, t : t + 1], cache)
        pieces.append(np.asarray(logits))
    assert int(cache["index"]) == n
    cached = np.concatenate(pieces, axis=1)
    valid = mask.astype(bool)
    atol = 1e-5 if dtype == "float32" else 0.05 * np.abs(full).max()
    np.testing.assert_allclose(cached[valid], full[valid], atol=atol, rtol=0)

    # Same keys/values in the same layer and slot as writing all n tokens at once
    # (at valid slots: above layer 0, a pad slot's entries depend on attention over
    # no valid key); slots >= n stay untouched.
    _, one_call = step(ids, positions, init_cache(cfg, B, max_len))
    for name in ("k", "v"):
        # [L, B, S, H, Dh] from the L-tuple of heads-major [B, H, S, Dh] layers
        a, b = (np.stack([np.asarray(x, np.float32) for x in c[name]]).transpose(0, 1, 3, 2, 4)
                for c in (cache, one_call))
        tol = 1e-5 if dtype == "float32" else 0.05
        np.testing.assert_allclose(a[:, :, :n][:, valid], b[:, :, :n][:, valid], atol=tol, rtol=tol)
        assert (a[:, :, n:] == 0).all() and (np.abs(a[:, :, :n]).max(axis=(1, 2, 3, 4)) > 0).all()


def test_decode_step_updates_cache_in_place(params):
    """The compiled decode step writes the new rows into the layers' cache buffers instead of
    copying them (the cost that dominated sampling)."""
    model = GPT2LMHeadModel(CFG)
    cache = init_cache(CFG, B, 48)

    def step(params, tokens, cache):
        return model.apply({"params": params}, tokens, positions=jnp.zeros_like(tokens), cache=cache).cache

    hlo = jax.jit(step, donate_argnums=2).lower(params, _ids(12, (B, 1)), cache).compile().as_text()
    full = "f32[" + ",".join(map(str, cache["k"][0].shape)) + "]"
    producers = [line for line in hlo.splitlines() if f"= {full}" in line]
    assert producers, hlo
    bad = [line for line in producers if any(f" {op}(" in line for op in ("copy", "concatenate"))]
    assert not bad, "\n".join(bad)


def test_cache_layout():
    cache = init_cache(dataclasses.replace(CFG, dtype="bfloat16"), 2, 16)
    assert len(cache["k"]) == len(cache["v"]) == CFG.n_layer
    for layer in cache["k"] + cache["v"]:
        assert layer.shape == (2, CFG.n_head, 16, CFG.n_embd // CFG.n_head) and layer.dtype == jnp.bfloat16
    assert cache["index"].dtype == jnp.int32 and cache["index"].shape == ()


def test_bfloat16_compute_close_to_float32(params):
    ids = _ids(6)
    ref = np.asarray(GPT2LMHeadModel(CFG).apply({"params": params}, ids).logits)
    for param_dtype in ("float32", "bfloat16"):
        cfg = dataclasses.replace(CFG, dtype="bfloat16", param_dtype=param_dtype)
        p = jax.tree_util.tree_map(lambda x: x.astype(param_dtype), params)
        out = GPT2LMHeadModel(cfg).apply({"params": p}, ids)
        assert out.logits.dtype == jnp.float32 and out.hidden.dtype == jnp.bfloat16
        err = np.abs(np.asarray(out.logits) - ref).max()
        assert err < 0.05 * np.abs(ref).max(), (param_dtype, err)


def test_dropout_only_when_not_deterministic(params):
    model = GPT2LMHeadModel(dataclasses.replace(CFG, dropout=0.1))
    ids = _ids(7)
    ref = model.apply({"params": params}, ids).logits
    det = model.apply({"params": params}, ids, deterministic=True, rngs={"dropout": jax.random.key(1)}).logits
    np.testing.assert_array_equal(ref, det)
    np.testing.assert_array_equal(ref, GPT2LMHeadModel(CFG).apply({"params": params}, ids).logits)
    drop1 = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)}).logits
    drop2 = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(2)}).logits
    assert np.abs(np.asarray(drop1 - ref)).max() > 1e-3
    assert np.abs(np.asarray(drop1 - drop2)).max() > 1e-3


def test_reward_model_reads_last_valid_token(params):
    rm = RewardModel(CFG)
    ids = _ids(8)
    rm_params = _init(rm)
    rm_params = {**rm_params, "transformer": params["transformer"]}
    # Right padding after 12, 9 and 5 valid tokens.
    lengths = np.array([12, 9, 5])
    mask = jnp.asarray(np.arange(T)[None] < lengths[:, None], jnp.int32)
    rewards = rm.apply({"params": rm_params}, ids, attention_mask=mask)

    other_pads = jnp.where(mask == 1, ids, _ids(9))
    np.testing.assert_array_equal(rewards, rm.apply({"params": rm_params}, other_pads, attention_mask=mask))

    # Equals the head applied at index length-1 of the full-length hidden states.
    hidden = GPT2LMHeadModel(CFG).apply({"params": params}, ids).hidden
    head = rm_params["reward_head"]["Dense_0"]
    per_token = np.asarray(hidden @ head["kernel"] + head["bias"])[..., 0]
    np.testing.assert_allclose(rewards, per_token[np.arange(B), lengths - 1], atol=1e-5)
    assert len(set(np.asarray(rewards).round(6))) == B  # the head is not degenerate

    # Left padding: the last column is read.
    left = _left_padded_mask()
    left_rewards = rm.apply({"params": rm_params}, ids, attention_mask=left, positions=positions_from_mask(left))
    assert left_rewards.shape == (B,) and np.isfinite(np.asarray(left_rewards)).all()


def test_remat_same_logits_and_grads(params):
    ids = _ids(10)
    mask = _left_padded_mask()
    positions = positions_from_mask(mask)

    def loss(p, model):
        logits = model.apply({"params": p}, ids, positions=positions, attention_mask=mask).logits
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0])

    plain = GPT2LMHeadModel(CFG)
    remat = GPT2LMHeadModel(dataclasses.replace(CFG, remat=True))
    remat_params = _init(remat)
    assert jax.tree_util.tree_structure(remat_params) == jax.tree_util.tree_structure(params)
    l1, g1 = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, plain)
    l2, g2 = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, remat)
    np.testing.assert_allclose(l1, l2, atol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), g1, g2)
