"""Llama-family decoder (Llama 2/3, Qwen2 / Qwen2.5(-Coder), SmolLM) in flax.linen, with a KV cache.

Architecture, per block (pre-norm, no biases unless the config asks for them)::

    h = x + o_proj(attention(rope(q_proj(rms1(x))), rope(k_proj(rms1(x))), v_proj(rms1(x))))
    y = h + down_proj(silu(gate_proj(rms2(h))) * up_proj(rms2(h)))

followed by a final RMSNorm and an LM head (tied to the token embedding or its own matrix).

* **RMSNorm** normalises in float32 by ``rsqrt(mean(x^2) + eps)``, casts back to the compute dtype
  and multiplies by its ``scale`` (HF ``LlamaRMSNorm`` / ``Qwen2RMSNorm``; no ``1 + w``).
* **Rotary embeddings** follow HF's "rotate_half" convention: the head dimension is split into
  halves ``(x1, x2)`` (not interleaved pairs), ``rotate_half(x) = concat(-x2, x1)`` and
  ``rope(x) = x * cos + rotate_half(x) * sin`` with ``cos``/``sin`` of
  ``concat(pos * inv_freq, pos * inv_freq)`` and ``inv_freq = rope_theta ** (-arange(0, Dh, 2) / Dh)``,
  computed in float32 from the position ids (so left-padded rows pass ``max(cumsum(mask) - 1, 0)``
  like for GPT-2). ``rope_theta`` comes from the HF config (1e6 for Qwen2.5, 5e5 for Llama 3,
  1e4 by default). ``rope_type`` "linear" divides ``inv_freq`` by ``factor``; "llama3" applies
  Llama 3.1's wavelength-dependent rescaling. Other RoPE types are refused by ``from_hf``.
* **Grouped-query attention**: ``n_head`` query heads share ``n_kv_head`` key/value heads; query
  head ``h`` reads kv head ``h // (n_head // n_kv_head)`` (HF ``repeat_kv``). Scores are scaled by
  ``head_dim ** -0.5``.
* **Biases**: ``qkv_bias`` (Qwen2: always on q/k/v, never on o), ``o_bias`` (Llama's
  ``attention_bias`` turns on all four) and ``mlp_bias``.

Parameter tree (names follow HF so the mapping in :mod:`rlaif_jax.models.llama_names` is a table)::

    {"transformer": {"embed_tokens": {"embedding": [V, D]},
                     "layers_0": {"input_layernorm": {"scale"},
                                  "self_attn": {"q_proj": {"kernel" [D, H*Dh], "bias"?}, "k_proj",
                                                "v_proj", "o_proj"},
                                  "post_attention_layernorm": {"scale"},
                                  "mlp": {"gate_proj", "up_proj", "down_proj"}},
                     ..., "norm": {"scale"},
                     "lm_head": {"kernel": [D, V]}  (untied embeddings only)}}

The LM, value-head and reward classes have the same call signatures and layouts
(``{"transformer", "value_head" | "reward_head"}``) as those of :mod:`rlaif_jax.models.gpt2`, and
the config uses GPT-2's field names (``n_embd``, ``n_layer``, ``n_head``, ``n_positions``), so the
sampler, losses and stages work with either family.

KV cache: the same dict and calling convention as GPT-2 (``{"k", "v": L-tuples of [B, Hc, S, Dh],
"index"}``, new tokens written at ``[index, index + T)``). :func:`init_cache` allocates the compact
``Hc = n_kv_head`` layout; a cache from ``gpt2.init_cache`` (``Hc = n_head``) also works, the keys
and values are then stored once per query head. The attention core (grouped-query, block-causal
for multi-token calls, a decode-specific one for single tokens) is GPT-2's, in
:mod:`rlaif_jax.models.attention`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax.models.attention import cached_attend, empty_cache, weights_dropout
from rlaif_jax.models.gpt2 import INIT_STD, ModelOutput, ScalarHead

Array = jax.Array
Cache = dict[str, Array]

MODEL_TYPES = ("llama", "qwen2")
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Llama-family hyper-parameters, with GPT-2's field names where the meaning is the same.

    ``n_inner`` is the SwiGLU width (HF ``intermediate_size``), ``n_kv_head`` the number of
    key/value heads (HF ``num_key_value_heads``), ``head_dim`` an explicit head size (``None``:
    ``n_embd // n_head``). ``rope_scaling`` holds the extra RoPE parameters of ``rope_type`` as
    sorted ``(key, value)`` pairs (hashable, so the config can be a flax module attribute).
    ``dropout`` is the attention-probability dropout (HF ``attention_dropout``); ``model_type``
    ("llama" or "qwen2") picks the HF classes on export.
    """

    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_inner: int
    head_dim_override: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = True
    model_type: str = "llama"
    dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.head_dim_override is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={self.model_type!r} is not one of {MODEL_TYPES}")
        if self.model_type == "qwen2" and (not self.qkv_bias or self.o_bias or self.mlp_bias):
            raise ValueError("qwen2 has q/k/v biases and no o_proj/MLP biases")
        if self.rope_type not in _ROPE_TYPES:
            raise ValueError(f"rope_type={self.rope_type!r} is not supported (known: {_ROPE_TYPES})")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16"):
                raise ValueError(f"{name} must be 'float32' or 'bfloat16', got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.n_embd // self.n_head

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_hf(cls, hf_config: dict | Any, **overrides) -> "LlamaConfig":
        """Builds a config from a HF ``llama``/``qwen2`` config dict (or ``transformers`` config).

        Reads both config.json layouts: transformers 5's ``rope_parameters`` and the older
        ``rope_theta`` + ``rope_scaling``. Variants this model does not implement (another
        activation, sliding-window attention, other RoPE types) raise ``ValueError``.
        """
        d = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        model_type = d.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"not a Llama-family config: model_type={model_type!r} (known: {MODEL_TYPES})")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={d['hidden_act']!r} is not supported (SwiGLU with silu only)")
        layer_types = d.get("layer_types") or []
        if d.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
            raise ValueError("sliding-window attention is not supported")
        rope = {**(d.get("rope_scaling") or {}), **(d.get("rope_parameters") or {})}
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        if rope_type not in _ROPE_TYPES:
            raise ValueError(f"rope_type={rope_type!r} is not supported (known: {_ROPE_TYPES})")
        if rope_type == "llama3":
            rope.setdefault("original_max_position_embeddings", d["max_position_embeddings"])
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial rotary embeddings are not supported")
        rope.pop("partial_rotary_factor", None)
        n_head = d["num_attention_heads"]
        head_dim = d.get("head_dim")
        qwen = model_type == "qwen2"
        kwargs = dict(
            vocab_size=d["vocab_size"],
            n_positions=d["max_position_embeddings"],
            n_embd=d["hidden_size"],
            n_layer=d["num_hidden_layers"],
            n_head=n_head,
            n_kv_head=d.get("num_key_value_heads") or n_head,
            n_inner=d["intermediate_size"],
            head_dim_override=None if head_dim in (None, d["hidden_size"] // n_head) else head_dim,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_type=rope_type,
            rope_scaling=tuple(sorted(rope.items())),
            qkv_bias=qwen or bool(d.get("attention_bias", False)),
            o_bias=not qwen and bool(d.get("attention_bias", False)),
            mlp_bias=not qwen and bool(d.get("mlp_bias", False)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            model_type=model_type,
            dropout=d.get("attention_dropout", 0.0),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict:
        """A dict accepted by ``transformers.LlamaConfig(**d)`` / ``Qwen2Config(**d)``.

        RoPE settings are written both as transformers 5's ``rope_parameters`` and as the older
        ``rope_theta`` / ``rope_scaling`` keys, so either generation of readers gets them.
        """
        scaling = dict(self.rope_scaling)
        d = dict(
            model_type=self.model_type,
            architectures=["Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"],
            vocab_size=self.vocab_size,
            max_position_embeddings=self.n_positions,
            hidden_size=self.n_embd,
            num_hidden_layers=self.n_layer,
            num_attention_heads=self.n_head,
            num_key_value_heads=self.n_kv_head,
            intermediate_size=self.n_inner,
            head_dim=self.head_dim,
            hidden_act="silu",
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=None if self.rope_type == "default" else {"rope_type": self.rope_type, **scaling},
            rope_parameters={"rope_type": self.rope_type, "rope_theta": self.rope_theta, **scaling},
            tie_word_embeddings=self.tie_word_embeddings,
            attention_dropout=self.dropout,
            initializer_range=INIT_STD,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        if self.model_type == "llama":
            if self.qkv_bias != self.o_bias:
                raise ValueError("HF Llama has one attention_bias flag for q/k/v and o; "
                                 f"got qkv_bias={self.qkv_bias}, o_bias={self.o_bias}")
            d.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
        else:
            d.update(use_sliding_window=False, sliding_window=None)
        return d


def default_inner(n_embd: int) -> int:
    """SwiGLU width for a from-scratch model: ``8/3 * n_embd`` (the parameter count of a 4x GELU
    MLP) rounded up to a multiple of 32."""
    return -(-8 * n_embd // 3 // 32) * 32


def init_cache(config: LlamaConfig, batch_size: int, max_len: int) -> Cache:
    """An empty KV cache with ``max_len`` slots and ``n_kv_head`` heads (see the module docstring)."""
    return empty_cache(config.n_layer, batch_size, max_len, config.n_kv_head, config.head_dim,
                       config.compute_dtype)


def inv_frequencies(config: LlamaConfig) -> np.ndarray:
    """RoPE inverse frequencies [head_dim / 2] (float32), incl. "linear" / "llama3" scaling."""
    dim = config.head_dim
    inv = (1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))).astype(np.float32)
    p = dict(config.rope_scaling)
    if config.rope_type == "linear":
        inv = inv / np.float32(p["factor"])
    elif config.rope_type == "llama3":
        factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old_len = p["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old_len / low, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_tables(config: LlamaConfig, positions: Array) -> tuple[Array, Array]:
    """``(cos, sin)`` [B, T, head_dim] for integer ``positions`` [B, T], in the compute dtype."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_frequencies(config))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(config.compute_dtype), jnp.sin(emb).astype(config.compute_dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """HF's ``x * cos + rotate_half(x) * sin`` on [B, T, heads, Dh]; cos/sin are [B, T, Dh]."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos[:, :, None] + rotated * sin[:, :, None]


def _dense(config: LlamaConfig, features: int, name: str, use_bias: bool) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        kernel_init=nn.initializers.normal(INIT_STD),
        bias_init=nn.initializers.zeros,
        name=name,
    )


class RMSNorm(nn.Module):
    """``scale * (x / rms(x))`` with the statistics in float32 (HF ``LlamaRMSNorm``)."""

    epsilon: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def _rms_norm(config: LlamaConfig, name: str) -> RMSNorm:
    return RMSNorm(config.rms_norm_eps, config.compute_dtype, config.params_dtype, name=name)


class LlamaAttention(nn.Module):
    """Causal grouped-query self-attention with rotary embeddings and an optional KV cache.

    ``layer_cache`` is None or ``(k, v, index)`` with this layer's cache arrays, updated in
    place as in ``gpt2.GPT2Attention``. The cache may hold ``n_kv_head`` heads (compact) or any
    multiple of it dividing ``n_head`` (e.g. ``gpt2.init_cache``'s ``n_head``): new keys/values
    are repeated to the cache's head count before they are written.
    """

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, key_valid, rope, layer_cache, deterministic):
        cfg = self.config
        B, T, _ = x.shape
        H, Hkv, Dh = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q = _dense(cfg, H * Dh, "q_proj", cfg.qkv_bias)(x).reshape(B, T, H, Dh)
        k = _dense(cfg, Hkv * Dh, "k_proj", cfg.qkv_bias)(x).reshape(B, T, Hkv, Dh)
        v = _dense(cfg, Hkv * Dh, "v_proj", cfg.qkv_bias)(x).reshape(B, T, Hkv, Dh)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out, new_layer_cache = cached_attend(q, k, v, key_valid, layer_cache, scale=Dh**-0.5,
                                             dropout=weights_dropout(cfg.dropout, deterministic))
        out = _dense(cfg, cfg.n_embd, "o_proj", cfg.o_bias)(out.reshape(B, T, H * Dh))
        return out, new_layer_cache


class LlamaMLP(nn.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        gate = _dense(cfg, cfg.n_inner, "gate_proj", cfg.mlp_bias)(x)
        up = _dense(cfg, cfg.n_inner, "up_proj", cfg.mlp_bias)(x)
        return _dense(cfg, cfg.n_embd, "down_proj", cfg.mlp_bias)(jax.nn.silu(gate) * up)


class LlamaBlock(nn.Module):
    """Pre-RMSNorm decoder layer."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, key_valid, rope, layer_cache, deterministic):
        attn_out, new_layer_cache = LlamaAttention(self.config, name="self_attn")(
            _rms_norm(self.config, "input_layernorm")(x), key_valid, rope, layer_cache, deterministic
        )
        x = x + attn_out
        x = x + LlamaMLP(self.config, name="mlp")(_rms_norm(self.config, "post_attention_layernorm")(x))
        return x, new_layer_cache


class LlamaTrunk(nn.Module):
    """Token embedding, blocks ``layers_0..layers_{L-1}``, final norm and the LM head; shared by all heads.

    Same ``__call__`` / ``logits`` interface as ``gpt2.GPT2Trunk``. The untied ``lm_head`` only
    gets parameters in models that compute logits (not in the reward model).
    """

    config: LlamaConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(
            cfg.vocab_size,
            cfg.n_embd,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            embedding_init=nn.initializers.normal(INIT_STD),
        )
        # self counts as argnum 0: static `deterministic` is argnum 5.
        block_cls = nn.remat(LlamaBlock, static_argnums=(5,)) if cfg.remat else LlamaBlock
        self.layers = [block_cls(cfg) for _ in range(cfg.n_layer)]
        self.norm = _rms_norm(cfg, "norm")
        if not cfg.tie_word_embeddings:
            self.lm_head = _dense(cfg, cfg.vocab_size, "lm_head", False)

    def __call__(self, input_ids, *, positions=None, attention_mask=None, cache=None, deterministic=True):
        """Returns ``(hidden [B,T,D], new_cache or None)``; arguments as in ``gpt2.GPT2LMHeadModel``."""
        B, T = input_ids.shape
        offset, kv_len = (0, T) if cache is None else (cache["index"], cache["k"][0].shape[2])
        q_slots = offset + jnp.arange(T)
        if positions is None:
            positions = jnp.broadcast_to(q_slots, (B, T))
        if attention_mask is None:
            attention_mask = jnp.ones((B, kv_len), jnp.bool_)
        if attention_mask.shape != (B, kv_len):
            raise ValueError(f"attention_mask shape {attention_mask.shape} != {(B, kv_len)}")
        key_valid = attention_mask.astype(jnp.bool_)  # the causal part is the attention's
        rope = rope_tables(self.config, positions)

        x = self.embed_tokens(input_ids)
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            layer_cache = None if cache is None else (cache["k"][i], cache["v"][i], offset)
            x, new_layer_cache = block(x, key_valid, rope, layer_cache, deterministic)
            if cache is not None:
                new_k.append(new_layer_cache[0])
                new_v.append(new_layer_cache[1])
        hidden = self.norm(x)
        new_cache = None if cache is None else {"k": tuple(new_k), "v": tuple(new_v), "index": offset + T}
        return hidden, new_cache

    def logits(self, hidden):
        """LM logits (float32): the tied embedding's ``attend`` or the ``lm_head``."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.attend(hidden).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)


class LlamaLMHeadModel(nn.Module):
    """Llama-family causal LM; call signature, outputs and methods as ``gpt2.GPT2LMHeadModel``."""

    config: LlamaConfig

    def setup(self):
        self.transformer = LlamaTrunk(self.config)

    def __call__(self, input_ids, *, positions=None, attention_mask=None, cache=None, deterministic=True):
        hidden, new_cache = self.hidden_states(
            input_ids, positions=positions, attention_mask=attention_mask, cache=cache, deterministic=deterministic
        )
        return ModelOutput(self.lm_logits(hidden), hidden, new_cache)

    def hidden_states(self, input_ids, *, positions=None, attention_mask=None, cache=None, deterministic=True):
        """Final-norm hidden states [B,T,D] and the new cache (or None)."""
        return self.transformer(
            input_ids, positions=positions, attention_mask=attention_mask, cache=cache, deterministic=deterministic
        )

    def lm_logits(self, hidden):
        """LM logits (float32) for hidden states of any leading shape."""
        return self.transformer.logits(hidden)


class LlamaWithValueHead(nn.Module):
    """LM plus a zero-initialised per-token value head; as ``gpt2.CausalLMWithValueHead``."""

    config: LlamaConfig

    def setup(self):
        self.transformer = LlamaTrunk(self.config)
        self.value_head = ScalarHead(0.0, self.config.param_dtype)

    def __call__(self, input_ids, *, positions=None, attention_mask=None, cache=None, deterministic=True):
        hidden, new_cache = self.transformer(
            input_ids, positions=positions, attention_mask=attention_mask, cache=cache, deterministic=deterministic
        )
        out = ModelOutput(self.transformer.logits(hidden), hidden, new_cache)
        return out, self.value_head(hidden)


class LlamaRewardModel(nn.Module):
    """Sequence reward at the last valid token; as ``gpt2.RewardModel`` (``{"transformer", "reward_head"}``)."""

    config: LlamaConfig

    def setup(self):
        self.transformer = LlamaTrunk(self.config)
        self.reward_head = ScalarHead(INIT_STD, self.config.param_dtype)

    def __call__(self, input_ids, *, attention_mask=None, positions=None, deterministic=True):
        hidden, _ = self.transformer(
            input_ids, positions=positions, attention_mask=attention_mask, deterministic=deterministic
        )
        scores = self.reward_head(hidden)
        B, T = input_ids.shape
        if attention_mask is None:
            last = jnp.full((B,), T - 1)
        else:
            last = T - 1 - jnp.argmax(attention_mask[:, ::-1].astype(jnp.int32), axis=-1)
        return jnp.take_along_axis(scores, last[:, None], axis=-1)[:, 0]
