"""Memory estimates: parameter counts against hand numbers and the real Flax models, and the
per-device arithmetic the README quotes."""

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT, load_config
from rlaif_jax import memory
from rlaif_jax.models.build import make_lm, make_reward_model
from rlaif_jax.models.gpt2 import GPT2Config, count_params
from rlaif_jax.models.llama import LlamaConfig


def flax_count(model):
    return count_params(jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]))


def test_gpt2_large_has_774m_parameters():
    arch = memory.architecture(None, memory.PUBLISHED["gpt2-large"])
    V, P, D, L = 50257, 1024, 1280, 36
    by_hand = V * D + P * D + L * (12 * D * D + 13 * D) + 2 * D
    assert by_hand == 774_030_080
    assert memory.param_counts(arch) == {"lm": by_hand, "trunk": by_hand, "head": D + 1}


def test_qwen25_coder_05b_has_494m_parameters():
    arch = memory.architecture(None, memory.PUBLISHED["qwen2.5-coder-0.5b"])
    counts = memory.param_counts(arch)
    assert counts["lm"] == 494_032_768  # published: 0.49B
    assert counts["lm"] - 151936 * 896 == 357_898_112  # published: 0.36B without embeddings


@pytest.mark.parametrize("cfg", [
    GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4),
    LlamaConfig(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4, n_kv_head=2,
                n_inner=80, qkv_bias=True, tie_word_embeddings=True, model_type="qwen2"),
    LlamaConfig(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=6, n_kv_head=3,
                n_inner=64, qkv_bias=True, o_bias=True, mlp_bias=True,
                tie_word_embeddings=False),
], ids=["gpt2", "qwen2", "llama-untied-biases"])
def test_formulas_count_what_the_flax_models_have(cfg):
    counts = memory.param_counts(cfg)
    assert counts["lm"] == flax_count(make_lm(cfg))
    assert counts["trunk"] + counts["head"] == flax_count(make_reward_model(cfg))


def test_gpt2_large_on_a_v4_8_by_hand():
    config = load_config("gpt2_large")
    est = memory.estimate(config, devices=4, hf_config=memory.PUBLISHED["gpt2-large"])
    n = 774_030_080
    assert est["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    sft = est["stages"]["sft"]
    assert sft["state"] == 16 * n / 4  # fp32 params + grads + 2 Adam moments, split 4 ways
    # 64 sequences / 4 micro-batches / 4 devices = 4 rows of 1024 tokens, bf16, remat:
    # per token 36 block inputs (1280 x 2 bytes) + one block (16 x 1280 x 2 + 20 heads x 1024 x
    # (4 + 2)) + float32 logits and their gradient (8 x 50257).
    per_token = 36 * 1280 * 2 + (16 * 1280 * 2 + 20 * 1024 * 6) + 8 * 50257
    assert sft["activations"] == 4 * 1024 * per_token == 2_695_397_376
    ppo = est["stages"]["ppo"]
    # policy + Adam (16 B), reference (4 B), separate critic + Adam (16 B), reward model (4 B).
    static = 16 * n + 4 * n + 16 * (n + 1281) + 4 * (n + 1281)
    assert ppo["policy"] + ppo["reference"] + ppo["critic"] + ppo["reward_model"] == static / 4
    assert ppo["total"] == static / 4 + max(ppo["update_activations"], ppo["rollout"])
    # The rollout's KV cache: 2 x 36 layers x 16 rows x 512 positions x 1280 x 2 bytes.
    assert ppo["rollout"] == 2 * 36 * 16 * 512 * 1280 * 2 + 2 * 16 * 256 * 4 * 50257


def test_more_devices_and_shared_critic_need_less():
    config = load_config("qwen25_coder_05b")
    hf = memory.PUBLISHED["qwen2.5-coder-0.5b"]
    one, four = (memory.estimate(config, d, hf)["stages"]["ppo"] for d in (1, 4))
    assert four["policy"] == one["policy"] / 4 and four["total"] < one["total"] / 3
    config.ppo.critic = "shared"
    shared = memory.estimate(config, 4, hf)["stages"]["ppo"]
    assert shared["critic"] < 1e6 < four["critic"] and shared["total"] < four["total"]
    config.mesh.tensor = 2  # fsdp takes the remaining 2 of 4 devices: same state per device
    tp = memory.estimate(config, 4, hf)
    assert tp["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    assert tp["stages"]["ppo"]["policy"] == shared["policy"]


def test_table_and_cli(capsys):
    memory.main([str(ROOT / "configs" / "gpt2_large.py"), "--devices", "4", "--arch", "gpt2-large"])
    out = capsys.readouterr().out
    assert out.startswith("774,030,080 parameters") and "ppo" in out and "GiB/device" in out


def test_a_from_scratch_config_needs_no_checkpoint():
    est = memory.estimate(load_config("smoke"))
    assert est["stages"]["sft"]["state"] == 16 * est["params"]
