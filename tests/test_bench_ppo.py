"""benchmarks/bench_ppo.py: our PPO side on a very short run, TRL's side when TRL is installed,
and the result record when it is not (the CI case).

Both sides run in this process (the benchmark itself gives each its own subprocess) on a small
shape: tiny model, 4 prompts of 16 tokens, 8 response tokens, one epoch of two minibatches.
"""

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_ppo, common  # noqa: E402

SPEC = bench_ppo.Spec("tiny", batch=4, minibatch=2, epochs=1, response_len=8, prompt_len=16,
                      iters=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tokenizer, the random HF policy / reward directories and the prompt rows of SPEC."""
    import numpy as np

    d = tmp_path_factory.mktemp("bench_ppo")
    texts = bench_ppo.train_prompts()
    tokenizer = bench_ppo.build_tokenizer(texts, d / "tokenizer")
    paths = bench_ppo.build_models(SPEC, tokenizer, d)
    prompts = bench_ppo.prompt_rows(tokenizer, texts, SPEC.prompt_len)
    assert prompts.shape == (len(texts), SPEC.prompt_len)
    assert np.all(prompts[:, -1] != tokenizer.pad_token_id)  # left-padded: every row ends in text
    return d, paths, prompts, tokenizer


@pytest.fixture(scope="module")
def ours(inputs):
    d, paths, _, _ = inputs
    return bench_ppo.run_ours(SPEC, paths, d / "ours", compile_cache=True)


def test_our_side_runs_fixed_length_iterations(ours, inputs):
    import transformers

    _, paths, _, _ = inputs
    its = ours["iterations"]
    assert len(its) == 1 + SPEC.iters
    for it in its:
        # Random weights never end a whole batch early: every step of the response ran.
        assert it["response_width"] == SPEC.response_len
        assert it["rollout_s"] > 0 and it["update_s"] > 0
        assert it["total_s"] == pytest.approx(it["rollout_s"] + it["update_s"])
    # The imported policy is the HF model, parameter for parameter (tied head counted once).
    hf = transformers.AutoModelForCausalLM.from_pretrained(paths["policy"])
    assert ours["params"] == sum(p.numel() for p in hf.parameters())
    # The reward model: the same trunk plus a [n_embd, 1] head with its bias.
    assert ours["reward_params"] == ours["params"] + hf.config.n_embd + 1


def test_result_records_trl_as_not_installed(ours, tmp_path, monkeypatch):
    result = bench_ppo.build_result([(SPEC, ours, None)], quick=True, compile_cache=True,
                                    trl_version=None, other_cores=0.1)
    main, times = result["tables"]
    assert all(len(row) == len(main["columns"]) for row in main["rows"])
    assert main["rows"][0][2] == "rlaif_jax" and "not installed" in main["rows"][1][2]
    assert result["targets"] == [] and "tiny_ratio" not in result["headline"]
    assert result["headline"]["tiny_ours_s_per_iter"] == pytest.approx(
        bench_ppo.side_stats(ours)["total_s"], abs=1e-3)
    assert any("not installed" in note for note in result["notes"])
    assert not any("NOT an idle machine" in note for note in result["notes"])
    assert len(times["rows"]) == 1
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    written = json.loads(common.write_result("ppo", result).read_text())
    assert written["benchmark"] == "ppo" and written["quick"] is True
    assert {"machine", "versions", "tables", "headline", "targets", "notes"} <= set(written)


def test_trl_side_and_ratio(ours, inputs):
    assert bench_ppo.trl_status() is not None, "trl is in the test extra: pip install -e '.[test]'"
    d, paths, prompts, _ = inputs
    trl = bench_ppo.run_trl(SPEC, paths, prompts, d / "trl")
    assert trl["version"] == bench_ppo.TRL_VERSION
    assert trl["params"] == ours["params"]
    for it in trl["iterations"]:
        assert it["response_width"] == SPEC.response_len
        assert 0 < it["generate_s"] < it["rollout_s"] < it["total_s"]
        assert 0 <= it["gc_s"] < it["total_s"]
    peak = 1e11  # a machine with a 100 GFLOP/s fp32 matmul
    result = bench_ppo.build_result([(SPEC, ours, trl)], quick=True, compile_cache=True,
                                    trl_version=trl["version"], other_cores=1.5, peak=peak)
    ratio = bench_ppo.side_stats(trl)["total_s"] / bench_ppo.side_stats(ours)["total_s"]
    assert result["headline"]["tiny_ratio"] == round(ratio, 2)
    (target,) = result["targets"]
    assert target["met"] == (ratio >= bench_ppo.TARGET_RATIO)
    assert any("NOT an idle machine" in note for note in result["notes"])
    # What 3x would take: our iteration's FLOPs in a third of TRL's time, against the peak.
    need = bench_ppo.iteration_flops(SPEC, "ours") * 3 / bench_ppo.side_stats(trl)["total_s"]
    assert result["headline"]["tiny_target_needs_peak_share"] == round(need / peak, 2)
    assert result["headline"]["matmul_fp32_gflops"] == 100.0
    (note,) = [n for n in result["notes"] if "x TRL means" in n]
    assert f"{need / 1e9:.0f} GFLOP/s = {need / peak:.0%} of this machine" in note


def test_iteration_flops_follow_the_passes():
    import dataclasses

    ours, trl = (bench_ppo.iteration_flops(SPEC, side) for side in ("ours", "trl"))
    more = dataclasses.replace(SPEC, epochs=SPEC.epochs + 1)
    extra_ours = bench_ppo.iteration_flops(more, "ours") - ours
    extra_trl = bench_ppo.iteration_flops(more, "trl") - trl
    # An epoch: 3 x (2 trunks over every position + the LM head), TRL's head at every position.
    d, n_layer = bench_ppo.SIZES["tiny"]["n_embd"], bench_ppo.SIZES["tiny"]["n_layer"]
    seq = SPEC.prompt_len + SPEC.response_len
    trunk = 2 * 12 * n_layer * d * d + 4 * n_layer * d * seq
    head = 2 * d * bench_ppo.VOCAB
    assert extra_trl == pytest.approx(SPEC.batch * 3 * (2 * seq * trunk + seq * head))
    assert extra_trl - extra_ours == pytest.approx(SPEC.batch * 3 * SPEC.prompt_len * head)
    assert 0 < ours and 0 < trl


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        bench_ppo.Spec("tiny", batch=6, minibatch=4)
    with pytest.raises(ValueError, match="unknown size"):
        bench_ppo.Spec("huge")
