"""Sharding rules: the layout of every parameter, config checks, and 8-device runs equal to 1.

The equality test trains SFT and runs PPO on 1 device in this process, then runs this file as a
script with 8 CPU devices (`main`), which repeats both on a 1 x 8 fsdp mesh and a 4 fsdp x 2
tensor mesh, in one process to pay JAX's start-up once.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import ROOT, load_config
from ppo_fixtures import copy_run, make_reward_checkpoint
from rlaif_jax import sharding
from rlaif_jax.config import ConfigError, validate
from rlaif_jax.metrics import read_metrics
from rlaif_jax.models.build import make_lm
from rlaif_jax.models.gpt2 import GPT2Config
from rlaif_jax.models.llama import LlamaConfig
from rlaif_jax.train.optim import make_optimizer

EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
LAYOUTS = ("fsdp8", "tp")  # configs/smoke.py args: 1 data x 8 fsdp; 4 fsdp x 2 tensor
SFT = {"steps": 6, "eval_every": 6, "log_every": 1}
PPO = {"iterations": 2, "prompts_per_iteration": 8, "minibatch_size": 8, "max_new_tokens": 16,
       "checkpoint_every": 2, "track_rollout_quality": False}
PPO_KEYS = ("reward", "rm_score", "kl", "loss", "pg_loss", "vf_loss", "entropy", "policy_kl",
            "clip_fraction", "explained_variance", "response_length")
TP_SIZES = {"data": 1, "fsdp": 4, "tensor": 2}


def smoke(arg=None):
    config = load_config("smoke", arg)
    config.model.n_layer = 1  # less to trace: the layouts are the same in every block
    config.sft.update(SFT)
    config.ppo.update(PPO)
    config.checkpoint.every_steps = SFT["steps"]
    return config


def names_and_specs(tree, sizes, rules=(), min_size=1024):
    parsed = sharding.parse_rules(rules) + sharding._BUILTIN
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = sharding.param_name(path)
        out[name] = sharding.spec_for(name, tuple(x.shape), sizes, parsed, min_size)
    return out


def abstract_params(cfg):
    model = make_lm(cfg)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 8), jnp.int32))["params"])


def abstract_state(cfg):
    """The SFT train state (params + AdamW state) of a model config, shapes only."""
    params = abstract_params(cfg)
    opt = jax.eval_shape(make_optimizer(load_config("smoke").sft).init, params)
    return {"params": params, "opt_state": opt}


GPT2_SMOKE = GPT2Config(vocab_size=600, n_positions=160, n_embd=64, n_layer=2, n_head=4)
LLAMA_SMOKE = LlamaConfig(vocab_size=600, n_positions=160, n_embd=64, n_layer=2, n_head=4,
                          n_kv_head=2, n_inner=192, qkv_bias=True, tie_word_embeddings=False)


def test_megatron_rules_for_gpt2_and_optimizer_state_follows():
    specs = names_and_specs(abstract_state(GPT2_SMOKE), TP_SIZES)
    h = "params/transformer/h_0"
    assert specs[f"{h}/attn/c_attn/kernel"] == P("fsdp", "tensor")  # column-parallel
    assert specs[f"{h}/attn/c_attn/bias"] == P("tensor")
    assert specs[f"{h}/mlp/c_fc/kernel"] == P("fsdp", "tensor")
    assert specs[f"{h}/attn/c_proj/kernel"] == P("tensor", "fsdp")  # row-parallel
    assert specs[f"{h}/mlp/c_proj/kernel"] == P("tensor", "fsdp")
    assert specs[f"{h}/mlp/c_proj/bias"] == P()  # small: replicated
    assert specs["params/transformer/wte/embedding"] == P("fsdp", "tensor")
    assert specs[f"{h}/ln_1/scale"] == P()
    # Every Adam moment has its parameter's layout.
    moments = {n: s for n, s in specs.items() if "/mu/" in n or "/nu/" in n}
    assert len(moments) == 2 * sum(n.startswith("params/") for n in specs)
    for name, spec in moments.items():
        assert spec == specs["params/" + name.split("/mu/" if "/mu/" in name else "/nu/")[1]]


def test_megatron_rules_for_llama():
    specs = names_and_specs(abstract_state(LLAMA_SMOKE), TP_SIZES, min_size=2**30)
    layer = "params/transformer/layers_1"
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert specs[f"{layer}/self_attn/{proj}/kernel"] == P(None, "tensor")
        assert specs[f"{layer}/self_attn/{proj}/bias"] == P("tensor")
    assert specs[f"{layer}/self_attn/o_proj/kernel"] == P("tensor")
    assert specs[f"{layer}/mlp/gate_proj/kernel"] == P(None, "tensor")
    assert specs[f"{layer}/mlp/up_proj/kernel"] == P(None, "tensor")
    assert specs[f"{layer}/mlp/down_proj/kernel"] == P("tensor")
    assert specs["params/transformer/embed_tokens/embedding"] == P(None, "tensor")
    assert specs["params/transformer/lm_head/kernel"] == P("tensor")
    assert specs[f"{layer}/input_layernorm/scale"] == P()


def _old_fsdp_spec(shape, fsdp, min_size):
    """The layout before the rules existed (largest dimension fsdp divides, if big)."""
    if fsdp == 1 or not shape or int(np.prod(shape)) < min_size:
        return ()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            return tuple("fsdp" if d == dim else None for d in range(len(shape)))
    return ()


@pytest.mark.parametrize("cfg", [GPT2_SMOKE, LLAMA_SMOKE], ids=["gpt2", "llama"])
def test_without_tensor_axis_the_layout_is_plain_fsdp(cfg):
    state = abstract_state(cfg)
    specs = names_and_specs(state, {"data": 4, "fsdp": 2})
    shapes = {sharding.param_name(p): x.shape
              for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
    for name, spec in specs.items():
        old = _old_fsdp_spec(shapes[name], 2, 1024)
        assert tuple(spec) + (None,) * (len(old) - len(spec)) == old, name


def test_config_rules_come_first_and_are_strict():
    state = abstract_state(GPT2_SMOKE)
    rules = ((r"attn/c_attn/kernel$", ("fsdp", "tensor")), (r"wte/embedding$", ("tensor",)))
    specs = names_and_specs(state, TP_SIZES, rules)
    assert specs["params/transformer/h_1/attn/c_attn/kernel"] == P("fsdp", "tensor")
    assert specs["params/transformer/wte/embedding"] == P("tensor", "fsdp")  # vocab-parallel
    # Only when no other dimension is free does fsdp stack onto a tensor-split one.
    odd = names_and_specs({"w": jax.ShapeDtypeStruct((7, 256), jnp.float32)}, TP_SIZES,
                          ((r"^w$", (None, "tensor")),))
    assert odd["w"] == P(None, ("tensor", "fsdp"))
    with pytest.raises(ValueError, match=r"config.mesh.rules\[0\].*c_fc/kernel.*does not divide"):
        names_and_specs(state, {"data": 1, "fsdp": 3}, ((r"c_fc/kernel$", (None, "fsdp")),))
    with pytest.raises(ValueError, match=r"gives 3 dimensions"):
        names_and_specs(state, TP_SIZES, ((r"c_fc/kernel$", (None, None, "tensor")),))


@pytest.mark.parametrize("key,value,message", [
    ("rules", ((r"c_attn/(kernel", (None, "tensor")),), r"config.mesh.rules\[0\]: invalid regex"),
    ("rules", ((r"c_attn/kernel$", (None, "model")),), r"unknown mesh axis 'model'"),
    ("rules", ((r"c_attn/kernel$", ("tensor", "tensor")),), r"uses a mesh axis twice"),
    ("rules", (r"c_attn/kernel$",), r"config.mesh.rules\[0\]: expected a \(regex, spec\) pair"),
    ("tensor", 3, r"config.mesh.tensor: 3 does not divide the model's n_head \(4\)"),
    ("tensor", 0, r"config.mesh.tensor: must be a positive integer or -1"),
    ("multihost", "maybe", r"config.mesh.multihost"),
])
def test_bad_mesh_config_is_rejected_with_the_key_named(key, value, message):
    config = load_config("smoke")
    config.mesh[key] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_tensor_size_is_checked_against_a_hf_checkpoint(tmp_path):
    hf = {"model_type": "qwen2", "hidden_size": 896, "num_attention_heads": 14,
          "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
          "max_position_embeddings": 32768, "num_hidden_layers": 24}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    config = load_config("qwen25_coder_05b", str(tmp_path))
    config.mesh.tensor = 2
    validate(config)
    config.mesh.tensor = 4
    with pytest.raises(ConfigError, match=r"mesh.tensor: 4 does not divide the model's n_head"):
        validate(config)


def test_one_device_mesh_has_no_tensor_axis_and_smoke_args_validate():
    assert sharding.make_mesh(load_config("smoke").mesh).axis_names == ("data", "fsdp")
    for arg in ("mesh8", "fsdp8", "tp"):
        validate(load_config("smoke", arg))
    tp = load_config("smoke", "tp").mesh
    assert (tp.data, tp.fsdp, tp.tensor) == (1, 4, 2)


# --- 8 devices ----------------------------------------------------------------------------------


def _use_compilation_cache():
    jax.config.update("jax_compilation_cache_dir",
                      str(pathlib.Path(load_config("smoke").compilation_cache).expanduser()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run_layout(arg, base: pathlib.Path, out: pathlib.Path) -> dict:
    """SFT and PPO (from `base`'s SFT and reward checkpoints) on the mesh of smoke.py:`arg`."""
    from rlaif_jax.train import ppo, sft

    config = smoke(arg)
    validate(config)
    (out / "sft").mkdir(parents=True)
    summary = sft.train(config, out / "sft")
    ppo.train(config, copy_run(base, out / "ppo"))
    mesh = sharding.make_mesh(config.mesh)
    # The study's model on this mesh: shapes only, nothing allocated.
    large = abstract_params(GPT2Config(vocab_size=50257, n_positions=1024, n_embd=1280,
                                       n_layer=36, n_head=20))
    return {"mesh": dict(mesh.shape),
            "sft_loss": [r["loss"] for r in read_metrics(out / "sft" / "metrics" / "sft.jsonl")
                         if "loss" in r],
            "val_loss": summary["val_loss"],
            "param_bytes_per_device": summary["param_bytes_per_device"],
            "ppo": read_metrics(out / "ppo" / "metrics" / "ppo.jsonl"),
            "gpt2_large_param_bytes_per_device": sharding.planned_bytes_per_device(
                large, sharding.state_shardings(large, mesh, config.mesh.fsdp_min_size))}


def main(base: str, out: str) -> None:
    """8-device side of the equality test: both layouts, results as JSON on stdout."""
    _use_compilation_cache()
    assert jax.device_count() == 8
    results = {arg: run_layout(arg, pathlib.Path(base), pathlib.Path(out) / arg)
               for arg in LAYOUTS}
    print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """SFT, a reward checkpoint and PPO on this process's single device."""
    from rlaif_jax.train import ppo, sft

    _use_compilation_cache()
    base = tmp_path_factory.mktemp("tp_base")
    config = smoke()
    summary = sft.train(config, base)
    make_reward_checkpoint(base, config)
    ppo_dir = copy_run(base, tmp_path_factory.mktemp("tp_ppo1"))
    ppo.train(config, ppo_dir)
    return base, summary, read_metrics(ppo_dir / "metrics" / "ppo.jsonl")


def _rel(a, b):
    """Largest relative and absolute differences."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return (float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))),
            float(np.max(np.abs(a - b))), float(np.max(np.abs(b))))


def test_fsdp8_and_tensor_parallel_runs_equal_one_device(one_device, tmp_path):
    base, summary, ppo_one = one_device
    env = dict(os.environ, **EIGHT)
    proc = subprocess.run([sys.executable, __file__, str(base), str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    sft_one = [r["loss"] for r in read_metrics(base / "metrics" / "sft.jsonl") if "loss" in r]
    assert results["fsdp8"]["mesh"] == {"data": 1, "fsdp": 8}
    assert results["tp"]["mesh"] == TP_SIZES
    total = summary["param_bytes_per_device"]
    print("(relative, absolute) difference to 1 device, largest |value|:", json.dumps({arg: {
        "sft_loss": _rel(results[arg]["sft_loss"], sft_one),
        "val_loss": _rel([results[arg]["val_loss"]], [summary["val_loss"]]),
        **{k: _rel([r[k] for r in results[arg]["ppo"]], [r[k] for r in ppo_one])
           for k in PPO_KEYS}} for arg in LAYOUTS}, indent=1))
    print("param bytes per device:", total, {a: results[a]["param_bytes_per_device"]
                                             for a in LAYOUTS})
    for arg in LAYOUTS:
        r = results[arg]
        assert len(r["sft_loss"]) == len(sft_one) == SFT["steps"]
        np.testing.assert_allclose(r["sft_loss"], sft_one, rtol=1e-5, err_msg=arg)
        np.testing.assert_allclose(r["val_loss"], summary["val_loss"], rtol=1e-5, err_msg=arg)
        assert len(r["ppo"]) == len(ppo_one) == PPO["iterations"]
        for key in PPO_KEYS:
            np.testing.assert_allclose([row[key] for row in r["ppo"]],
                                       [row[key] for row in ppo_one], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{arg}: {key}")
        # 8-way splits of all large matrices; biases and norms (~1% here) stay whole.
        assert 0.125 * total < r["param_bytes_per_device"] < 0.15 * total, (arg, total, r)
        large = 774_030_080 * 4
        assert large / 8 <= r["gpt2_large_param_bytes_per_device"] < 1.01 * large / 8


if __name__ == "__main__":
    main(*sys.argv[1:])
