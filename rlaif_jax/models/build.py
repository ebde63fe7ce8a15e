"""Model configs and initial parameters for a run: from scratch, or from a local Hugging Face dir.

A run's model config is saved as `<workdir>/model/config.json` in Hugging Face format, so later
stages (and, after export, `transformers`) rebuild the same architecture. Its `model_type` picks
the family: "gpt2" (`models/gpt2.py`) or "llama"/"qwen2" (`models/llama.py`). Stages build their
models with the factories below (`make_lm`, `make_value_model`, `make_reward_model`,
`make_trunk`, `init_cache`), which take either family's config.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax.config import HF_MODEL_TYPES
from rlaif_jax.models import gpt2, llama, llama_names
from rlaif_jax.models.gpt2 import GPT2Config
from rlaif_jax.models.hf_names import from_hf_state_dict
from rlaif_jax.models.llama import LlamaConfig

ModelConfig = GPT2Config | LlamaConfig
# HF model_type -> config class (the supported types are listed in config.HF_MODEL_TYPES).
CONFIG_CLASSES = {t: {"gpt2": GPT2Config, "llama": LlamaConfig}[family]
                  for t, family in HF_MODEL_TYPES.items()}
# config class -> (LM, LM with value head, reward model, trunk, init_cache).
_FAMILY = {
    GPT2Config: (gpt2.GPT2LMHeadModel, gpt2.CausalLMWithValueHead, gpt2.RewardModel, gpt2.GPT2Trunk,
                 gpt2.init_cache),
    LlamaConfig: (llama.LlamaLMHeadModel, llama.LlamaWithValueHead, llama.LlamaRewardModel,
                  llama.LlamaTrunk, llama.init_cache),
}


def make_lm(cfg: ModelConfig):
    """The causal LM of the config's family (`GPT2LMHeadModel` or `LlamaLMHeadModel`)."""
    return _FAMILY[type(cfg)][0](cfg)


def make_value_model(cfg: ModelConfig):
    """LM + value head, params `{"transformer", "value_head"}`."""
    return _FAMILY[type(cfg)][1](cfg)


def make_reward_model(cfg: ModelConfig):
    """Reward model, params `{"transformer", "reward_head"}`."""
    return _FAMILY[type(cfg)][2](cfg)


def make_trunk(cfg: ModelConfig):
    """The bare trunk (embeddings, blocks, final norm), e.g. for a separate critic."""
    return _FAMILY[type(cfg)][3](cfg)


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int):
    """An empty KV cache for the config's family (compact `n_kv_head` layout for Llama)."""
    return _FAMILY[type(cfg)][4](cfg, batch_size, max_len)


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """Our config from a HF config dict, by its `model_type`; unsupported types are a ValueError."""
    model_type = hf.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ValueError(f"model_type {model_type!r} is not supported "
                         f"(supported: {', '.join(CONFIG_CLASSES)})")
    return CONFIG_CLASSES[model_type].from_hf(hf, **overrides)


def _with_run_options(cfg: ModelConfig, model_cfg) -> ModelConfig:
    return dataclasses.replace(cfg, dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype,
                               remat=model_cfg.remat, dropout=model_cfg.dropout)


def model_config_for_run(config, tokenizer) -> ModelConfig:
    """The architecture: the HF directory's config.json if given (its `model_type` decides the
    family), else the run config's sizes for `model.family`."""
    if config.model.hf_path:
        hf = json.loads((pathlib.Path(config.model.hf_path) / "config.json").read_text())
        try:
            cfg = config_from_hf(hf)
        except ValueError as e:
            raise ValueError(f"{config.model.hf_path}/config.json: {e}") from e
        if len(tokenizer) > cfg.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model only "
                             f"{cfg.vocab_size} embeddings")
    elif config.model.family == "llama":
        m = config.model
        cfg = LlamaConfig(vocab_size=len(tokenizer), n_positions=m.n_positions, n_embd=m.n_embd,
                          n_layer=m.n_layer, n_head=m.n_head, n_kv_head=m.n_kv_head or m.n_head,
                          n_inner=llama.default_inner(m.n_embd))
    else:
        m = config.model
        cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=m.n_positions, n_embd=m.n_embd,
                         n_layer=m.n_layer, n_head=m.n_head)
    return _with_run_options(cfg, config.model)


def save_model_config(cfg: ModelConfig, workdir: pathlib.Path, tokenizer) -> None:
    out = workdir / "model"
    out.mkdir(parents=True, exist_ok=True)
    hf = cfg.to_hf()
    hf.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id)
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")


def load_model_config(workdir: pathlib.Path, model_cfg=None) -> ModelConfig:
    """The saved architecture of a run; `model_cfg` (config.model) sets dtypes and remat."""
    path = workdir / "model" / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `rlaif-jax sft` (or `rlaif-jax import`) "
                                "in this workdir first")
    cfg = config_from_hf(json.loads(path.read_text()))
    return cfg if model_cfg is None else _with_run_options(cfg, model_cfg)


def load_hf_state_dict(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads `model.safetensors` or a sharded `model.safetensors.index.json` into numpy arrays."""
    from safetensors.numpy import load_file

    directory = pathlib.Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{directory}: no model.safetensors(.index.json)")
    sd = {}
    for name in files:
        sd.update(load_file(str(directory / name)))
    return sd


def params_from_hf_state_dict(sd: dict, cfg: ModelConfig):
    """LM params `{"transformer": ...}` of either family from a HF state dict (numpy or torch),
    as a host pytree in `cfg.param_dtype`."""
    if isinstance(cfg, LlamaConfig):
        params = llama_names.from_hf_state_dict(sd, cfg)
    else:
        # Checkpoints saved by GPT2Model (no LM head) have no "transformer." prefix.
        if not any(k.startswith("transformer.") for k in sd):
            sd = {f"transformer.{k}": v for k, v in sd.items()}
        params = from_hf_state_dict(sd, cfg)
    return jax.tree.map(lambda x: np.asarray(x, dtype=jnp.dtype(cfg.param_dtype)), params)


def pretrained_params(config, cfg: ModelConfig):
    """Parameters of `config.model.hf_path` as a host pytree in the configured param dtype."""
    return params_from_hf_state_dict(load_hf_state_dict(config.model.hf_path), cfg)
