"""PPO: learning a toy reward, and the `rlaif-jax ppo` stage end to end (CLI, sample, SIGTERM).

The smoke SFT start and the uninterrupted reference run are made in-process (the persistent XLA
cache shares compiled programs with the CLI runs); the interrupted run, its resumption and
sampling from the result go through the real CLI.
"""

import json
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, cli, load_config
from ppo_fixtures import copy_run, make_reward_checkpoint
from rlaif_jax.config import ConfigError, validate
from rlaif_jax.data import sft_data
from rlaif_jax.data.splits import build_splits
from rlaif_jax.metrics import read_metrics
from rlaif_jax.models.build import load_model_config, make_lm
from rlaif_jax.sample_responses import load_stage_params
from rlaif_jax.sharding import make_mesh
from rlaif_jax.train import ppo, sft
from rlaif_jax.train.rollout import HostRewards, PromptSchedule, left_align

SMOKE = "--config=configs/smoke.py"
# 16 prompts in minibatches of 8, so the same run also fits the 8 batch shards of smoke:mesh8.
RUN = {"iterations": 6, "checkpoint_every": 3, "prompts_per_iteration": 16, "minibatch_size": 8}
RUN_ARGS = [SMOKE, *(f"--config.ppo.{k}={v}" for k, v in RUN.items())]
EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A smoke SFT run plus a reward checkpoint."""
    config = load_config("smoke")
    # In-process runs use the persistent XLA cache as the CLI does.
    jax.config.update("jax_compilation_cache_dir",
                      str(pathlib.Path(config.compilation_cache).expanduser()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    workdir = tmp_path_factory.mktemp("ppo_base")
    sft.train(config, workdir)
    make_reward_checkpoint(workdir, config)
    return workdir


def policy_params(workdir):
    config = load_config("smoke")
    model = make_lm(load_model_config(workdir, config.model))
    params, step = load_stage_params(workdir, "ppo", model, make_mesh(config.mesh),
                                     config.mesh.fsdp_min_size)
    return jax.device_get(params), step


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_ppo_increases_a_toy_reward(base, tmp_path):
    """Reward: the fraction of response tokens with an id in the lower half of the vocabulary.

    The barely trained smoke policy starts near 0.5 (a no-op stays there, +-0.02 per iteration
    over ~500 tokens); PPO must raise it clearly within a few iterations. Early stopping is on
    with a threshold only the first, largest Adam steps cross.
    """
    workdir = copy_run(base, tmp_path)
    config = load_config("smoke")
    c = config.ppo
    c.iterations, c.prompts_per_iteration, c.minibatch_size = 10, 16, 8
    c.lr, c.critic, c.lam, c.kl_coef, c.no_eos_penalty = 5e-3, "shared", 1.0, 0.0, 0.0
    c.early_stop_kl, c.checkpoint_every = 0.1, 100
    c.ast_weight = c.exec_ast_weight = 1.0  # host rewards in the loop too (never earned here)
    half = 300

    def lower_half(params, batch):
        m = batch["response_mask"]
        return {"reward": jnp.sum((batch["tokens"] < half) * m, axis=1) / jnp.sum(m, axis=1)}

    summary = ppo.train(config, workdir, ppo.RewardSource(lower_half))
    rows = read_metrics(workdir / "metrics" / "ppo.jsonl")
    rewards = [r["reward"] for r in rows]
    assert len(rewards) == 10
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.15, rewards  # measured: +0.22
    assert summary["final_reward"] == rewards[-1] and summary["initial_reward"] == rewards[0]
    # The policy moved away from the reference and became more certain.
    assert rows[-1]["kl"] > 1.0 and rows[-1]["entropy"] < rows[0]["entropy"]
    # Early stop: an iteration that ran one epoch only did so because its KL blew up.
    epochs = [r["epochs_run"] for r in rows]
    assert 1 in epochs and 2 in epochs
    assert all(r["policy_kl"] > c.early_stop_kl for r in rows if r["epochs_run"] == 1)
    # Recomputed log-probs agree with the sampler's own (temperature 1).
    assert max(r["sampler_logp_gap"] for r in rows) < 1e-4
    assert all(0.0 <= r["ast_rate"] <= 1.0 for r in rows) and "final_ast_rate" in summary
    assert all(r["exec_ast_rate"] <= min(r["exec_rate"], r["ast_rate"]) for r in rows)
    # Resuming this run with other PPO settings is refused (before any work).
    c.lr = 1e-4
    with pytest.raises(ValueError, match="different config"):
        ppo.train(config, workdir, ppo.RewardSource(lower_half))


def test_host_rewards_judge_gold_and_broken_responses():
    config = load_config("smoke")
    train = list(build_splits(config.data)["train"])
    gold = [train[0], train[-1]]
    assert [r["hub"] for r in gold] == ["huggingface", "torchhub"]
    texts = [sft_data.target_text(r, config.data) for r in gold]
    texts += ["<<<domain>>>: x\n<<<api_call>>>: model = foo(", "no sections at all"]
    # The TorchHub gold answer given to the Hugging Face question: it runs, but is the wrong API.
    texts.append(texts[1])
    out = HostRewards(exec_on=True, ast_on=True, exec_timeout=10.0, workers=0)(
        texts, gold + gold + gold[:1])
    assert out["ast"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert out["exec"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]  # no code at all earns nothing
    assert out["exec_ast"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    only_exec = HostRewards(exec_on=True, ast_on=False, exec_timeout=10.0, workers=0)(
        texts[:2], gold)
    assert set(only_exec) == {"exec"}


@pytest.mark.parametrize("key,value,message", [
    ("minibatch_size", 3, "ppo.minibatch_size"),
    ("critic", "both", "ppo.critic"),
    ("max_new_tokens", 200, "ppo.max_new_tokens"),
    ("lam", 1.5, "ppo.lam"),
])
def test_bad_ppo_config_is_rejected_with_the_key_named(key, value, message):
    config = load_config("smoke")
    config.ppo[key] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_prompt_schedule_and_left_align():
    schedule = PromptSchedule(10, 4, seed=3)
    seen = np.concatenate([schedule.indices(i) for i in range(5)])  # 2 passes over 10 prompts
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert list(PromptSchedule(10, 4, seed=3).indices(3)) == list(schedule.indices(3))
    assert not np.array_equal(PromptSchedule(10, 10, seed=3).indices(0),
                              PromptSchedule(10, 10, seed=4).indices(0))
    ids = jnp.array([[0, 0, 5, 6, 7, 0], [8, 9, 1, 2, 0, 0]])
    mask = jnp.array([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    a_ids, a_mask = left_align(ids, mask)
    assert a_ids.tolist() == [[5, 6, 7, 0, 0, 0], [8, 9, 1, 2, 0, 0]]
    assert a_mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]]


ITEMS = ("params", "critic", "policy_opt", "critic_opt", "loop")


def _final_state(workdir):
    """Every item of the latest PPO checkpoint, restored as saved."""
    mngr = ocp.CheckpointManager((workdir / "checkpoints" / "ppo").absolute())
    step = mngr.latest_step()
    items = mngr.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.StandardRestore() for name in ITEMS}))
    mngr.close()
    return {name: items[name] for name in ITEMS}


@pytest.fixture(scope="module")
def straight(base, tmp_path_factory):
    """An uninterrupted PPO run against the reward checkpoint (what `rlaif-jax ppo` runs)."""
    workdir = copy_run(base, tmp_path_factory.mktemp("ppo_straight"))
    config = load_config("smoke")
    config.ppo.update(RUN)
    summary = ppo.train(config, workdir)
    assert summary["iterations"] == 6 and summary["resumed_from"] == 0
    return workdir


def _wait_for_iteration(proc, metrics, iteration, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before iteration {iteration}:\n{proc.stdout.read()}")
        if metrics.exists() and any(r["step"] >= iteration for r in read_metrics(metrics)):
            return
        time.sleep(0.01)
    raise AssertionError(f"iteration {iteration} not reached in {timeout}s")


@pytest.fixture(scope="module")
def resumed(base, tmp_path_factory):
    """The same run through the CLI, stopped by SIGTERM after its first iteration and resumed."""
    w = copy_run(base, tmp_path_factory.mktemp("ppo_resumed"))
    proc = subprocess.Popen([sys.executable, "-m", "rlaif_jax.cli", "ppo", *RUN_ARGS,
                             "--workdir", str(w)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for_iteration(proc, w / "metrics" / "ppo.jsonl", 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    _, stopped_at = policy_params(w)
    assert 1 <= stopped_at < 6  # SIGTERM saved the iteration it stopped after
    out = cli("ppo", *RUN_ARGS, "--workdir", w)
    assert f"Resumed PPO from iteration {stopped_at}" in out.stderr
    assert "PPO done: 6 iterations" in out.stdout
    return w


def test_ppo_cli_writes_metrics_summary_checkpoint_and_sample_uses_it(resumed):
    w = resumed
    rows = read_metrics(w / "metrics" / "ppo.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    for key in ("reward", "rm_score", "kl", "beta", "entropy", "clip_fraction", "pg_loss",
                "vf_loss", "explained_variance", "response_length", "finished_fraction",
                "rollout_tokens_per_s", "update_tokens_per_s", "policy_kl", "epochs_run"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["beta"] == pytest.approx(load_config("smoke").ppo.kl_coef)
    assert rows[-1]["beta"] != rows[0]["beta"]  # the adaptive controller moved it
    assert all(r["epochs_run"] == 2 for r in rows)
    summary = json.loads((w / "summaries" / "ppo.json").read_text())
    assert summary["iterations"] == 6
    assert summary["final_reward"] == rows[-1]["reward"]
    assert summary["initial_reward"] == rows[0]["reward"]
    assert summary["rollout_s"] > 0 and summary["update_s"] > 0

    params, step = policy_params(w)
    assert step == 6 and set(params) == {"transformer"}
    saved = {p.name for p in (w / "checkpoints" / "ppo" / "6").iterdir()}
    assert saved >= {*ITEMS, "meta"}
    items = _final_state(w)
    assert set(items["critic"]) == {"transformer", "value_head"}
    assert int(items["loop"]["iteration"]) == 6

    cli("sample", SMOKE, "--config.sample.checkpoint=ppo", "--workdir", w)
    sc = load_config("smoke").sample
    sample_summary = json.loads((w / "samples" / f"{sc.split}.summary.json").read_text())
    assert sample_summary["checkpoint_step"] == 6
    assert sample_summary["samples"] == sc.max_prompts * sc.num_samples


def test_sigterm_then_resume_equals_uninterrupted(straight, resumed):
    a, b = _final_state(straight), _final_state(resumed)
    for item in ("params", "critic", "policy_opt", "critic_opt"):
        assert max_abs_diff(a[item], b[item]) == 0.0, item
    assert float(a["loop"]["beta"]) == float(b["loop"]["beta"])
    rows = read_metrics(resumed / "metrics" / "ppo.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))  # one row per iteration, as if never stopped
    assert [r["reward"] for r in rows] == [r["reward"] for r in
                                           read_metrics(straight / "metrics" / "ppo.jsonl")]


def test_eight_devices_give_the_same_first_iterations_as_one(base, straight, tmp_path):
    w = copy_run(base, tmp_path)
    cli("ppo", "--config=configs/smoke.py:mesh8", *RUN_ARGS[1:], "--config.ppo.iterations=2",
        "--workdir", w, env_extra=EIGHT)
    eight = read_metrics(w / "metrics" / "ppo.jsonl")
    one = read_metrics(straight / "metrics" / "ppo.jsonl")[:2]
    assert json.loads((w / "summaries" / "ppo.json").read_text())["mesh"] == {"data": 4, "fsdp": 2}
    for key in ("reward", "rm_score", "kl", "pg_loss", "vf_loss", "entropy", "clip_fraction",
                "policy_kl", "explained_variance", "response_length"):
        np.testing.assert_allclose([r[key] for r in eight], [r[key] for r in one], rtol=1e-4,
                                   atol=1e-6, err_msg=key)


def test_trim_responses_rounds_the_longest_response_up_to_the_bucket():
    gen = {"tokens": jnp.zeros((2, 256), jnp.int32), "logprobs": jnp.zeros((2, 256)),
           "lengths": jnp.array([3, 70]), "done": jnp.array([True, True])}
    assert ppo.trim_responses(gen, 70, 64)["tokens"].shape == (2, 128)
    assert ppo.trim_responses(gen, 64, 64)["logprobs"].shape == (2, 64)
    assert ppo.trim_responses(gen, 0, 64)["tokens"].shape == (2, 64)
    assert ppo.trim_responses(gen, 250, 64)["tokens"].shape == (2, 256)
    assert ppo.trim_responses(gen, 70, 0)["tokens"].shape == (2, 256)
    assert ppo.trim_responses(gen, 70, 64)["lengths"].shape == (2,)


def test_untrimmed_update_gives_the_same_iterations(base, tmp_path, monkeypatch):
    """`ppo.response_bucket=0` scores and updates over all max_new_tokens columns; a bucket cuts
    the padding past the longest response. Both must learn the same thing.

    The barely trained smoke policy never emits EOS within 32 tokens, so the real sampler is
    wrapped to end each response early (as if EOS came at length 3..9) to leave padding.
    """
    real = ppo.make_generate_fn

    def early_eos(model, sampling, prompt_len, **kw):
        generate = real(model, sampling, prompt_len, **kw)

        def wrapped(params, ids, mask, rng):
            gen = generate(params, ids, mask, rng)
            n = gen["tokens"].shape[1]
            lengths = jnp.minimum(gen["lengths"], 3 + jnp.arange(ids.shape[0]) % 7)
            keep = jnp.arange(n)[None, :] < lengths[:, None]
            return dict(gen, lengths=lengths, done=jnp.ones_like(gen["done"]),
                        tokens=jnp.where(keep, gen["tokens"], sampling.pad_id),
                        logprobs=jnp.where(keep, gen["logprobs"], 0.0))
        return wrapped

    monkeypatch.setattr(ppo, "make_generate_fn", early_eos)
    runs = {}
    for bucket in (0, 8):
        w = copy_run(base, tmp_path / str(bucket))
        config = load_config("smoke")
        config.ppo.update(RUN)
        config.ppo.iterations, config.ppo.response_bucket = 2, bucket
        ppo.train(config, w)
        runs[bucket] = read_metrics(w / "metrics" / "ppo.jsonl")
    full, trimmed = runs[0], runs[8]
    assert [r["response_width"] for r in full] == [32, 32]
    assert [r["response_width"] for r in trimmed] == [16, 16]  # longest response 9 -> 16
    for key in ("reward", "kl", "pg_loss", "vf_loss", "entropy", "clip_fraction", "policy_kl",
                "explained_variance", "response_length"):
        np.testing.assert_allclose([r[key] for r in full], [r[key] for r in trimmed], rtol=1e-4,
                                   atol=1e-6, err_msg=key)
