"""Reward model: the losses against hand computations, and the stage end to end.

The end-to-end data is synthetic but honest: for prompts of the smoke data, the chosen response
is the gold APIBench answer and the rejected one is corrupted (the api_call of another hub's
record, or the answer cut short), labelled acceptable / not accordingly. Held-out prompts never
appear in training, so held-out pairwise accuracy above 0.5 means the model learned to tell them
apart. The pairwise run and its SIGTERM / resume go through the real CLI; the cheaper checks
(pointwise mode, refused resume, input errors) call `reward.train` in-process.
"""

import json
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, cli, load_config
from rlaif_jax.data import gorilla, sft_data
from rlaif_jax.data.splits import build_splits
from rlaif_jax.data.tokenizer import load_tokenizer
from rlaif_jax.metrics import read_metrics
from rlaif_jax.sharding import make_mesh
from rlaif_jax.train import reward, reward_data, rm_losses
from rlaif_jax.train.reward import load_reward_params, make_score_fn

SMOKE = "--config=configs/smoke.py"
# Short gold answers: the full five sections are longer than the smoke model's 160 positions.
SECTIONS = ("domain", "api_call", "api_provider")
# The RM runs of this file: enough steps to learn the synthetic preference.
FAST = [SMOKE, "--config.data.length_bucket=0"]  # one sequence length: fewer compilations
RM_ARGS = [*FAST, "--config.reward.steps=20", "--config.reward.validation_fraction=0.25",
           "--config.reward.eval_every=10", "--config.reward.log_every=1",
           "--config.checkpoint.every_steps=10"]


# ---------------------------------------------------------------- losses and metrics (pure)

def test_bradley_terry_loss_matches_hand_computation():
    chosen, rejected = jnp.array([2.0, 0.0, -1.0]), jnp.array([1.0, 0.0, 3.0])
    # -log sigmoid(d) = log(1 + exp(-d)) for d = 1, 0, -4.
    expected = np.mean([np.log1p(np.exp(-1.0)), np.log(2.0), np.log1p(np.exp(4.0))])
    assert float(rm_losses.bradley_terry_loss(chosen, rejected)) == pytest.approx(expected, 1e-6)
    # Far apart scores do not overflow.
    big = rm_losses.bradley_terry_loss(jnp.array([-200.0]), jnp.array([200.0]))
    assert float(big) == pytest.approx(400.0)


def test_pointwise_bce_matches_hand_computation():
    logits, labels = jnp.array([0.0, 2.0, -3.0, 1.5]), jnp.array([1.0, 0.0, 0.0, 1.0])
    p = 1 / (1 + np.exp(-np.array([0.0, 2.0, -3.0, 1.5])))
    y = np.array([1.0, 0.0, 0.0, 1.0])
    expected = np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert float(rm_losses.pointwise_bce(logits, labels)) == pytest.approx(expected, 1e-6)


def test_accuracies_count_ties_as_half():
    chosen, rejected = jnp.array([1.0, 2.0, 3.0, 0.0]), jnp.array([0.0, 2.0, 4.0, -1.0])
    assert float(rm_losses.pairwise_accuracy(chosen, rejected)) == pytest.approx(2.5 / 4)
    assert float(rm_losses.binary_accuracy(jnp.array([0.3, -1.0, 2.0]),
                                           jnp.array([1.0, 1.0, 0.0]))) == pytest.approx(1 / 3)


def brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_equals_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 5, n).astype(float)  # few values: many ties
        labels = rng.random(n) < 0.4
        if labels.all() or not labels.any():
            labels[0] = not labels[0]
        assert rm_losses.roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))
    assert rm_losses.roc_auc([1.0, 2.0, 3.0], [False, True, True]) == 1.0
    assert rm_losses.roc_auc([5.0, 5.0], [False, True]) == 0.5
    assert np.isnan(rm_losses.roc_auc([1.0, 2.0], [True, True]))


# ---------------------------------------------------------------- data


def test_reward_sequences_are_encoded_like_sft(tmp_path):
    config = load_config("smoke")
    records = list(build_splits(config.data)["train"])[:5]
    from rlaif_jax.data.tokenizer import train_bpe
    tok = train_bpe([sft_data.prompt_text(r, config.data) + sft_data.target_text(r, config.data)
                     for r in records], 400, 1)
    sft = sft_data.encode(records, tok, config.data)
    ours = reward_data.encode_texts([sft_data.prompt_text(r, config.data) for r in records],
                                    [sft_data.target_text(r, config.data) for r in records],
                                    tok, config.data.max_len)
    np.testing.assert_array_equal(ours.input_ids, sft.input_ids)
    np.testing.assert_array_equal(ours.attention_mask, sft.attention_mask)
    assert ours.n_truncated == sft.n_truncated


def test_held_out_prompts_are_a_seeded_fraction():
    keys = [("huggingface", str(i)) for i in range(40)]
    val = reward_data.held_out_prompts(keys, 0.25, seed=0)
    assert len(val) == 10 and val <= set(keys)
    assert val == reward_data.held_out_prompts(reversed(keys), 0.25, seed=0)
    assert val != reward_data.held_out_prompts(keys, 0.25, seed=1)
    assert reward_data.held_out_prompts(keys[:2], 0.01, seed=0).__len__() == 1
    assert reward_data.held_out_prompts(keys, 0.0, seed=0) == set()


def test_fewer_rows_than_a_batch_are_repeated_to_fill_it():
    rows, schedule = reward_data.batch_schedule(np.array([5, 9, 7]), 8, seed=0,
                                                group_by_length=True)
    assert len(rows) == 9 and sorted(set(rows)) == [0, 1, 2]
    for step in range(4):
        batch = rows[schedule.indices(step)]
        assert len(batch) == 8 and set(batch) == {0, 1, 2}


def test_malformed_line_is_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = {"question_id": 1, "hub": "torchhub", "prompt": "p", "chosen": "a", "rejected": "b"}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "chosen": 3}) + "\n")
    with pytest.raises(gorilla.MalformedRecordError, match=r"pairs.jsonl:3: 'chosen' is int"):
        reward_data.read_rows(path, reward_data.PAIR_FIELDS)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(gorilla.MalformedRecordError, match=r"pairs.jsonl:2: invalid JSON"):
        reward_data.read_rows(path, reward_data.PAIR_FIELDS)


# ---------------------------------------------------------------- the stage end to end


def _answer(rec, **replace):
    return gorilla.format_target({**rec, **replace}, SECTIONS)


def write_feedback(workdir, config):
    """Labels and pairs for the train + validation prompts: gold answers beat corrupted ones."""
    splits = build_splits(config.data)
    records = list(splits["train"]) + list(splits["validation"])
    labels, pairs = [], []
    for i, rec in enumerate(records):
        gold = _answer(rec)
        if i % 3 == 0:  # the api_call of another hub's record: contradicts the provider line
            others = [r for r in records if r["hub"] != rec["hub"]]
            bad = _answer(rec, api_call=others[i % len(others)]["api_call"])
        elif i % 3 == 1:  # the gold answer cut short in its api_call line
            bad = gold[:gold.index("<<<api_call>>>") + len("<<<api_call>>>: ") + 4]
        else:  # the gold answer cut after the domain: no api_call, no provider
            bad = gold[:gold.index("<<<api_call>>>")].rstrip()
        prompt = sft_data.prompt_text(rec, config.data)
        base = {"question_id": int(rec["question_id"]), "hub": rec["hub"],
                "source": rec["source"], "instruction": rec["instruction"], "prompt": prompt}
        for k, (text, score) in enumerate([(gold, 8.0), (bad, 3.0)]):
            labels.append({**base, "split": "train", "sample_index": k, "text": text,
                           "answers": {}, "p_yes": {}, "hard_score": int(score),
                           "soft_score": None, "score": score, "acceptable": score >= 6,
                           "judge": "synthetic-test", "rubric": "none"})
        pairs.append({**base, "chosen": gold, "rejected": bad, "chosen_score": 8.0,
                      "rejected_score": 3.0, "margin": 5.0})
    out = workdir / "feedback"
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    (out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))


@pytest.fixture(scope="module")
def sft_workdir(tmp_path_factory):
    """A short smoke SFT run (the RM only needs its trunk) with synthetic feedback."""
    workdir = tmp_path_factory.mktemp("rm_sft")
    cli("sft", *FAST, "--config.sft.steps=6", "--config.sft.eval_every=6",
        "--config.sft.warmup_steps=2", "--workdir", workdir)
    write_feedback(workdir, load_config("smoke"))
    return workdir


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("metrics", "summaries", "logs"))
    return dst


@pytest.fixture(scope="module")
def pairwise_run(sft_workdir, tmp_path_factory):
    workdir = _copy(sft_workdir, tmp_path_factory.mktemp("rm") / "w")
    cli("reward", *RM_ARGS, "--workdir", workdir)
    return workdir


def rm_config(**overrides):
    """The config of RM_ARGS, with config.reward `overrides`, for in-process runs."""
    config = load_config("smoke")
    config.data.length_bucket = 0
    config.reward.update({"steps": 20, "validation_fraction": 0.25, "eval_every": 10,
                          "log_every": 1, **overrides})
    config.checkpoint.every_steps = 10
    return config


def final_params(workdir):
    config = load_config("smoke")
    _, params = load_reward_params(workdir, make_mesh(config.mesh), config.mesh.fsdp_min_size)
    return jax.device_get(params)


def test_pairwise_rm_learns_gold_over_corrupted(pairwise_run):
    w = pairwise_run
    summary = json.loads((w / "summaries" / "reward.json").read_text())
    assert summary["steps"] == 20 and summary["loss_type"] == "pairwise"
    assert summary["val_pairs"] >= 20 and summary["train_pairs"] >= 60
    assert summary["train_candidates"] == 2 * summary["train_pairs"]
    assert summary["val_pairwise_accuracy"] >= 0.7  # measured: 0.857 (0.571 before training)
    assert summary["val_pairwise_accuracy"] > summary["initial_val_pairwise_accuracy"] + 0.1
    assert summary["val_auc"] >= 0.7  # measured: 0.871
    rows = read_metrics(w / "metrics" / "reward.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert [r["step"] for r in rows if "val_auc" in r] == [0, 10, 20]
    lrs = [r["lr"] for r in rows if "lr" in r]  # warmup from 0, peak reward.lr, cosine decay
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(load_config("smoke").reward.lr)

    # The exported scorer gives the same score to a left-padded prompt + right-padded
    # response as to the plain right-padded sequence the RM was trained on.
    config = load_config("smoke")
    model, params = load_reward_params(w, make_mesh(config.mesh), config.mesh.fsdp_min_size)
    score = jax.jit(make_score_fn(model))
    tok = load_tokenizer(w / "tokenizer")
    pair = json.loads((w / "feedback" / "pairs.jsonl").read_text().splitlines()[0])
    p = tok(pair["prompt"], add_special_tokens=False)["input_ids"]
    r = tok(pair["chosen"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    pad = tok.pad_token_id
    plain = np.array([p + r + [pad] * 5])
    shifted = np.array([[pad] * 3 + p + r + [pad] * 2])
    a = score(params, plain, (plain != pad).astype(np.int32))
    b = score(params, shifted, (shifted != pad).astype(np.int32))
    assert a.shape == (1,) and a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_resume_with_a_different_config_is_refused(pairwise_run):
    with pytest.raises(ValueError, match="different reward.batch_size"):
        reward.train(rm_config(batch_size=4), pairwise_run)


def _wait_for_step(proc, metrics, step, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}:\n{proc.stdout.read()}")
        if metrics.exists():
            done = [r.get("step", 0) for r in read_metrics(metrics) if "loss" in r]
            if done and max(done) >= step:
                return
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def test_sigterm_then_resume_equals_uninterrupted(sft_workdir, pairwise_run, tmp_path):
    w = _copy(sft_workdir, tmp_path / "w")
    proc = subprocess.Popen([sys.executable, "-m", "rlaif_jax.cli", "reward", *RM_ARGS,
                             "--workdir", str(w)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for_step(proc, w / "metrics" / "reward.jsonl", 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    stopped_at = max(int(d.name) for d in (w / "checkpoints" / "reward").iterdir()
                     if d.name.isdigit())
    assert 2 <= stopped_at < 20  # SIGTERM saved a checkpoint at the step it stopped after
    out = cli("reward", *RM_ARGS, "--workdir", w)
    assert f"Resumed the reward model from step {stopped_at}" in out.stderr
    a, b = final_params(pairwise_run), final_params(w)
    assert max(float(np.max(np.abs(x - y)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))) == 0.0
    s1 = json.loads((pairwise_run / "summaries" / "reward.json").read_text())
    s2 = json.loads((w / "summaries" / "reward.json").read_text())
    for key in ("val_pairwise_accuracy", "val_auc", "initial_val_pairwise_accuracy", "loss"):
        assert s2[key] == s1[key]
    steps = [r["step"] for r in read_metrics(w / "metrics" / "reward.jsonl") if "loss" in r]
    assert steps == list(range(1, 21))


def test_pointwise_reports_auc(sft_workdir, tmp_path):
    w = _copy(sft_workdir, tmp_path / "w")
    (w / "feedback" / "pairs.jsonl").unlink()  # pointwise needs the labels only
    summary = reward.train(rm_config(loss="pointwise"), w)
    assert summary["loss_type"] == "pointwise" and summary["val_pairs"] == 0
    assert np.isnan(summary["val_pairwise_accuracy"])
    assert summary["val_candidates"] >= 40 and summary["train_candidates"] >= 120
    assert summary["val_auc"] >= 0.7  # measured: 0.774
    assert json.loads((w / "summaries" / "reward.json").read_text())["val_auc"] == \
        summary["val_auc"]


def test_missing_or_empty_pairs_give_clear_errors(sft_workdir, tmp_path):
    w = _copy(sft_workdir, tmp_path / "w")
    (w / "feedback" / "pairs.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"pairs.jsonl not found.*rlaif-jax label"):
        reward.train(rm_config(), w)
    (w / "feedback" / "pairs.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"no preference pairs.*reward.loss=pointwise"):
        reward.train(rm_config(), w)
    (w / "feedback" / "labels.jsonl").write_text('{"question_id": 1}\n')
    with pytest.raises(gorilla.MalformedRecordError, match=r"labels.jsonl:1: missing key 'hub'"):
        reward.train(rm_config(loss="pointwise"), w)
