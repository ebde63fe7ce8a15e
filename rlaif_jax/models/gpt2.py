"""Functional GPT-2 in flax.linen with a KV cache, plus value and reward heads.

The parameter tree maps one-to-one onto Hugging Face ``GPT2LMHeadModel``
state-dict names (see :mod:`rlaif_jax.models.hf_names`)::

    {"transformer": {"wte": {"embedding"}, "wpe": {"embedding"},
                     "h_0": {"ln_1": {"scale", "bias"},
                             "attn": {"c_attn": {"kernel", "bias"}, "c_proj": {...}},
                             "ln_2": {...},
                             "mlp": {"c_fc": {...}, "c_proj": {...}}},
                     ..., "ln_f": {"scale", "bias"}}}

HF's ``Conv1D`` weights are stored ``[in, out]`` like a flax ``Dense`` kernel, so
no transposes are needed. Input and output embeddings are tied (the LM logits
are ``transformer.wte.attend(hidden)``).

KV cache layout (see :func:`init_cache`)::

    {"k": L-tuple of [B, H, S, Dh], "v": L-tuple of [B, H, S, Dh]  (compute dtype),
     "index": int32 scalar  (number of slots already written)}

A call with a cache writes its ``T`` new tokens at slots ``[index, index + T)``
and returns the cache with ``index + T``; slot numbers are independent of the
position ids, so left-padded prompts can be prefilled in one call. Each layer's
heads-major arrays are updated in place (inside a decode loop XLA carries each
buffer and writes the new slot into it; nothing is sliced out or re-stacked). The attention
core (block-causal for multi-token calls, a decode-specific one for single tokens) is
:mod:`rlaif_jax.models.attention`, shared with the Llama family.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlaif_jax.models.attention import cached_attend, empty_cache, weights_dropout
from rlaif_jax.models.residual import materialize_grad

Array = jax.Array
Cache = dict[str, Array]

INIT_STD = 0.02


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """GPT-2 hyper-parameters.

    ``dropout`` is a single rate used for the embedding, attention-probability and
    residual dropouts. ``dtype`` is the compute dtype, ``param_dtype`` the storage
    dtype of the parameters. ``remat`` rematerialises every block on the backward
    pass.
    """

    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16"):
                raise ValueError(f"{name} must be 'float32' or 'bfloat16', got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_hf(cls, hf_config: dict | Any, **overrides) -> "GPT2Config":
        """Builds a config from a HF GPT-2 config dict (or ``transformers.GPT2Config``).

        ``dropout`` is taken from ``resid_pdrop``. Architectural variants this model
        does not implement raise ``ValueError``. ``overrides`` (e.g. ``dtype``,
        ``remat``) replace fields of the result.
        """
        d = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        if d.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"not a GPT-2 config: model_type={d.get('model_type')!r}")
        n_inner = d.get("n_inner")
        if n_inner is not None and n_inner != 4 * d["n_embd"]:
            raise ValueError(f"n_inner={n_inner} is not supported (only 4 * n_embd)")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"activation_function={act!r} is not supported (tanh-GELU only)")
        if not d.get("scale_attn_weights", True) or d.get("scale_attn_by_inverse_layer_idx", False):
            raise ValueError("only the standard 1/sqrt(head_dim) attention scaling is supported")
        if not d.get("tie_word_embeddings", True):
            raise ValueError("untied word embeddings are not supported")
        kwargs = dict(
            vocab_size=d["vocab_size"],
            n_positions=d["n_positions"],
            n_embd=d["n_embd"],
            n_layer=d["n_layer"],
            n_head=d["n_head"],
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
            dropout=d.get("resid_pdrop", 0.0),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict:
        """A dict accepted by ``transformers.GPT2Config(**d)``."""
        return dict(
            model_type="gpt2",
            architectures=["GPT2LMHeadModel"],
            vocab_size=self.vocab_size,
            n_positions=self.n_positions,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_inner=None,
            activation_function="gelu_new",
            layer_norm_epsilon=self.layer_norm_epsilon,
            resid_pdrop=self.dropout,
            embd_pdrop=self.dropout,
            attn_pdrop=self.dropout,
            initializer_range=INIT_STD,
            scale_attn_weights=True,
            tie_word_embeddings=True,
            # Explicit None keeps transformers from defaulting to GPT-2's 50256.
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )


class ModelOutput(NamedTuple):
    """``logits`` [B,T,V] float32, ``hidden`` [B,T,D] final-LN states, ``cache`` or None."""

    logits: Array
    hidden: Array
    cache: Cache | None


def init_cache(config: GPT2Config, batch_size: int, max_len: int) -> Cache:
    """An empty KV cache with ``max_len`` slots (layout in the module docstring)."""
    return empty_cache(config.n_layer, batch_size, max_len, config.n_head, config.head_dim,
                       config.compute_dtype)


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def _dense(config: GPT2Config, features: int, name: str, std: float = INIT_STD) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        kernel_init=nn.initializers.normal(std),
        bias_init=nn.initializers.zeros,
        name=name,
    )


def _layer_norm(config: GPT2Config, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_epsilon,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        use_fast_variance=False,
        name=name,
    )


class GPT2Attention(nn.Module):
    """Causal multi-head self-attention with an optional KV cache."""

    config: GPT2Config

    @nn.compact
    def __call__(self, x, key_valid, layer_cache, deterministic):
        """``key_valid`` [B,S] bool; ``layer_cache`` None or ``(k, v, index)`` with this
        layer's cache arrays [B,H,S,Dh]: the ``T`` new keys/values are written into them at
        slot ``index`` and the updated arrays are returned as ``new_layer_cache = (k, v)``.
        """
        cfg = self.config
        B, T, _ = x.shape
        resid_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        qkv = _dense(cfg, 3 * cfg.n_embd, "c_attn")(x)
        q, k, v = (t.reshape(B, T, cfg.n_head, cfg.head_dim) for t in jnp.split(qkv, 3, axis=-1))
        out, new_layer_cache = cached_attend(q, k, v, key_valid, layer_cache,
                                             scale=1 / math.sqrt(cfg.head_dim),
                                             dropout=weights_dropout(cfg.dropout, deterministic))
        out = _dense(cfg, cfg.n_embd, "c_proj", resid_std)(out.reshape(B, T, cfg.n_embd))
        out = nn.Dropout(cfg.dropout)(out, deterministic=deterministic)
        return out, new_layer_cache


class GPT2MLP(nn.Module):
    """Position-wise MLP: c_fc -> tanh-GELU -> c_proj -> dropout."""

    config: GPT2Config

    @nn.compact
    def __call__(self, x, deterministic):
        cfg = self.config
        resid_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        h = jax.nn.gelu(_dense(cfg, 4 * cfg.n_embd, "c_fc")(x), approximate=True)
        h = _dense(cfg, cfg.n_embd, "c_proj", resid_std)(h)
        return nn.Dropout(cfg.dropout)(h, deterministic=deterministic)


class GPT2Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    config: GPT2Config

    @nn.compact
    def __call__(self, x, key_valid, layer_cache, deterministic):
        x = materialize_grad(x)  # see models/residual.py
        attn_out, new_layer_cache = GPT2Attention(self.config, name="attn")(
            _layer_norm(self.config, "ln_1")(x), key_valid, layer_cache, deterministic
        )
        x = x + attn_out
        x = x + GPT2MLP(self.config, name="mlp")(_layer_norm(self.config, "ln_2")(x), deterministic)
        return x, new_layer_cache


class GPT2Trunk(nn.Module):
    """Embeddings, the unrolled blocks ``h_0..h_{L-1}`` and ``ln_f``; shared by all heads."""

    config: GPT2Config

    def setup(self):
        cfg = self.config
        embed = dict(
            features=cfg.n_embd,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            embedding_init=nn.initializers.normal(INIT_STD),
        )
        self.wte = nn.Embed(cfg.vocab_size, **embed)
        self.wpe = nn.Embed(cfg.n_positions, **embed)
        self.drop = nn.Dropout(cfg.dropout)
        # self counts as argnum 0: static `deterministic` is argnum 4.
        block_cls = nn.remat(GPT2Block, static_argnums=(4,)) if cfg.remat else GPT2Block
        self.h = [block_cls(cfg) for _ in range(cfg.n_layer)]
        self.ln_f = _layer_norm(cfg, "ln_f")

    def __call__(self, input_ids, *, positions=None, attention_mask=None, cache=None, deterministic=True):
        """Returns ``(hidden [B,T,D], new_cache or None)``; arguments as in :class:`GPT2LMHeadModel`."""
        B, T = input_ids.shape
        offset, kv_len = (0, T) if cache is None else (cache["index"], cache["k"][0].shape[2])
        q_slots = offset + jnp.arange(T)  # cache slot of each query
        if positions is None:
            positions = jnp.broadcast_to(q_slots, (B, T))
        if attention_mask is None:
            attention_mask = jnp.ones((B, kv_len), jnp.bool_)
        if attention_mask.shape != (B, kv_len):
            raise ValueError(f"attention_mask shape {attention_mask.shape} != {(B, kv_len)}")
        key_valid = attention_mask.astype(jnp.bool_)  # the causal part is the attention's

        x = self.wte(input_ids) + self.wpe(positions)
        x = self.drop(x, deterministic=deterministic)
        new_k, new_v = [], []
        for i, block in enumerate(self.h):
            layer_cache = None if cache is None else (cache["k"][i], cache["v"][i], offset)
            x, new_layer_cache = block(x, key_valid, layer_cache, deterministic)
            if cache is not None:
                new_k.append(new_layer_cache[0])
                new_v.append(new_layer_cache[1])
        hidden = self.ln_f(x)
        new_cache = None if cache is None else {"k": tuple(new_k), "v": tuple(new_v), "index": offset + T}
        return hidden, new_cache

    def logits(self, hidden):
        """Tied LM head: ``wte.attend(hidden)`` as float32."""
        return self.wte.attend(hidden).astype(jnp.float32)


class GPT2LMHeadModel(nn.Module):
    """GPT-2 language model with tied embeddings.

    Args of ``__call__``:
      input_ids: [B,T] int token ids.
      positions: [B,T] position ids; default ``arange(T)`` (+ cache index). Callers
        with left-padded inputs pass ``max(cumsum(mask) - 1, 0)``.
      attention_mask: 0/1 validity of key positions, [B,T] without a cache and
        [B,S] (the whole cache window) with one.
      cache: from :func:`init_cache`; the new tokens are written at slots
        ``[index, index+T)`` and each query attends to valid slots <= its own.
      deterministic: disables dropout when True (else needs the "dropout" rng).

    ``apply(..., method="hidden_states")`` (same arguments, returns ``(hidden, cache)``)
    followed by ``apply(hidden, method="lm_logits")`` computes logits for selected
    positions only (e.g. the last prompt token when sampling).
    """

    config: GPT2Config

    def setup(self):
        self.transformer = GPT2Trunk(self.config)

    def __call__(self, input_ids, *, positions=None, attention_mask=None, cache=None, deterministic=True):
        hidden, new_cache = self.hidden_states(
            input_ids, positions=positions, attention_mask=attention_mask, cache=cache, deterministic=deterministic
        )
        return ModelOutput(self.lm_logits(hidden), hidden, new_cache)

    def hidden_states(self, input_ids, *, positions=None, attention_mask=None, cache=None, deterministic=True):
        """Final-LN hidden states [B,T,D] and the new cache (or None)."""
        return self.transformer(
            input_ids, positions=positions, attention_mask=attention_mask, cache=cache, deterministic=deterministic
        )

    def lm_logits(self, hidden):
        """Tied-embedding logits (float32) for hidden states of any leading shape."""
        return self.transformer.logits(hidden)


class ScalarHead(nn.Module):
    """Dense(1) on hidden states -> [B,T] float32; zero kernel init when ``init_std == 0``."""

    init_std: float = 0.0
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, hidden):
        init = nn.initializers.normal(self.init_std) if self.init_std > 0 else nn.initializers.zeros
        out = nn.Dense(1, dtype=jnp.float32, param_dtype=jnp.dtype(self.param_dtype), kernel_init=init)(
            hidden.astype(jnp.float32)
        )
        return out[..., 0]


class CausalLMWithValueHead(nn.Module):
    """LM plus a per-token value head; params ``{"transformer", "value_head"}``.

    Same call signature as :class:`GPT2LMHeadModel`; returns ``(ModelOutput, values [B,T])``.
    The value head is zero-initialised (initial values are 0).
    """

    config: GPT2Config

    def setup(self):
        self.transformer = GPT2Trunk(self.config)
        self.value_head = ScalarHead(0.0, self.config.param_dtype)

    def __call__(self, input_ids, *, positions=None, attention_mask=None, cache=None, deterministic=True):
        hidden, new_cache = self.transformer(
            input_ids, positions=positions, attention_mask=attention_mask, cache=cache, deterministic=deterministic
        )
        out = ModelOutput(self.transformer.logits(hidden), hidden, new_cache)
        return out, self.value_head(hidden)


class RewardModel(nn.Module):
    """Sequence reward read at the last valid token; params ``{"transformer", "reward_head"}``.

    ``__call__(input_ids [B,T], *, attention_mask [B,T] or None, positions, deterministic)``
    returns rewards [B] float32 taken at the last position where ``attention_mask == 1``
    (the last position when no mask is given). Left-padded callers should pass
    ``positions`` derived from the mask, as for the LM.
    """

    config: GPT2Config

    def setup(self):
        self.transformer = GPT2Trunk(self.config)
        self.reward_head = ScalarHead(INIT_STD, self.config.param_dtype)

    def __call__(self, input_ids, *, attention_mask=None, positions=None, deterministic=True):
        hidden, _ = self.transformer(
            input_ids, positions=positions, attention_mask=attention_mask, deterministic=deterministic
        )
        scores = self.reward_head(hidden)  # [B,T]
        B, T = input_ids.shape
        if attention_mask is None:
            last = jnp.full((B,), T - 1)
        else:
            last = T - 1 - jnp.argmax(attention_mask[:, ::-1].astype(jnp.int32), axis=-1)
        return jnp.take_along_axis(scores, last[:, None], axis=-1)[:, 0]
