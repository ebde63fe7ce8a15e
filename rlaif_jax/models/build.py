"""Model configs and initial parameters for a run: from scratch, or from a local Hugging Face dir.

A run's model config is saved as `<workdir>/model/config.json` in Hugging Face format, so later
stages (and, after export, `transformers`) rebuild the same architecture.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax.models.gpt2 import GPT2Config
from rlaif_jax.models.hf_names import from_hf_state_dict


def _with_run_options(cfg: GPT2Config, model_cfg) -> GPT2Config:
    return dataclasses.replace(cfg, dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype,
                               remat=model_cfg.remat, dropout=model_cfg.dropout)


def model_config_for_run(config, tokenizer) -> GPT2Config:
    """The architecture: the HF directory's config.json if given, else the run config's sizes."""
    if config.model.hf_path:
        hf = json.loads((pathlib.Path(config.model.hf_path) / "config.json").read_text())
        if hf.get("model_type") != "gpt2":
            raise ValueError(f"{config.model.hf_path}: model_type {hf.get('model_type')!r} is not "
                             "supported yet (gpt2 only)")
        cfg = GPT2Config.from_hf(hf)
        if len(tokenizer) > cfg.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model only "
                             f"{cfg.vocab_size} embeddings")
    else:
        m = config.model
        cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=m.n_positions, n_embd=m.n_embd,
                         n_layer=m.n_layer, n_head=m.n_head)
    return _with_run_options(cfg, config.model)


def save_model_config(cfg: GPT2Config, workdir: pathlib.Path, tokenizer) -> None:
    out = workdir / "model"
    out.mkdir(parents=True, exist_ok=True)
    hf = cfg.to_hf()
    hf.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id)
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")


def load_model_config(workdir: pathlib.Path, model_cfg=None) -> GPT2Config:
    """The saved architecture of a run; `model_cfg` (config.model) sets dtypes and remat."""
    path = workdir / "model" / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `rlaif-jax sft` in this workdir first")
    cfg = GPT2Config.from_hf(json.loads(path.read_text()))
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


def pretrained_params(config, cfg: GPT2Config):
    """Parameters of `config.model.hf_path` as a host pytree in the configured param dtype."""
    sd = load_hf_state_dict(config.model.hf_path)
    # Checkpoints saved by GPT2Model (no LM head) have no "transformer." prefix.
    if not any(k.startswith("transformer.") for k in sd):
        sd = {f"transformer.{k}": v for k, v in sd.items()}
    params = from_hf_state_dict(sd, cfg)
    return jax.tree.map(lambda x: np.asarray(x, dtype=jnp.dtype(cfg.param_dtype)), params)
