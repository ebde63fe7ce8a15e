"""`rlaif-jax import` and `rlaif-jax export` through the real CLI and real orbax checkpoints.

* A tiny Qwen2 directory (random weights, a BPE tokenizer) is imported into a workdir, whose sft
  checkpoint then holds exactly its weights, and `rlaif-jax sample` runs on it.
* A smoke SFT run (GPT-2) is exported with `rlaif-jax export`; `transformers` loads it, and its
  greedy generation equals ours. PPO-policy and reward checkpoints of the same workdir export to directories that
  `AutoModelForCausalLM` / `AutoModelForSequenceClassification` load with our outputs.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import cli, load_config
from rlaif_jax import export_stage, import_stage, sharding
from rlaif_jax.checkpoint import StageCheckpoints
from rlaif_jax.config import save_resolved, validate
from rlaif_jax.data import sft_data
from rlaif_jax.data.splits import build_splits
from rlaif_jax.data.tokenizer import train_bpe
from rlaif_jax.models import hf_import
from rlaif_jax.models.build import load_model_config, make_lm, make_reward_model
from rlaif_jax.sample_responses import load_stage_params
from rlaif_jax.sampling import SamplingParams, left_pad, make_generate_fn
from rlaif_jax.train import sft

SMOKE = "--config=configs/smoke.py"


def _restore(workdir, stage, model):
    config = load_config("smoke")
    params, step = load_stage_params(workdir, stage, model, sharding.make_mesh(config.mesh),
                                     config.mesh.fsdp_min_size)
    return jax.device_get(params), step


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A random tiny Qwen2ForCausalLM (GQA, tied) saved by transformers, with its tokenizer."""
    out = tmp_path_factory.mktemp("hf_qwen2")
    records = list(build_splits(load_config("smoke").data)["train"])
    texts = [r["instruction"] + " " + r["api_call"] for r in records]
    tok = train_bpe(texts, vocab_size=300, min_frequency=1)
    tok.save_pretrained(str(out))
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=len(tok) + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(str(out))
    return out


def test_import_then_sample_through_the_cli(qwen_dir, tmp_path):
    w = tmp_path / "w"
    proc = cli("import", "--hf", qwen_dir, "--workdir", w)
    assert "Imported qwen2" in proc.stdout
    saved = json.loads((w / "model" / "config.json").read_text())
    assert saved["model_type"] == "qwen2" and saved["num_key_value_heads"] == 2
    a = transformers.AutoTokenizer.from_pretrained(str(w / "tokenizer"))
    assert a.get_vocab() == transformers.AutoTokenizer.from_pretrained(str(qwen_dir)).get_vocab()
    cfg = load_model_config(w)
    params, step = _restore(w, "sft", make_lm(cfg))
    _, expected = hf_import.load_lm(qwen_dir)
    assert step == 0 and jax.tree.structure(params) == jax.tree.structure(expected)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(FileExistsError, match="import into a new --workdir"):
        import_stage.run(qwen_dir, w)  # nothing is overwritten

    cli("sample", SMOKE, "--workdir", w, "--config.sample.max_prompts=2",
        "--config.sample.max_new_tokens=8")
    rows = [json.loads(line) for line in (w / "samples" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * load_config("smoke").sample.num_samples
    assert all(1 <= r["num_tokens"] <= 8 and isinstance(r["text"], str) for r in rows)


def test_import_refuses_a_non_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        import_stage.run(tmp_path, tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A 4-step smoke SFT run (in-process, as `rlaif-jax sft` runs it, to save a process start)."""
    w = tmp_path_factory.mktemp("sft")
    config = load_config("smoke")
    config.sft.steps, config.sft.warmup_steps, config.sft.eval_every = 4, 1, 4
    config.checkpoint.every_steps = 4
    validate(config)
    save_resolved(config, w, "sft")
    sft.train(config, w)
    return w


def test_exported_sft_run_generates_like_ours_in_transformers(sft_run, tmp_path):
    out = tmp_path / "hf"
    proc = cli("export", "--workdir", sft_run, "--stage", "sft", "--out", out)
    assert "Exported the sft checkpoint (step 4)" in proc.stdout
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "README.md"} <= {p.name for p in out.iterdir()}
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert type(hf).__name__ == "GPT2LMHeadModel"
    smoke = load_config("smoke")
    assert hf.generation_config.do_sample == (not smoke.sample.greedy)
    assert hf.generation_config.pad_token_id == tok.pad_token_id != tok.eos_token_id

    records = list(build_splits(smoke.data)["test"])[:2]
    prompts = [tok(sft_data.prompt_text(r, smoke.data), add_special_tokens=False)["input_ids"]
               for r in records]
    ids, mask = left_pad(prompts, 48, tok.pad_token_id)
    model = make_lm(load_model_config(sft_run))
    params, _ = _restore(sft_run, "sft", model)
    n_new = 12
    generate = make_generate_fn(model, SamplingParams(max_new_tokens=n_new, greedy=True,
                                eos_id=tok.eos_token_id, pad_id=tok.pad_token_id), prompt_len=48)
    ours = np.asarray(generate(params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0))["tokens"])
    with torch.no_grad():
        theirs = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                             do_sample=False, max_new_tokens=n_new).numpy()[:, 48:]
    np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)
    assert (ours[:, theirs.shape[1]:] == tok.pad_token_id).all()

    with pytest.raises(FileExistsError, match="not empty"):
        export_stage.run(sft_run, "sft", out)


def test_exported_ppo_policy_and_reward_model_give_our_outputs(sft_run, tmp_path):
    cfg = load_model_config(sft_run)
    sft_params, _ = _restore(sft_run, "sft", make_lm(cfg))
    rng = np.random.default_rng(0)
    # A PPO checkpoint: the policy's LM params under "params" (plus other items, ignored).
    policy = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), sft_params)
    ppo = StageCheckpoints(sft_run / "checkpoints" / "ppo", keep=1, async_save=False)
    ppo.save(3, {"params": policy, "loop": {"iteration": jnp.asarray(3)}}, {"iteration": 3})
    ppo.close()
    # A reward checkpoint: the SFT trunk plus a scalar head with a non-zero bias.
    head = {"Dense_0": {"kernel": rng.standard_normal((cfg.n_embd, 1)).astype(np.float32),
                        "bias": np.full((1,), -0.25, np.float32)}}
    rm_params = {"transformer": sft_params["transformer"], "reward_head": head}
    rm = StageCheckpoints(sft_run / "checkpoints" / "reward", keep=1, async_save=False)
    rm.save(5, {"params": rm_params}, {"step": 5})
    rm.close()

    tok = transformers.AutoTokenizer.from_pretrained(str(sft_run / "tokenizer"))
    texts = ["###Instruction: translate text\n###Output: <<<api_call>>>: pipeline('x')",
             "###Instruction: detect objects"]
    batch = tok(texts, padding=True, return_tensors="np")  # right padding with the pad token
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()

    summary = export_stage.run(sft_run, "ppo", tmp_path / "ppo")
    assert summary["checkpoint_step"] == 3
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ppo")).eval()
    lm = make_lm(cfg)
    ours = np.asarray(jax.jit(lambda p: lm.apply({"params": p}, ids, attention_mask=mask).logits)(policy))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert np.abs(ours - theirs)[mask == 1].max() < 1e-4

    export_stage.run(sft_run, "reward", tmp_path / "rm")
    hf_rm = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm")).eval()
    assert hf_rm.config.num_labels == 1 and hf_rm.config.pad_token_id == tok.pad_token_id
    rm_model = make_reward_model(cfg)
    ours = np.asarray(jax.jit(lambda p: rm_model.apply({"params": p}, ids, attention_mask=mask))(rm_params))
    with torch.no_grad():
        theirs = hf_rm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()[:, 0]
    np.testing.assert_allclose(theirs + hf_rm.config.reward_bias, ours, atol=1e-4)
