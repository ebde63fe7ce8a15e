"""Starting SFT from a local Hugging Face GPT-2 directory (what configs/gpt2_large.py does)."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from conftest import cli, load_config
from rlaif_jax.data import sft_data
from rlaif_jax.data.tokenizer import train_bpe
from rlaif_jax.models.build import model_config_for_run, pretrained_params
from rlaif_jax.models.hf_names import to_hf_state_dict


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random tiny GPT2LMHeadModel saved by transformers, with a tokenizer beside it."""
    out = tmp_path_factory.mktemp("hf_gpt2")
    texts = ["###Instruction: load a model\n###Output: <<<api_call>>>: pipeline('x')"] * 50
    tok = train_bpe(texts, vocab_size=300, min_frequency=1)
    tok.save_pretrained(str(out))
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(tok) + 3, n_positions=192, n_embd=32,
                                  n_layer=2, n_head=4, eos_token_id=tok.eos_token_id,
                                  bos_token_id=tok.bos_token_id)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(out))
    return out


def test_pretrained_params_equal_the_hf_weights(hf_dir):
    config = load_config("smoke")
    config.model.hf_path = str(hf_dir)
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    cfg = model_config_for_run(config, tok)
    assert (cfg.n_embd, cfg.n_layer, cfg.vocab_size) == (32, 2, len(tok) + 3)
    ours = to_hf_state_dict({"transformer": pretrained_params(config, cfg)["transformer"]})
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(hf_dir)).state_dict()
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name].numpy(), err_msg=name)


def test_sft_starts_from_the_hf_directory(hf_dir, tmp_path):
    cli("sft", "--config=configs/smoke.py", f"--config.model.hf_path={hf_dir}",
        "--config.sft.steps=4", "--config.sft.warmup_steps=1", "--workdir", tmp_path)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["n_embd"] == 32 and saved["vocab_size"] == json.loads(
        (hf_dir / "config.json").read_text())["vocab_size"]
    # The run used the directory's tokenizer, not a newly trained one.
    a = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    b = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    assert a.get_vocab() == b.get_vocab()
    cli("sample", "--config=configs/smoke.py", f"--config.model.hf_path={hf_dir}",
        "--workdir", tmp_path)
    config = load_config("smoke")
    lines = (tmp_path / "samples" / "train.jsonl").read_text().count("\n")
    assert lines == config.sample.max_prompts * config.sample.num_samples
