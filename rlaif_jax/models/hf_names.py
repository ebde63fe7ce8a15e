"""Conversion between the flax GPT-2 parameter tree and HF ``GPT2LMHeadModel`` state dicts.

Names are mapped with two small tables (top-level and per-block). HF ``Conv1D``
weights are ``[in, out]`` like flax ``Dense`` kernels, so arrays are copied as-is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel

# HF name (after "transformer.") -> path under params["transformer"].
_TOP = {
    "wte.weight": ("wte", "embedding"),
    "wpe.weight": ("wpe", "embedding"),
    "ln_f.weight": ("ln_f", "scale"),
    "ln_f.bias": ("ln_f", "bias"),
}
# HF name (after "transformer.h.{i}.") -> path under params["transformer"][f"h_{i}"].
_BLOCK = {
    "ln_1.weight": ("ln_1", "scale"),
    "ln_1.bias": ("ln_1", "bias"),
    "attn.c_attn.weight": ("attn", "c_attn", "kernel"),
    "attn.c_attn.bias": ("attn", "c_attn", "bias"),
    "attn.c_proj.weight": ("attn", "c_proj", "kernel"),
    "attn.c_proj.bias": ("attn", "c_proj", "bias"),
    "ln_2.weight": ("ln_2", "scale"),
    "ln_2.bias": ("ln_2", "bias"),
    "mlp.c_fc.weight": ("mlp", "c_fc", "kernel"),
    "mlp.c_fc.bias": ("mlp", "c_fc", "bias"),
    "mlp.c_proj.weight": ("mlp", "c_proj", "kernel"),
    "mlp.c_proj.bias": ("mlp", "c_proj", "bias"),
}
# Tied to transformer.wte.weight; written on export, ignored on import.
_LM_HEAD = "lm_head.weight"
# Non-parameter buffers some transformers versions keep in the state dict.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def _name_table(n_layer: int) -> dict[str, tuple[str, ...]]:
    """Full HF name -> flax path under ``params["transformer"]``."""
    table = {f"transformer.{k}": v for k, v in _TOP.items()}
    for i in range(n_layer):
        table.update({f"transformer.h.{i}.{k}": (f"h_{i}", *v) for k, v in _BLOCK.items()})
    return table


def _param_shapes(config: GPT2Config) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax path under ``params["transformer"]`` -> shape, from an abstract init."""
    abstract = jax.eval_shape(
        GPT2LMHeadModel(config).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32)
    )["params"]["transformer"]
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def _to_numpy(x) -> np.ndarray:
    """numpy array from a numpy/jax array or a (CPU or GPU, any float dtype) torch tensor."""
    if hasattr(x, "detach"):  # torch.Tensor; float() also handles bfloat16
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def to_hf_state_dict(params, dtype=np.float32) -> dict[str, np.ndarray]:
    """HF ``GPT2LMHeadModel`` state dict (incl. tied ``lm_head.weight``) from flax params.

    ``params`` is the model's parameter tree (``{"transformer": ...}``, extra heads
    are ignored) or a ``{"params": ...}`` variables dict. Arrays are cast to
    ``dtype`` (default float32, which torch accepts); ``dtype=None`` keeps them.
    """
    if "params" in params:
        params = params["params"]
    trunk = params["transformer"]
    n_layer = sum(1 for k in trunk if k.startswith("h_"))
    sd = {}
    for name, path in _name_table(n_layer).items():
        node = trunk
        for key in path:
            node = node[key]
        sd[name] = np.array(node, dtype=dtype)  # a writable copy (torch.from_numpy-friendly)
    sd[_LM_HEAD] = sd["transformer.wte.weight"]
    return sd


def from_hf_state_dict(sd: dict, config: GPT2Config) -> dict:
    """Flax params ``{"transformer": ...}`` (in ``config.param_dtype``) from a HF state dict.

    Accepts numpy arrays or torch tensors. Attention-mask buffers and the tied
    ``lm_head.weight`` are ignored. Raises ``KeyError`` listing missing/unexpected
    names and ``ValueError`` on a shape mismatch.
    """
    table = _name_table(config.n_layer)
    given = {k for k in sd if k != _LM_HEAD and not k.endswith(_BUFFER_SUFFIXES)}
    missing, unexpected = sorted(table.keys() - given), sorted(given - table.keys())
    if missing or unexpected:
        raise KeyError(f"state dict does not match GPT2Config: missing={missing} unexpected={unexpected}")
    shapes = _param_shapes(config)
    trunk: dict = {}
    for name, path in table.items():
        value = _to_numpy(sd[name])
        if value.shape != shapes[path]:
            raise ValueError(f"{name}: shape {value.shape} != expected {shapes[path]}")
        node = trunk
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(value, dtype=config.params_dtype)
    return {"transformer": trunk}
