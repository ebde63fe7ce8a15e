"""Expected memory per device of a config's stages, computed from the model's sizes.

The arithmetic the README's scale-out table quotes; `python -m rlaif_jax.memory CONFIG[:ARG]
--devices N [--arch NAME]` prints it. All figures are bytes per device, an estimate of what
lives at a stage's peak (XLA's temporary buffers and fragmentation come on top; leave ~10-20%).

Notation: D = n_embd, L = n_layer, V = vocabulary, P = positions (GPT-2), I = MLP width,
H / Hkv = query / key-value heads, Dh = head size, b_p / b_a = bytes of param_dtype / dtype.

Parameters, exact counts of our Flax models:
  GPT-2:  V·D + P·D + L·(12·D² + 13·D) + 2·D          (tied LM head)
  Llama:  V·D [+ D·V untied lm_head] + D + L·(D·(H + 2·Hkv)·Dh [+ (H + 2·Hkv)·Dh q/k/v biases]
          + H·Dh·D [+ D o bias] + 3·D·I [+ 2·I + D MLP biases] + 2·D)
A trunk (separate critic, reward model) has no untied lm_head; a scalar head adds D + 1.

State: a trained model holds params, grads and Adam's two moments, all in param_dtype:
4·b_p bytes per parameter (16 in fp32); a frozen model its params only (b_p). fsdp × tensor
devices split them evenly (data parallelism replicates them).

Activations that a training step keeps for the backward pass, per token and layer, in values of
b_a bytes: 4·D (block input, both norm outputs, the residual after attention) + 2·H·Dh (queries,
attention output) + 2·Hkv·Dh (keys, values) + m·I (GPT-2 m = 2: c_fc output and GELU; Llama
m = 4: gate, up, SiLU, product) -- 16·D for GPT-2 -- plus H·T·(4 + b_a) bytes for the float32
attention scores and the probabilities over the T keys. Tensor parallelism splits the head and
MLP terms. With remat a layer keeps only its input (D values) and one layer's activations exist
at a time. An LM adds its float32 logits and their gradient, 8·V bytes per predicted token.
Rows per device = the step's sequences / (data × fsdp).

Stages: sft (trained LM + activations of a micro-batch of data.max_len), reward (trained trunk +
head, a batch of pairs = 2 rows each), ppo (trained policy, frozen reference, trained separate
critic or a shared value head, frozen reward model; peak = max(update: policy + critic
activations of a minibatch over T = sample.max_prompt_len + ppo.max_new_tokens, rollout: the
KV cache 2·L·T·Hkv·Dh·b_a per row plus the policy's and reference's float32 logits of the
response tokens)), sample (frozen LM + KV cache of a sampling batch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib

from rlaif_jax.models.build import config_from_hf
from rlaif_jax.models.gpt2 import GPT2Config
from rlaif_jax.models.llama import LlamaConfig, default_inner

GiB = 2**30
_BYTES = {"float32": 4, "bfloat16": 2}

# Published architectures (their config.json sizes), for estimates without the checkpoint.
PUBLISHED = {
    "gpt2-large": {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024,
                   "n_embd": 1280, "n_layer": 36, "n_head": 20},
    "qwen2.5-coder-0.5b": {"model_type": "qwen2", "vocab_size": 151936,
                           "max_position_embeddings": 32768, "hidden_size": 896,
                           "num_hidden_layers": 24, "num_attention_heads": 14,
                           "num_key_value_heads": 2, "intermediate_size": 4864,
                           "tie_word_embeddings": True, "rope_theta": 1000000.0},
}


def architecture(config, hf_config: dict | None = None):
    """The model config: `hf_config` if given, else `model.hf_path`'s config.json, else the
    config's own sizes with `tokenizer.vocab_size` (a from-scratch model)."""
    if hf_config is None and config.model.hf_path:
        path = pathlib.Path(config.model.hf_path) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass the architecture (--arch)")
        hf_config = json.loads(path.read_text())
    if hf_config is not None:
        return config_from_hf(hf_config)
    m, vocab = config.model, config.tokenizer.vocab_size
    if m.family == "llama":
        return LlamaConfig(vocab_size=vocab, n_positions=m.n_positions, n_embd=m.n_embd,
                           n_layer=m.n_layer, n_head=m.n_head, n_kv_head=m.n_kv_head or m.n_head,
                           n_inner=default_inner(m.n_embd))
    return GPT2Config(vocab_size=vocab, n_positions=m.n_positions, n_embd=m.n_embd,
                      n_layer=m.n_layer, n_head=m.n_head)


def _shape(arch) -> dict:
    """D, L, V, H, Hkv, Dh, I and the MLP activation multiplier m of either family."""
    if isinstance(arch, GPT2Config):
        return dict(D=arch.n_embd, L=arch.n_layer, V=arch.vocab_size, H=arch.n_head,
                    Hkv=arch.n_head, Dh=arch.head_dim, I=4 * arch.n_embd, m=2)
    return dict(D=arch.n_embd, L=arch.n_layer, V=arch.vocab_size, H=arch.n_head,
                Hkv=arch.n_kv_head, Dh=arch.head_dim, I=arch.n_inner, m=4)


def param_counts(arch) -> dict[str, int]:
    """{"lm": LM params, "trunk": params without an untied lm_head, "head": a scalar head}."""
    s = _shape(arch)
    D, L, V = s["D"], s["L"], s["V"]
    if isinstance(arch, GPT2Config):
        trunk = V * D + arch.n_positions * D + L * (12 * D * D + 13 * D) + 2 * D
        return {"lm": trunk, "trunk": trunk, "head": D + 1}
    qkv = (s["H"] + 2 * s["Hkv"]) * s["Dh"]
    layer = (D * qkv + s["H"] * s["Dh"] * D + 3 * D * s["I"] + 2 * D
             + (qkv if arch.qkv_bias else 0) + (D if arch.o_bias else 0)
             + (2 * s["I"] + D if arch.mlp_bias else 0))
    trunk = V * D + L * layer + D
    lm_head = 0 if arch.tie_word_embeddings else D * V
    return {"lm": trunk + lm_head, "trunk": trunk, "head": D + 1}


def activation_bytes(arch, rows: float, T: int, remat: bool, tensor: int = 1,
                     logit_tokens: int = 0) -> float:
    """Bytes a training step keeps for the backward pass, for `rows` sequences of T tokens
    (`logit_tokens` predicted tokens per row get float32 logits and their gradient)."""
    s, b_a = _shape(arch), _BYTES[arch.dtype]
    values = (4 * s["D"] + (2 * s["H"] * s["Dh"] + 2 * s["Hkv"] * s["Dh"] + s["m"] * s["I"])
              / tensor)
    per_layer = values * b_a + s["H"] * T * (4 + b_a) / tensor  # per token
    kept = s["L"] * s["D"] * b_a + per_layer if remat else s["L"] * per_layer
    return rows * (T * kept + logit_tokens * 8 * s["V"])


def kv_cache_bytes(arch, rows: float, T: int) -> float:
    s = _shape(arch)
    return 2 * s["L"] * rows * T * s["Hkv"] * s["Dh"] * _BYTES[arch.dtype]


def _mesh(config, devices: int) -> dict[str, int]:
    sizes = {k: int(config.mesh[k]) for k in ("data", "fsdp", "tensor")}
    free = [k for k, v in sizes.items() if v == -1]
    if free:
        sizes[free[0]] = max(devices // math.prod(v for v in sizes.values() if v != -1), 1)
    return sizes


def estimate(config, devices: int = 1, hf_config: dict | None = None) -> dict:
    """Per-device bytes of each stage's peak for `config` on `devices` devices (see the module
    docstring for every term). Returns counts, the mesh and {stage: {part: bytes, "total"}}."""
    arch = architecture(config, hf_config)
    arch = dataclasses.replace(arch, dtype=config.model.dtype,
                               param_dtype=config.model.param_dtype)
    counts, b_p = param_counts(arch), _BYTES[config.model.param_dtype]
    mesh = _mesh(config, devices)
    state_split = mesh["fsdp"] * mesh["tensor"]
    batch_split = mesh["data"] * mesh["fsdp"]
    remat, tp = bool(config.model.remat), mesh["tensor"]

    def trained(n):
        return 4 * b_p * n / state_split

    def frozen(n):
        return b_p * n / state_split

    s, rc, p, sc = config.sft, config.reward, config.ppo, config.sample
    T_sft = config.data.max_len
    sft = {"state": trained(counts["lm"]),
           "activations": activation_bytes(arch, s.batch_size / s.grad_accum / batch_split,
                                           T_sft, remat, tp, logit_tokens=T_sft)}
    rm_rows = rc.batch_size * (2 if rc.loss == "pairwise" else 1) / batch_split
    reward = {"state": trained(counts["trunk"] + counts["head"]),
              "activations": activation_bytes(arch, rm_rows, T_sft, remat, tp)}
    T_ppo, n_new = sc.max_prompt_len + p.max_new_tokens, p.max_new_tokens
    separate = p.critic == "separate"
    mb_rows, roll_rows = p.minibatch_size / batch_split, p.prompts_per_iteration / batch_split
    update = activation_bytes(arch, mb_rows, T_ppo, remat, tp, logit_tokens=n_new)
    if separate:
        update += activation_bytes(arch, mb_rows, T_ppo, remat, tp)
    rollout = kv_cache_bytes(arch, roll_rows, T_ppo) + 2 * roll_rows * n_new * 4 * arch.vocab_size
    ppo = {"policy": trained(counts["lm"]), "reference": frozen(counts["lm"]),
           "critic": trained(counts["trunk"] + counts["head"] if separate else counts["head"]),
           "reward_model": frozen(counts["trunk"] + counts["head"]),
           "update_activations": update, "rollout": rollout}
    T_sample = sc.max_prompt_len + sc.max_new_tokens
    sample = {"params": frozen(counts["lm"]),
              "kv_cache": kv_cache_bytes(arch, sc.batch_size / batch_split, T_sample)}
    for stage in (sft, reward, sample):
        stage["total"] = sum(stage.values())
    ppo["total"] = (sum(v for k, v in ppo.items() if k not in ("update_activations", "rollout"))
                    + max(update, rollout))
    return {"params": counts["lm"], "trunk_params": counts["trunk"], "devices": devices,
            "mesh": mesh, "dtype": config.model.dtype, "param_dtype": config.model.param_dtype,
            "remat": remat,
            "stages": {"sft": sft, "reward": reward, "ppo": ppo, "sample": sample}}


def format_estimate(est: dict) -> str:
    """A plain-text table of `estimate`'s result in GiB."""
    lines = [f"{est['params']:,} parameters (trunk {est['trunk_params']:,}); {est['devices']} "
             f"devices, mesh {est['mesh']}; params {est['param_dtype']}, compute {est['dtype']}, "
             f"remat {est['remat']}"]
    for stage, parts in est["stages"].items():
        body = ", ".join(f"{k} {v / GiB:.2f}" for k, v in parts.items() if k != "total")
        lines.append(f"  {stage:7s} {parts['total'] / GiB:7.2f} GiB/device  ({body})")
    return "\n".join(lines)


def main(argv=None) -> None:
    from rlaif_jax.config import load_config_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file, e.g. configs/gpt2_large.py[:ARG]")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--arch", choices=sorted(PUBLISHED),
                        help="published architecture (when model.hf_path is not on this machine)")
    args = parser.parse_args(argv)
    config = load_config_file(args.config)
    print(format_estimate(estimate(config, args.devices,
                                   PUBLISHED[args.arch] if args.arch else None)))


if __name__ == "__main__":
    main()
