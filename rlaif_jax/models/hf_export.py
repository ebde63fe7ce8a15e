"""Writing our params as a Hugging Face model directory that ``transformers`` loads.

An LM directory loads with ``AutoModelForCausalLM.from_pretrained(DIR)`` and holds:

* ``config.json``: the family's HF config (``GPT2LMHeadModel``, ``LlamaForCausalLM`` or
  ``Qwen2ForCausalLM``) with the tokenizer's bos/eos/pad ids and the weights' ``dtype``;
* ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` shards plus
  ``model.safetensors.index.json`` when the weights exceed ``max_shard_bytes``;
* the tokenizer files (``tokenizer.save_pretrained``) and ``generation_config.json``.

Names are mapped by ``models/hf_names.py`` (GPT-2) and ``models/llama_names.py`` (Llama, Qwen2);
tied ``lm_head`` weights are not written (transformers ties them on load).

A reward model (params ``{"transformer", "reward_head"}``) is written as a one-label
``*ForSequenceClassification`` (``AutoModelForSequenceClassification.from_pretrained(DIR)``): its
``score.weight`` [1, D] is our head's kernel transposed. HF pools the logits at the last token
that is not ``pad_token_id``, which is the last attended token when inputs are padded with the
tokenizer's pad token, i.e. where our ``RewardModel`` reads its score, so ``pad_token_id`` is set
in the config. HF's ``score`` has no bias: a non-zero head bias (pointwise-trained heads) is
stored as ``reward_bias`` in config.json and HF's scores are ours minus that constant (rankings
and pairwise preferences are unchanged; ``hf_import.load_reward_model`` adds it back).
"""

from __future__ import annotations

import json
import logging
import pathlib

import numpy as np

from rlaif_jax.models.build import ModelConfig
from rlaif_jax.models.gpt2 import GPT2Config
from rlaif_jax.models import hf_names, llama_names

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
_CLASSES = {"gpt2": ("GPT2LMHeadModel", "GPT2ForSequenceClassification"),
            "llama": ("LlamaForCausalLM", "LlamaForSequenceClassification"),
            "qwen2": ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification")}


def model_type(cfg: ModelConfig) -> str:
    return "gpt2" if isinstance(cfg, GPT2Config) else cfg.model_type


def hf_state_dict(params: dict, cfg: ModelConfig, reward: bool = False) -> dict[str, np.ndarray]:
    """HF tensors (numpy, in the params' dtype) of an LM, or of a reward model when ``reward``."""
    if isinstance(cfg, GPT2Config):
        sd = hf_names.to_hf_state_dict(params, dtype=None)
        sd.pop("lm_head.weight")  # tied to transformer.wte.weight
    else:
        sd = llama_names.to_hf_state_dict(params, cfg, dtype=None)
    if reward:
        sd.pop("lm_head.weight", None)
        head = params["reward_head"]["Dense_0"]
        sd["score.weight"] = np.array(np.asarray(head["kernel"]).T)
    return sd


def reward_bias(params: dict) -> float:
    """The reward head's bias (a scalar that HF's bias-free ``score`` cannot hold)."""
    return float(np.asarray(params["reward_head"]["Dense_0"]["bias"]).reshape(-1)[0])


def hf_config(cfg: ModelConfig, tokenizer, *, reward: bool = False, dtype: str = "float32",
              extra: dict | None = None):
    """The ``transformers`` config object for ``cfg`` with the tokenizer's special-token ids."""
    import transformers

    d = cfg.to_hf()
    kind = d.pop("model_type")
    d.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
             pad_token_id=tokenizer.pad_token_id, dtype=dtype,
             architectures=[_CLASSES[kind][1 if reward else 0]])
    if reward:
        d.update(num_labels=1)
    d.update(extra or {})
    return transformers.AutoConfig.for_model(kind, **d)


def write_safetensors(sd: dict[str, np.ndarray], out: pathlib.Path,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Writes ``model.safetensors`` or, above ``max_shard_bytes``, shards plus their index.

    Tensors go to shards in name order, a new shard starting when the next tensor would overflow
    the current one. Returns the file names written.
    """
    from safetensors.numpy import save_file

    shards, current, size = [], {}, 0
    for name in sorted(sd):
        nbytes = sd[name].nbytes
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = np.ascontiguousarray(sd[name])
        size += nbytes
    shards.append(current)
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(out / name), metadata=meta)
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in sd.values()))}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names + ["model.safetensors.index.json"]


def generation_config(tokenizer, sampling: dict | None = None):
    """``GenerationConfig`` with the special-token ids and, when given, the run's sampling settings
    (``config.sample``: greedy, temperature, top_k, top_p, max_new_tokens)."""
    import transformers

    kw = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id)
    if sampling:
        greedy = bool(sampling.get("greedy"))
        kw.update(do_sample=not greedy, max_new_tokens=int(sampling["max_new_tokens"]))
        if not greedy:
            kw.update(temperature=float(sampling["temperature"]), top_k=int(sampling["top_k"]),
                      top_p=float(sampling["top_p"]))
    return transformers.GenerationConfig(**kw)


def save_pretrained(out: str | pathlib.Path, cfg: ModelConfig, params: dict, tokenizer, *,
                    reward: bool = False, sampling: dict | None = None,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, readme: str = "") -> pathlib.Path:
    """Writes a complete HF directory (see the module docstring); ``out`` must not hold files.

    ``params`` are the model's params (LM: ``{"transformer"}``; reward: ``{"transformer",
    "reward_head"}``), host or device arrays; the weights keep their dtype (float32/bfloat16).
    """
    out = pathlib.Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; export into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    sd = hf_state_dict(params, cfg, reward)
    dtypes = {str(v.dtype) for v in sd.values()}
    if len(dtypes) != 1 or not dtypes <= {"float32", "bfloat16"}:
        raise ValueError(f"weights must all be float32 or all bfloat16, got {sorted(dtypes)}")
    extra = {}
    if reward:
        bias = reward_bias(params)
        if bias != 0.0:
            logging.warning("reward head bias %.6g is not representable in HF's score layer: "
                            "saved as config.json reward_bias; HF scores = ours - bias", bias)
            extra["reward_bias"] = bias
        if tokenizer.pad_token_id == tokenizer.eos_token_id:
            logging.warning("pad_token_id == eos_token_id: HF pools sequence scores at the last "
                            "non-pad token, i.e. before a trailing EOS, while ours read the EOS")
    hf_config(cfg, tokenizer, reward=reward, dtype=dtypes.pop(), extra=extra).save_pretrained(str(out))
    write_safetensors(sd, out, max_shard_bytes)
    tokenizer.save_pretrained(str(out))
    if not reward:
        generation_config(tokenizer, sampling).save_pretrained(str(out))
    if readme:
        (out / "README.md").write_text(readme)
    return out


def push_to_hub(out: str | pathlib.Path, repo_id: str, private: bool = True) -> str:
    """Uploads an exported directory to the Hugging Face Hub (needs network and a login/HF_TOKEN).

    A thin wrapper: ``HfApi().create_repo(repo_id, exist_ok=True)`` then ``upload_folder``.
    Returns the repo URL. Not exercised by the tests (no network here).
    """
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(out), repo_id=repo_id, commit_message="Upload from rlaif-jax export")
    return str(url)
