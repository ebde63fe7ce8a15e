"""Parity with `transformers` for GPT-2, Llama and Qwen2: import, KV cache, export, greedy decoding.

Small random models are built with `transformers` + `torch` (CPU, fp32), saved with
`save_pretrained` (some as shards with an index), imported with `models/hf_import`, and compared
with our flax models: logits on left-padded batches, cached decoding, exported directories
loaded back by `transformers`, greedy generations, and reward models exported as one-label
sequence classifiers.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlaif_jax.models import build, gpt2, hf_export, hf_import, llama
from rlaif_jax.models.llama import LlamaConfig
from rlaif_jax.sampling import SamplingParams, left_pad, make_generate_fn, positions_from_mask

V, EOS, PAD = 160, 158, 159
TOL = 1e-4
CONFIGS = {
    # Sharded save: exercises model.safetensors.index.json.
    "gpt2": (transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4),
             "24KB"),
    # Grouped-query attention (4 query heads, 2 kv heads), untied head, Llama 3.1 RoPE scaling.
    "llama": (transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=5e5, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16)), None),
    # Qwen2 (q/k/v biases), tied embeddings, rope_theta 1e6, sharded.
    "qwen2_tied": (transformers.Qwen2Config(
        vocab_size=V, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, rope_theta=1e6), "24KB"),
    # Qwen2 with an untied head and multi-query attention (1 kv head).
    "qwen2_untied": (transformers.Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False), None),
}
DIFFS = {}  # measured max abs diffs, printed at the end of the module


def _randomize(model, seed=0):
    """Non-trivial weights: N(0, 0.2) matrices and biases, norm scales around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm = "norm" in name or ".ln_" in name or name.startswith("transformer.ln_f")
            p.copy_(1 + 0.2 * noise if is_norm and name.endswith("weight") else 0.2 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """arch -> (torch model, saved directory)."""
    out = {}
    for arch, (cfg, shard) in CONFIGS.items():
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 0, EOS, PAD
        torch.manual_seed(0)
        model = _randomize(transformers.AutoModelForCausalLM.from_config(cfg))
        directory = tmp_path_factory.mktemp(arch)
        model.save_pretrained(str(directory), **({"max_shard_size": shard} if shard else {}))
        out[arch] = (model, directory)
    return out


@pytest.fixture(scope="module", autouse=True)
def report_diffs():
    yield
    print("\nmax abs logit diffs vs transformers:", json.dumps(DIFFS, indent=1))


def _batch(seed, B=3, T=10):
    """Random ids with 0, 3 and 6 left pads, the mask and mask-derived position ids."""
    ids = np.random.default_rng(seed).integers(0, EOS, (B, T))
    mask = np.ones((B, T), np.int32)
    mask[1, :3] = 0
    mask[2, :6] = 0
    ids = np.where(mask == 1, ids, PAD)
    return ids, mask, np.asarray(positions_from_mask(mask))


def _hf_logits(model, ids, mask, positions):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.numpy()


@functools.cache
def _logits_fn(cfg):
    """One jitted forward per config (compiled once per input shape across the tests)."""
    model = build.make_lm(cfg)
    return jax.jit(lambda p, i, m, q: model.apply({"params": p}, i, attention_mask=m, positions=q).logits)


def _our_logits(cfg, params, ids, mask, positions):
    return np.asarray(_logits_fn(cfg)(params, ids, mask, positions))


def _perturbed(params, seed):
    """Host params plus N(0, 0.1) noise (a model of our own, not the imported one)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32), params)


def _max_diff(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_imported_logits_match_transformers(arch, hf_models):
    hf, directory = hf_models[arch]
    assert (directory / "model.safetensors.index.json").exists() == (CONFIGS[arch][1] is not None)
    cfg, params = hf_import.load_lm(directory)
    assert type(cfg) is (gpt2.GPT2Config if arch == "gpt2" else LlamaConfig)
    ids, mask, positions = _batch(1)
    ours = _our_logits(cfg, params, ids, mask, positions)
    diff = _max_diff(ours, _hf_logits(hf, ids, mask, positions), mask)
    DIFFS[f"{arch} import"] = diff
    assert diff < TOL
    assert np.abs(ours).max() > 1.0  # the weights are far from trivial


@pytest.mark.parametrize("arch,layout", [("llama", "compact"), ("llama", "per_query_head")])
def test_kv_cache_decoding_equals_the_full_forward(arch, layout, hf_models):
    """Prefill 5 tokens, a 2-token chunk, then single-token steps; as one full forward.

    ``compact`` is the sampler's layout (``n_kv_head`` cache heads); ``per_query_head`` is
    ``gpt2.init_cache``'s, each key/value stored once per query head.
    """
    cfg, params = hf_import.load_lm(hf_models[arch][1])
    model = build.make_lm(cfg)
    ids, mask, positions = _batch(2, T=12)
    mask[:, 5:] = 1  # left padding lives in the prompt only
    positions = np.asarray(positions_from_mask(mask))
    full = _our_logits(cfg, params, ids, mask, positions)
    make_cache = llama.init_cache if layout == "compact" else gpt2.init_cache
    cache = make_cache(cfg, ids.shape[0], 12)
    assert cache["k"][0].shape[1] == (cfg.n_kv_head if layout == "compact" else cfg.n_head)
    step = jax.jit(lambda p, i, q, c: model.apply({"params": p}, i, positions=q, attention_mask=mask, cache=c))
    pieces = []
    for start, stop in [(0, 5), (5, 7)] + [(t, t + 1) for t in range(7, 12)]:
        out = step(params, ids[:, start:stop], positions[:, start:stop], cache)
        cache = out.cache
        pieces.append(np.asarray(out.logits))
    assert int(cache["index"]) == 12
    cached = np.concatenate(pieces, axis=1)
    np.testing.assert_allclose(cached[mask == 1], full[mask == 1], atol=1e-5)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_export_loads_in_transformers_with_our_logits(arch, hf_models, tmp_path):
    """Our own params -> export -> AutoModelForCausalLM gives our logits; re-import is exact."""
    cfg, imported = hf_import.load_lm(hf_models[arch][1])
    ids, mask, positions = _batch(3)
    params = _perturbed(imported, 3)
    tok = _tokenizer()
    hf_export.save_pretrained(tmp_path, cfg, params, tok, max_shard_bytes=40_000 if arch == "llama" else 2**30)
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched weights
    assert type(loaded).__name__ == hf_export._CLASSES[hf_export.model_type(cfg)][0]
    assert (tmp_path / "model.safetensors.index.json").exists() == (arch == "llama")
    assert loaded.generation_config.eos_token_id == tok.eos_token_id
    ours = _our_logits(cfg, params, ids, mask, positions)
    diff = _max_diff(ours, _hf_logits(loaded.eval(), ids, mask, positions), mask)
    DIFFS[f"{arch} export"] = diff
    assert diff < TOL
    _, again = hf_import.load_lm(tmp_path)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert jax.tree.structure(params) == jax.tree.structure(again)


@pytest.mark.parametrize("arch", ["llama", "qwen2_tied"])  # GPT-2: tests/test_export_import.py
def test_greedy_generations_are_identical(arch, hf_models):
    hf, directory = hf_models[arch]
    cfg, params = hf_import.load_lm(directory)
    prompts = [[5, 17, 33], [7, 8, 9, 10, 11, 12, 13], [100, 3, 41, 42, 43]]
    ids, mask = left_pad(prompts, 8, PAD)
    n_new = 16
    generate = make_generate_fn(build.make_lm(cfg), SamplingParams(
        max_new_tokens=n_new, greedy=True, eos_id=EOS, pad_id=PAD), prompt_len=8)
    out = generate(params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0))
    ours, logprobs = np.asarray(out["tokens"]), np.asarray(out["logprobs"])
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                             do_sample=False, max_new_tokens=n_new, eos_token_id=EOS, pad_token_id=PAD,
                             output_logits=True, return_dict_in_generate=True)
    theirs = hf_out.sequences.numpy()[:, 8:]
    n = theirs.shape[1]
    np.testing.assert_array_equal(ours[:, :n], theirs)
    assert (ours[:, n:] == PAD).all()
    assert len(set(map(tuple, ours.tolist()))) == 3  # rows differ: the prompts matter
    # Every decoded step (prefill + KV-cache steps) gives transformers' log-probabilities.
    hf_logprobs = np.stack([torch.log_softmax(x, -1).numpy() for x in hf_out.logits], 1)  # [B, n, V]
    chosen = np.take_along_axis(hf_logprobs, theirs[..., None], -1)[..., 0]
    live = np.asarray(out["lengths"])[:, None] > np.arange(n)[None]
    diff = float(np.abs(chosen - logprobs[:, :n])[live].max())
    DIFFS[f"{arch} greedy logprobs"] = diff
    assert diff < TOL


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_model_exports_as_sequence_classifier(arch, hf_models, tmp_path):
    cfg, lm_params = hf_import.load_lm(hf_models[arch][1])
    rm = build.make_reward_model(cfg)
    ids, mask, _ = _batch(4)
    ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()  # right padding, pads are PAD
    rng = np.random.default_rng(4)
    head = {"Dense_0": {"kernel": rng.standard_normal((cfg.n_embd, 1)).astype(np.float32),
                        "bias": np.full((1,), 0.3, np.float32)}}  # HF's score has no bias
    params = {"transformer": {k: v for k, v in lm_params["transformer"].items() if k != "lm_head"},
              "reward_head": head}
    ours = np.asarray(jax.jit(lambda p: rm.apply({"params": p}, ids, attention_mask=mask))(params))
    hf_export.save_pretrained(tmp_path, cfg, params, _tokenizer(), reward=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["reward_bias"] == pytest.approx(0.3) and saved["pad_token_id"] == PAD
    assert not (tmp_path / "generation_config.json").exists()
    loaded, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(tmp_path), output_loading_info=True)
    assert not any(info.values()), info
    assert loaded.config.num_labels == 1 and type(loaded).__name__.endswith("ForSequenceClassification")
    with torch.no_grad():
        theirs = loaded.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    assert theirs.shape == (3, 1)
    diff = float(np.abs(theirs.numpy()[:, 0] + saved["reward_bias"] - ours).max())
    DIFFS[f"{arch} reward"] = diff
    assert diff < TOL
    _, again = hf_import.load_reward_model(tmp_path)
    np.testing.assert_allclose(again["reward_head"]["Dense_0"]["bias"], head["Dense_0"]["bias"], rtol=1e-6)
    np.testing.assert_array_equal(again["reward_head"]["Dense_0"]["kernel"], head["Dense_0"]["kernel"])


def test_config_json_of_a_published_qwen25_coder_is_read():
    """The (transformers 4 era) config.json of Qwen2.5-Coder-0.5B: GQA 14/2, tied, theta 1e6."""
    published = {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
        "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
        "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}
    cfg = build.config_from_hf(published)
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.n_inner) == (
        896, 24, 14, 2, 64, 4864)
    assert cfg.qkv_bias and not cfg.o_bias and cfg.tie_word_embeddings and cfg.rope_theta == 1e6
    assert LlamaConfig.from_hf(cfg.to_hf()) == cfg
    theirs = transformers.AutoConfig.for_model(**cfg.to_hf())
    assert theirs.rope_parameters["rope_theta"] == 1e6 and theirs.num_key_value_heads == 2
    for bad, message in [({"use_sliding_window": True}, "sliding"), ({"hidden_act": "gelu"}, "hidden_act"),
                         ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
                         ({"model_type": "mistral"}, "mistral")]:
        with pytest.raises(ValueError, match=message):
            build.config_from_hf({**published, **bad})


def test_mismatched_weights_are_named(hf_models, tmp_path):
    _, directory = hf_models["qwen2_untied"]
    cfg = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    for f in directory.glob("*.safetensors*"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(KeyError, match=r"missing=\['model\.layers\.2\."):
        hf_import.load_lm(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 65}))
    with pytest.raises(ValueError, match=r"mlp\.gate_proj\.weight: shape \(64, 32\) does not fit"):
        hf_import.load_lm(tmp_path)


def _tokenizer():
    """A tiny tokenizer whose special ids match the models' (bos 0, eos 158, pad 159)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(V)}
    vocab.update({"<s>": 0, "</s>": EOS, "<pad>": PAD})
    vocab = {k: v for k, v in vocab.items() if k not in ("t0", f"t{EOS}", f"t{PAD}")}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t1"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="t1")
