"""Reading a local Hugging Face model directory into our configs and flax params.

A directory holds ``config.json`` and the weights as ``model.safetensors`` or as shards
``model-0000i-of-0000n.safetensors`` listed in ``model.safetensors.index.json`` (both read by
``build.load_hf_state_dict``). ``config.json``'s ``model_type`` picks the family:

* ``gpt2`` -> ``GPT2Config`` / ``GPT2LMHeadModel`` params; names mapped by ``models/hf_names.py``
  (``Conv1D`` weights are ``[in, out]`` already, ``lm_head`` is tied to ``wte``).
* ``llama``, ``qwen2`` (Qwen2, Qwen2.5, Qwen2.5-Coder; SmolLM checkpoints are ``llama``) ->
  ``LlamaConfig`` / ``LlamaLMHeadModel`` params; names mapped by ``models/llama_names.py`` (torch
  ``Linear`` weights transposed). Rope and attention details are in ``models/llama.py``.

Causal-LM directories (``*ForCausalLM``, ``GPT2LMHeadModel``) give LM params ``{"transformer"}``;
sequence-classification directories with one label (what ``hf_export`` writes for a reward model)
give reward-model params ``{"transformer", "reward_head"}``: HF's bias-free ``score`` is our head's
kernel, and the head's bias is the ``reward_bias`` key of config.json (0 when absent).
The tokenizer of a directory is loaded with ``data.tokenizer.load_tokenizer`` (``AutoTokenizer``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from rlaif_jax.models.build import ModelConfig, config_from_hf, load_hf_state_dict, params_from_hf_state_dict

SCORE = "score.weight"


def read_hf_config(directory: str | pathlib.Path) -> dict:
    """The raw ``config.json`` of a HF model directory (clear errors when it is not one)."""
    path = pathlib.Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a Hugging Face model directory (no config.json)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_config(directory: str | pathlib.Path, **overrides) -> ModelConfig:
    """Our model config for a HF directory (``overrides``: e.g. ``param_dtype``, ``dtype``)."""
    try:
        return config_from_hf(read_hf_config(directory), **overrides)
    except ValueError as e:
        raise ValueError(f"{directory}/config.json: {e}") from e


def is_reward_model(directory: str | pathlib.Path) -> bool:
    """True for a ``*ForSequenceClassification`` directory (a reward model)."""
    archs = read_hf_config(directory).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def load_lm(directory: str | pathlib.Path, **overrides) -> tuple[ModelConfig, dict]:
    """``(config, params {"transformer": ...})`` of a causal LM directory, params as numpy arrays."""
    cfg = load_config(directory, **overrides)
    sd = load_hf_state_dict(directory)
    return cfg, _lm_params(sd, cfg, directory)


def load_reward_model(directory: str | pathlib.Path, **overrides) -> tuple[ModelConfig, dict]:
    """``(config, params {"transformer", "reward_head"})`` of a one-label sequence-classification dir."""
    hf = read_hf_config(directory)
    if hf.get("num_labels", len(hf.get("id2label") or {0: ""})) != 1:
        raise ValueError(f"{directory}: a reward model needs exactly one label (num_labels=1)")
    cfg = load_config(directory, **overrides)
    sd = load_hf_state_dict(directory)
    if SCORE not in sd:
        raise KeyError(f"{directory}: no {SCORE!r} tensor (not a sequence-classification checkpoint)")
    score = np.asarray(sd.pop(SCORE), np.float32)
    if score.shape != (1, cfg.n_embd):
        raise ValueError(f"{directory}: {SCORE} has shape {score.shape}, expected {(1, cfg.n_embd)}")
    # A reward model has no LM head: map the trunk's names as if the head were tied.
    params = _lm_params(sd, dataclasses.replace(cfg, tie_word_embeddings=True)
                        if hasattr(cfg, "tie_word_embeddings") else cfg, directory)
    dtype = np.dtype(cfg.params_dtype)
    params["reward_head"] = {"Dense_0": {"kernel": score.T.astype(dtype),
                                         "bias": np.full((1,), hf.get("reward_bias", 0.0), dtype)}}
    return cfg, params


def _lm_params(sd: dict, cfg: ModelConfig, directory) -> dict:
    try:
        return params_from_hf_state_dict(sd, cfg)
    except (KeyError, ValueError) as e:
        raise type(e)(f"{directory}: {e.args[0] if e.args else e}") from e
