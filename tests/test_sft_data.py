"""Tokenization with response-only loss masks, deterministic batch schedule, eval batches."""

import numpy as np
import pytest

from conftest import load_config
from rlaif_jax.data import sft_data
from rlaif_jax.data.tokenizer import EOS, PAD, load_tokenizer, train_bpe


def _records():
    base = {"question_id": "1", "hub": "huggingface", "source": "x", "provider": "Hugging Face",
            "explanation": "Load the model.", "gold_api_call": "", "api_data": "{}"}
    return [
        dict(base, instruction="Classify images of cats.", domain="Computer Vision",
             api_call="pipeline('image-classification')",
             code="from transformers import pipeline\nclf = pipeline('image-classification')"),
        dict(base, instruction="Translate English to French.", domain="NLP Translation",
             api_call="pipeline('translation_en_to_fr')",
             code="from transformers import pipeline\nt = pipeline('translation_en_to_fr')"),
    ]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    data_cfg = load_config("smoke").data
    texts = [sft_data.prompt_text(r, data_cfg) + sft_data.target_text(r, data_cfg)
             for r in _records()] * 20
    out = tmp_path_factory.mktemp("tok")
    train_bpe(texts, vocab_size=400, min_frequency=1).save_pretrained(str(out))
    return load_tokenizer(out)


def test_trained_tokenizer_loads_with_autotokenizer(tokenizer):
    assert tokenizer.eos_token == EOS and tokenizer.pad_token == PAD
    text = "model = AutoModel.from_pretrained('bert-base')\n  x"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_loss_mask_covers_exactly_response_and_eos(tokenizer):
    data_cfg = load_config("smoke").data
    recs = _records()
    enc = sft_data.encode(recs, tokenizer, data_cfg)
    assert enc.input_ids.shape == (2, data_cfg.max_len) and enc.n_truncated == 0
    for i, rec in enumerate(recs):
        ids, mask, attn = enc.input_ids[i], enc.loss_mask[i].astype(bool), enc.attention_mask[i]
        response = tokenizer.decode(ids[mask].tolist())
        assert response == sft_data.target_text(rec, data_cfg) + EOS
        prompt = tokenizer.decode(ids[(attn == 1) & ~mask].tolist())
        assert prompt == sft_data.prompt_text(rec, data_cfg)
        assert not mask[attn == 0].any()
        assert (ids[attn == 0] == tokenizer.pad_token_id).all()


def test_long_examples_are_cut_and_counted(tokenizer):
    data_cfg = load_config("smoke").data
    data_cfg.max_len = 12
    enc = sft_data.encode(_records(), tokenizer, data_cfg)
    assert enc.n_truncated == 2 and enc.attention_mask.all()


@pytest.mark.parametrize("group", [False, True])
def test_batch_schedule_is_deterministic_and_covers_epochs(group):
    lengths = np.arange(10) * 7 % 13
    a = sft_data.BatchSchedule(lengths, 3, seed=3, group_by_length=group, group_window=2)
    b = sft_data.BatchSchedule(lengths, 3, seed=3, group_by_length=group, group_window=2)
    assert a.batches_per_epoch == 3
    steps = [a.indices(s) for s in range(6)]  # two epochs of 3 batches, 1 example left over
    assert all((x == b.indices(s)).all() for s, x in reversed(list(enumerate(steps))))
    for epoch in (steps[:3], steps[3:]):
        flat = np.concatenate(epoch)
        assert len(set(flat.tolist())) == 9  # no example twice within an epoch
    assert a.position(4) == {"epoch": 1, "batch": 1}
    c = sft_data.BatchSchedule(lengths, 3, seed=4, group_by_length=group, group_window=2)
    assert any((c.indices(s) != x).any() for s, x in enumerate(steps))


def test_grouping_by_length_reduces_padding():
    lengths = np.random.default_rng(0).integers(10, 500, size=2000)
    def padded(group):
        sched = sft_data.BatchSchedule(lengths, 16, seed=0, group_by_length=group)
        return sum(lengths[sched.indices(s)].max() * 16 for s in range(sched.batches_per_epoch))
    assert padded(True) < 0.7 * padded(False)


def test_eval_batches_pad_with_zero_masks(tokenizer):
    enc = sft_data.encode(_records() * 3, tokenizer, load_config("smoke").data)
    batches = list(sft_data.eval_batches(enc, 4))
    assert len(batches) == 2 and batches[1]["input_ids"].shape[0] == 4
    assert batches[1]["loss_mask"][2:].sum() == 0 and batches[1]["loss_mask"][:2].sum() > 0


def test_unigram_baseline_matches_hand_computation(tokenizer):
    enc = sft_data.encode(_records(), tokenizer, load_config("smoke").data)
    vocab = len(tokenizer)
    toks = enc.input_ids[enc.loss_mask.astype(bool)]
    counts = np.bincount(toks, minlength=vocab) + 1.0
    expected = -np.mean(np.log(counts[toks] / counts.sum()))
    assert sft_data.unigram_baseline(enc, enc, vocab) == pytest.approx(expected)


def test_trim_to_bucket_keeps_every_real_token(tokenizer):
    enc = sft_data.encode(_records(), tokenizer, load_config("smoke").data)
    batch = enc.take(np.arange(2))
    used = int(batch["attention_mask"].sum(1).max())
    trimmed = sft_data.trim_to_bucket(batch, 16)
    keep = trimmed["input_ids"].shape[1]
    assert keep % 16 == 0 and used <= keep < used + 16
    assert trimmed["attention_mask"].sum() == batch["attention_mask"].sum()
    assert sft_data.trim_to_bucket(batch, 0)["input_ids"].shape == batch["input_ids"].shape
