"""SFT end to end through the real CLI: learning, sampling, 8-device equality, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from transformers import AutoTokenizer

from conftest import ROOT, cli, load_config
from rlaif_jax.metrics import read_metrics
from rlaif_jax.models.build import load_model_config
from rlaif_jax.models.gpt2 import GPT2LMHeadModel
from rlaif_jax.sample_responses import load_stage_params
from rlaif_jax.sharding import make_mesh

SMOKE = "--config=configs/smoke.py"
EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def final_params(workdir):
    config = load_config("smoke")
    model = GPT2LMHeadModel(load_model_config(workdir, config.model))
    params, step = load_stage_params(workdir, "sft", model, make_mesh(config.mesh),
                                     config.mesh.fsdp_min_size)
    return jax.device_get(params), step


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One default smoke SFT run, shared by the tests that compare against it."""
    workdir = tmp_path_factory.mktemp("smoke")
    cli("sft", SMOKE, "--workdir", workdir)
    return workdir


def _column(workdir, key):
    return [r[key] for r in read_metrics(workdir / "metrics" / "sft.jsonl") if key in r]


def test_sft_learns_and_sample_writes_gorilla_jsonl(smoke_run):
    w = smoke_run
    summary = json.loads((w / "summaries" / "sft.json").read_text())
    assert summary["val_loss"] < summary["unigram_val_loss"]
    resolved = json.loads((w / "config.sft.json").read_text())
    assert resolved["sft"]["steps"] == load_config("smoke").sft.steps
    tok = AutoTokenizer.from_pretrained(str(w / "tokenizer"))
    assert tok.eos_token == "<|endoftext|>"
    rows = read_metrics(w / "metrics" / "sft.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]

    cli("sample", SMOKE, "--workdir", w)
    lines = (w / "samples" / "train.jsonl").read_text().splitlines()
    config = load_config("smoke")
    assert len(lines) == config.sample.max_prompts * config.sample.num_samples
    for line in lines:
        rec = json.loads(line)
        assert isinstance(rec["question_id"], int) and rec["question_id"] >= 1
        assert isinstance(rec["text"], str) and "<|endoftext|>" not in rec["text"]
        assert 1 <= rec["num_tokens"] <= config.sample.max_new_tokens
        assert rec["sample_index"] in range(config.sample.num_samples)
        assert rec["split"] == "train"


def test_eval_scores_the_test_split_from_the_checkpoint(smoke_run):
    cli("eval", SMOKE, "--config.eval.max_prompts=16", "--workdir", smoke_run)
    report = json.loads((smoke_run / "eval" / "sft" / "report.json").read_text())
    assert report["overall"]["n"] == 16
    providers = report["providers"]
    assert set(providers) == {"huggingface/huggingface_eval.json", "torchhub/torchhub_eval.json"}
    for p in providers.values():
        for key in ("ast_accuracy", "hallucination", "rougeL", "codebleu", "executability"):
            assert 0.0 <= p[key] <= 1.0
    full = json.loads((smoke_run / "eval" / "sft" / "report_huggingface_huggingface_eval.json")
                      .read_text())
    assert len(full["records"]) + full["malformed"] == full["n"]


def test_eight_devices_give_the_same_losses_as_one(smoke_run, tmp_path):
    cli("sft", "--config=configs/smoke.py:mesh8", "--workdir", tmp_path / "eight", env_extra=EIGHT)
    for key in ("loss", "val_loss"):
        a, b = _column(smoke_run, key), _column(tmp_path / "eight", key)
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a, b, rtol=1e-5)  # measured: ~1e-7
    s1 = json.loads((smoke_run / "summaries" / "sft.json").read_text())
    s8 = json.loads((tmp_path / "eight" / "summaries" / "sft.json").read_text())
    assert s8["mesh"] == {"data": 4, "fsdp": 2} and s1["mesh"] == {"data": 1, "fsdp": 1}
    # fsdp=2 splits the large matrices in two: each device holds clearly less than all params.
    assert s8["param_bytes_per_device"] < 0.75 * s1["param_bytes_per_device"]


def test_gradient_accumulation_matches_one_big_batch(smoke_run, tmp_path):
    cli("sft", SMOKE, "--config.sft.grad_accum=4", "--workdir", tmp_path)
    for key in ("loss", "grad_norm", "val_loss"):
        np.testing.assert_allclose(_column(smoke_run, key), _column(tmp_path, key), rtol=1e-4)


def _start(workdir, args):
    return subprocess.Popen([sys.executable, "-m", "rlaif_jax.cli", "sft", *args,
                             "--workdir", str(workdir)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for_step(proc, metrics, step, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}:\n{proc.stdout.read()}")
        if metrics.exists():
            done = [r.get("step", 0) for r in read_metrics(metrics) if "loss" in r]
            if done and max(done) >= step:
                return
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout}s")


RESUME_ARGS = [SMOKE, "--config.sft.steps=120", "--config.checkpoint.every_steps=40",
               "--config.sft.log_every=1", "--config.sft.eval_every=60"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference run the interrupted ones must reproduce exactly."""
    workdir = tmp_path_factory.mktemp("straight")
    cli("sft", *RESUME_ARGS, "--workdir", workdir)
    return final_params(workdir)[0]


def test_sigterm_then_resume_equals_uninterrupted(tmp_path, straight):
    proc = _start(tmp_path / "stopped", RESUME_ARGS)
    _wait_for_step(proc, tmp_path / "stopped" / "metrics" / "sft.jsonl", 10)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    _, stopped_at = final_params(tmp_path / "stopped")
    assert 10 <= stopped_at < 120  # SIGTERM saved a checkpoint at the step it stopped after
    out = cli("sft", *RESUME_ARGS, "--workdir", tmp_path / "stopped")
    assert f"Resumed SFT from step {stopped_at}" in out.stderr
    b, step_b = final_params(tmp_path / "stopped")
    assert step_b == 120
    assert max_abs_diff(straight, b) == 0.0
    # The metrics file holds one record per step, as if never interrupted.
    steps = [r["step"] for r in read_metrics(tmp_path / "stopped" / "metrics" / "sft.jsonl")
             if "loss" in r]
    assert steps == list(range(1, 121))


def test_sigkill_resumes_from_last_periodic_checkpoint(tmp_path, straight):
    proc = _start(tmp_path / "killed", RESUME_ARGS)
    _wait_for_step(proc, tmp_path / "killed" / "metrics" / "sft.jsonl", 50)
    proc.kill()
    proc.wait(timeout=60)
    _, last = final_params(tmp_path / "killed")
    assert last in (40, 80)
    out = cli("sft", *RESUME_ARGS, "--workdir", tmp_path / "killed")
    assert f"Resumed SFT from step {last}" in out.stderr
    b, _ = final_params(tmp_path / "killed")
    assert max_abs_diff(straight, b) == 0.0


def test_resume_with_a_different_model_is_refused(tmp_path):
    cli("sft", SMOKE, "--config.sft.steps=8", "--workdir", tmp_path)
    proc = cli("sft", SMOKE, "--config.sft.steps=16", "--config.model.n_layer=3",
               "--workdir", tmp_path, check=False)
    assert proc.returncode != 0 and "different model/tokenizer/data/seed" in proc.stderr
