"""benchmarks/bench_train.py: the model-FLOPs formula against a hand count and XLA's own count,
and one real --quick run (both sides train the same tokens, losses agree, the result schema)."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_train  # noqa: E402

from rlaif_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel  # noqa: E402


def hand_count(L, D, V, T):
    """Training FLOPs per token, matmul by matmul: (in, out) multiply-adds per token, forward."""
    per_layer = [(D, 3 * D),   # c_attn
                 (D, D),       # attn c_proj
                 (D, 4 * D),   # mlp c_fc
                 (4 * D, D),   # mlp c_proj
                 (T, D),       # q . k over T keys, all heads
                 (T, D)]       # probs . v
    macs = L * sum(a * b for a, b in per_layer) + D * V  # + tied LM head
    return 3 * 2 * macs  # multiply-add = 2 FLOPs; backward = 2x forward


def test_flops_per_token_matches_hand_count_for_tiny():
    # configs/tiny.py: 4 layers, 128 wide, vocab 4096, 512 positions.
    assert bench_train.train_flops_per_token(4, 128, 4096, 512) == hand_count(4, 128, 4096, 512)
    assert hand_count(4, 128, 4096, 512) == 6 * (786_432 + 524_288) + 3_145_728


def test_forward_flops_close_to_xla_cost_analysis():
    """A third of the formula (the forward) is the dots XLA counts, give or take the
    elementwise work the formula leaves out."""
    L, D, V, T, B = 2, 64, 512, 32, 2
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=T, n_embd=D, n_layer=L,
                                       n_head=4))
    ids = jnp.zeros((B, T), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), ids)["params"]
    cost = jax.jit(lambda p: model.apply({"params": p}, ids).logits).lower(params).compile()
    analysis = cost.cost_analysis()
    xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    ours = bench_train.train_flops_per_token(L, D, V, T) * B * T / 3
    assert ours <= xla <= 1.15 * ours, (ours, xla)


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_train")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--quick", "--repeats", "2",
         "--no-xla-variants", "--results-dir", str(out), "--profile", str(out / "trace")],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "train.json").read_text())


def test_quick_run_schema(quick_result):
    r = quick_result
    assert r["benchmark"] == "train" and r["quick"] is True
    for key in ("title", "machine", "versions", "tables", "headline", "targets", "notes"):
        assert key in r, key
    for table in r["tables"]:
        assert table["rows"], table["title"]
        assert all(len(row) == len(table["columns"]) for row in table["rows"]), table["title"]
    names = {t["name"] for t in r["targets"]}
    assert any("vs PyTorch" in n for n in names) and any("MFU" in n for n in names)
    for t in r["targets"]:
        assert t["met"] == (t["value"] >= t["target"])
    assert all(isinstance(n, str) for n in r["notes"])


def test_quick_run_profiles_every_shape(quick_result):
    """--profile: per shape, one table of XLA kernel time by model part and one of PyTorch's
    self CPU time by op kind, shares adding up to 1 (no kernel counted twice), the attention
    core and the matmuls among the parts on both sides."""
    shapes = quick_result["raw"]["shapes"]
    profiles = [t for t in quick_result["tables"] if "step profile" in t["title"]]
    assert len(profiles) == 2 * len(shapes)
    for name in shapes:
        (ours,) = [t for t in profiles if t["title"].startswith(f"JAX fp32 step profile ({name}:")]
        (theirs,) = [t for t in profiles if t["title"].startswith(f"PyTorch fp32 step profile ({name}:")]
        for table in (ours, theirs):
            assert sum(row[2] for row in table["rows"]) == pytest.approx(1, abs=0.01)
        parts = {row[0]: row[1] for row in ours["rows"]}
        assert parts["attention core (QK^T, mask, softmax, PV)"] > 0
        assert parts["dense layers (c_attn, c_proj, c_fc)"] > 0
        parts = {row[0]: row[1] for row in theirs["rows"]}
        assert parts["attention core (SDPA forward + backward)"] > 0
        assert parts["matmuls (dense layers + LM head)"] > 0
        assert any(n.startswith(f"Profile of the JAX fp32 step, {name}:") for n in quick_result["notes"])
        assert any(n.startswith(f"{name}, by profile: the attention core takes")
                   for n in quick_result["notes"])


def test_quick_run_both_sides_train_the_same_tokens(quick_result):
    steps = quick_result["raw"]["steps"]
    pairs = {}
    for row in steps:
        pairs.setdefault((row["shape"], row["dtype"], row["batch"], row["seq"]), {})[row["side"]] = row
    compared = [p for p in pairs.values() if len(p) == 2]
    assert compared, "no configuration ran on both sides"
    for p in compared:
        jx, pt = p["rlaif_jax"], p["pytorch"]
        assert jx["tokens_per_step"] == pt["tokens_per_step"] == jx["batch"] * jx["seq"]
        assert jx["steps"] == pt["steps"] == len(jx["losses"]) == len(pt["losses"])
        # Same weights, batch and update: the same losses, step by step (bf16 looser).
        tol = 1e-3 if jx["dtype"] == "float32" else 5e-2
        assert max(abs(a - b) for a, b in zip(jx["losses"], pt["losses"])) < tol
    # The warmup's first learning rate is 0; the third step's loss shows an update happened.
    fp32 = [p["rlaif_jax"] for p in compared if p["rlaif_jax"]["dtype"] == "float32"]
    assert fp32 and all(r["steps"] >= 3 and r["losses"][-1] < r["losses"][0] for r in fp32)


def test_quick_run_speedup_is_paired_by_round(quick_result):
    """The speedup against PyTorch is the median of per-round ratios of steps timed in turns;
    the target quotes it."""
    steps, targets = quick_result["raw"]["steps"], quick_result["targets"]
    for jx in (r for r in steps if r["side"] == "rlaif_jax" and r["dtype"] == "float32"):
        v = jx["speedup_vs_pytorch"]
        assert v["rounds"] == jx["steps"] - 1 == 2  # --repeats 2, after the untimed first step
        assert 0 < v["min"] <= v["median"] <= v["max"]
        (target,) = [t for t in targets if t["name"] == f"SFT step vs PyTorch, fp32, {jx['shape']}"]
        assert target["value"] == pytest.approx(v["median"], abs=1e-3)


def test_quick_run_mfu_target_uses_the_peak_timed_in_the_same_rounds(quick_result):
    """The MFU target divides the step's FLOP rate by the LM-head products' rate timed in the
    same rounds as the step: per round, then the median."""
    steps, targets = quick_result["raw"]["steps"], quick_result["targets"]
    (jx,) = [r for r in steps if r["side"] == "rlaif_jax" and r["dtype"] == "float32"]
    mfu = jx["mfu_lm_head_paired"]
    assert mfu["rounds"] == 2 and 0 < mfu["min"] <= mfu["median"] <= mfu["max"] < 2
    (target,) = [t for t in targets if t["name"].startswith("MFU vs matmul peak at the LM-head")]
    assert target["value"] == pytest.approx(mfu["median"], abs=1e-3)
    assert quick_result["headline"][f"{jx['shape']}_fp32_mfu_lm_head"] == target["value"]
    # The bf16 rows have no paired peak (the target is fp32).
    assert all("mfu_lm_head_paired" not in r for r in steps if r["dtype"] != "float32")


def test_xla_variants_compare_against_the_mean_of_the_default_rows():
    """The default flags run first and last; each variant is divided by their mean, so the
    machine's drift over the variants' minutes does not count against the first ones."""
    def row(flag, tps):
        return {"flag": flag, "accepted": tps is not None, "tokens_per_s": tps,
                "matmul_fp32_gflops": 1.0, "matmul_bf16_gflops": 1.0,
                "error": None if tps else "rejected"}

    variants = [row(None, 100.0), row("--a", 132.0), row("--bad", None), row(None, 120.0)]
    peaks = {"square": {"float32": 1e11, "bfloat16": 1e10},
             "torch_square": {"float32": 1e11, "bfloat16": 1e9}, "lm_head": {}}
    args = type("Args", (), {"quick": False})
    result = bench_train.build_result(args, peaks, [], [], None, variants, {"tiny": {}}, None)
    (table,) = [t for t in result["tables"] if t["title"].startswith("XLA_FLAGS variants")]
    vs_default = {row[0] + str(i): row[3] for i, row in enumerate(table["rows"])}
    assert vs_default == {"(default)0": pytest.approx(100 / 110, abs=1e-3), "--a1": 1.2,
                          "--bad2": None, "(default)3": pytest.approx(120 / 110, abs=1e-3)}
    assert any("--bad" in n for n in result["notes"])


def test_quick_run_times_both_steps_without_their_attention(quick_result):
    """Each fp32 shape also times both steps with the attention core replaced, in the same
    rounds; the table, note and headline quote those rounds."""
    steps = quick_result["raw"]["steps"]
    (jx,) = [r for r in steps if r["side"] == "rlaif_jax" and r["dtype"] == "float32"]
    w = jx["without_attention"]
    assert w["jax_step_ms"] > 0 and w["torch_step_ms"] > 0
    assert w["speedup_vs_pytorch"]["rounds"] == 2
    assert 0 < w["speedup_vs_pytorch"]["min"] <= w["speedup_vs_pytorch"]["median"] <= w["speedup_vs_pytorch"]["max"]
    (table,) = [t for t in quick_result["tables"] if "without the attention core" in t["title"]]
    assert [row[0] for row in table["rows"]] == [jx["shape"]]
    assert quick_result["headline"][f"{jx['shape']}_fp32_speedup_without_attention"] == pytest.approx(
        w["speedup_vs_pytorch"]["median"], abs=1e-3)
    assert any(n.startswith(f"{jx['shape']} fp32: with the attention core replaced") for n in quick_result["notes"])


def test_attention_stand_ins_compute_the_same_thing_on_both_sides(tmp_path):
    """The stand-in core (q + k + v) is the same function in both steps: with it, the two sides'
    losses agree, and differ from the real attention's (which also agree)."""
    from rlaif_jax.models import attention

    shape = dict(bench_train.QUICK_SHAPES["tiny"], batch=2, seq=16)
    bench_train.save_random_gpt2(shape, tmp_path)
    batch = bench_train.make_batch(shape)
    model, params = bench_train.jax_model(tmp_path, shape, "float32")
    real = attention._attend_heads_major
    runs = {"jax bare": bench_train.jax_step_runner_without_attention(model, params, batch),
            "jax": bench_train.jax_step_runner(model, params, batch),
            "torch": bench_train.torch_step_runner(tmp_path, "float32", batch, 3),
            "torch bare": bench_train.torch_step_runner(tmp_path, "float32", batch, 3,
                                                        attention=bench_train.NO_ATTENTION)}
    assert attention._attend_heads_major is real  # restored after compiling the stand-in
    for name in ("jax", "torch", "torch bare"):
        runs[name]()  # step 0 (the bare JAX step's ran when it compiled); lr 0: nothing changes
    loss = {name: run() for name, run in runs.items()}  # step 1, same parameters everywhere
    assert loss["jax"] == pytest.approx(loss["torch"], abs=1e-4)
    assert loss["jax bare"] == pytest.approx(loss["torch bare"], abs=1e-4)
    assert abs(loss["jax bare"] - loss["jax"]) > 1e-3
