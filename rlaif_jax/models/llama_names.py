"""Conversion between the flax Llama-family parameter tree and HF ``LlamaForCausalLM`` /
``Qwen2ForCausalLM`` state dicts (the Llama counterpart of :mod:`rlaif_jax.models.hf_names`).

HF name                                              flax path under params["transformer"]
``model.embed_tokens.weight`` [V, D]                 ``embed_tokens/embedding`` (as is)
``model.layers.{i}.input_layernorm.weight``          ``layers_{i}/input_layernorm/scale``
``model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`` ``layers_{i}/self_attn/{q,k,v,o}_proj/kernel`` (transposed)
``model.layers.{i}.self_attn.{q,k,v,o}_proj.bias``   ``.../bias`` (when the config has them)
``model.layers.{i}.post_attention_layernorm.weight`` ``layers_{i}/post_attention_layernorm/scale``
``model.layers.{i}.mlp.{gate,up,down}_proj.weight``  ``layers_{i}/mlp/{gate,up,down}_proj/kernel`` (transposed)
``model.norm.weight``                                ``norm/scale``
``lm_head.weight`` [V, D]                            ``lm_head/kernel`` [D, V] (untied only)

torch ``Linear`` weights are ``[out, in]`` and flax ``Dense`` kernels ``[in, out]``, hence the
transposes. With tied embeddings ``lm_head.weight`` is not written and ignored when present.
Rotary ``inv_freq`` buffers (older checkpoints) are ignored: they are recomputed from the config.
The ``*ForSequenceClassification`` head (``score.weight``) is handled by the callers.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from rlaif_jax.models.hf_names import _to_numpy
from rlaif_jax.models.llama import LlamaConfig

LM_HEAD = "lm_head.weight"
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def _block_table(cfg: LlamaConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """HF name after ``model.layers.{i}.`` -> (flax path in the block, transposed?)."""
    table = {
        "input_layernorm.weight": (("input_layernorm", "scale"), False),
        "post_attention_layernorm.weight": (("post_attention_layernorm", "scale"), False),
    }
    biases = {"q_proj": cfg.qkv_bias, "k_proj": cfg.qkv_bias, "v_proj": cfg.qkv_bias, "o_proj": cfg.o_bias,
              "gate_proj": cfg.mlp_bias, "up_proj": cfg.mlp_bias, "down_proj": cfg.mlp_bias}
    for proj, has_bias in biases.items():
        parent = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        table[f"{parent}.{proj}.weight"] = ((parent, proj, "kernel"), True)
        if has_bias:
            table[f"{parent}.{proj}.bias"] = ((parent, proj, "bias"), False)
    return table


def name_table(cfg: LlamaConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Every HF name of the LM -> (flax path under ``params["transformer"]``, transposed?)."""
    table = {
        "model.embed_tokens.weight": (("embed_tokens", "embedding"), False),
        "model.norm.weight": (("norm", "scale"), False),
    }
    for i in range(cfg.n_layer):
        table.update({f"model.layers.{i}.{k}": ((f"layers_{i}", *path), t)
                      for k, (path, t) in _block_table(cfg).items()})
    if not cfg.tie_word_embeddings:
        table[LM_HEAD] = (("lm_head", "kernel"), True)
    return table


def to_hf_state_dict(params, cfg: LlamaConfig, dtype=np.float32) -> dict[str, np.ndarray]:
    """HF state dict of the LM from flax params (``{"transformer": ...}``, extra heads ignored).

    Without an ``lm_head`` in ``params`` (e.g. a reward model's trunk) an untied config's
    ``lm_head.weight`` is left out. ``dtype=None`` keeps the arrays' dtype.
    """
    if "params" in params:
        params = params["params"]
    trunk = params["transformer"]
    sd = {}
    for name, (path, transpose) in name_table(cfg).items():
        if path[0] == "lm_head" and "lm_head" not in trunk:
            continue
        node = trunk
        for key in path:
            node = node[key]
        value = np.asarray(node) if dtype is None else np.asarray(node, dtype=dtype)
        sd[name] = np.array(value.T if transpose else value)  # writable, C-contiguous copy
    return sd


def from_hf_state_dict(sd: dict, cfg: LlamaConfig) -> dict:
    """Flax params ``{"transformer": ...}`` (in ``cfg.param_dtype``) from a HF LM state dict.

    Accepts numpy arrays or torch tensors. Raises ``KeyError`` listing missing/unexpected names
    and ``ValueError`` naming a tensor whose shape does not fit the config.
    """
    if not any(k.startswith("model.") for k in sd):  # saved by LlamaModel / Qwen2Model (no LM head)
        sd = {k if k == LM_HEAD else f"model.{k}": v for k, v in sd.items()}
    table = name_table(cfg)
    ignored = {LM_HEAD} if cfg.tie_word_embeddings else set()
    given = {k for k in sd if k not in ignored and not k.endswith(_IGNORED_SUFFIXES)}
    missing, unexpected = sorted(table.keys() - given), sorted(given - table.keys())
    if missing or unexpected:
        raise KeyError(f"state dict does not match the {cfg.model_type} config: "
                       f"missing={missing[:8]}{'...' if len(missing) > 8 else ''} "
                       f"unexpected={unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    expected = _expected_shapes(cfg)
    trunk: dict = {}
    for name, (path, transpose) in table.items():
        value = _to_numpy(sd[name])
        hf_shape = expected[path][::-1] if transpose else expected[path]
        if value.shape != hf_shape:
            raise ValueError(f"{name}: shape {value.shape} does not fit the config (expected {hf_shape})")
        value = value.T if transpose else value
        node = trunk
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(value, dtype=cfg.params_dtype)
    return {"transformer": trunk}


def _expected_shapes(cfg: LlamaConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax path -> shape, written out from the config (cheaper than an abstract init)."""
    D, V, F, Dh = cfg.n_embd, cfg.vocab_size, cfg.n_inner, cfg.head_dim
    out_features = {"q_proj": cfg.n_head * Dh, "k_proj": cfg.n_kv_head * Dh, "v_proj": cfg.n_kv_head * Dh,
                    "o_proj": D, "gate_proj": F, "up_proj": F, "down_proj": D}
    in_features = {"o_proj": cfg.n_head * Dh, "down_proj": F}
    shapes = {("embed_tokens", "embedding"): (V, D), ("norm", "scale"): (D,), ("lm_head", "kernel"): (D, V)}
    for i in range(cfg.n_layer):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            shapes[(f"layers_{i}", norm, "scale")] = (D,)
        for proj, out in out_features.items():
            parent = "mlp" if proj.endswith(("gate_proj", "up_proj", "down_proj")) else "self_attn"
            shapes[(f"layers_{i}", parent, proj, "kernel")] = (in_features.get(proj, D), out)
            shapes[(f"layers_{i}", parent, proj, "bias")] = (out,)
    return shapes
