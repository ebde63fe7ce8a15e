"""SFT train step: rlaif_jax against a plain PyTorch step, and model FLOPs utilisation (MFU).

    python benchmarks/bench_train.py [--quick] [--profile DIR]

What runs on each side, for the same GPT-2 (a random `transformers.GPT2LMHeadModel` saved once;
the JAX side imports it with `rlaif_jax.models.hf_import`, so both start from the same weights),
the same batch (random token ids, every position attended and trained on), dropout off:

* JAX: the SFT stage's own jitted step, `rlaif_jax.train.sft.make_train_step` with the stage's
  optimizer (`train/optim.py`: global-norm clipping, AdamW with warmup + cosine, weight decay on
  matrices), state donated, one micro-batch.
* PyTorch: `GPT2LMHeadModel(input_ids, attention_mask, labels)` -> `loss.backward()` ->
  `clip_grad_norm_` -> `torch.optim.AdamW` (same betas, eps, decay on matrices only) with the same
  learning-rate schedule, `torch.set_num_threads(os.cpu_count())`. bf16 = `torch.autocast("cpu",
  torch.bfloat16)`; on the JAX side the model's `dtype="bfloat16"` (fp32 parameters, bf16
  compute), the same mixed-precision recipe.

Both sides run the same steps on the same batch; their losses are recorded step by step (equal
to float tolerance in fp32: same model, same update). The two sides' steps are timed in turns
(`common.alternating`: this machine's speed drifts by 2-4x over seconds); the speedup against
PyTorch, and the target, is the median over rounds of that round's PyTorch step / JAX step.
In the fp32 rounds both steps also run with their attention core replaced by the same stand-in
(``q + k + v``: `_jax_mix_core`, `_torch_mix_core`), so that a step minus its stand-in step is
what the attention core costs that side, measured untraced, and the stand-in steps compare the
rest of the two steps.

Model FLOPs per trained token (PaLM appendix B convention; bias, LayerNorm, softmax and
elementwise work are not counted, attention is counted over all T keys, not T/2):

    6 * (12 * L * D^2 + V * D)  +  12 * L * T * D

(12 L D^2 = the four weight matrices of each block, V D = the tied LM head; x2 for a multiply-add,
x3 for forward + both backward matmuls; 12 L T D = QK^T and PV). MFU = model FLOPs/s over the
measured matmul peak: `jnp.dot` of large square matrices in the same dtype, timed in this run,
and the peak at the step's largest matmuls (the LM head's forward, input-gradient and
weight-gradient products for B*T rows).

`--xla-variants` (on by default) re-runs the JAX fp32 step in subprocesses with XLA_FLAGS
variants and records which flags XLA accepted and their effect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

# The shapes compared. "tiny" is configs/tiny.py's model and SFT batch; "medium" a wider, deeper
# model at a shorter sequence so that the comparison is not dominated by per-op overhead.
SHAPES = {
    "tiny": dict(n_layer=4, n_embd=128, n_head=4, vocab=4096, batch=16, seq=512),
    "medium": dict(n_layer=6, n_embd=512, n_head=8, vocab=4096, batch=8, seq=256),
}
QUICK_SHAPES = {"tiny": dict(SHAPES["tiny"], batch=8, seq=128)}
# configs/tiny.py's SFT optimizer settings (the rest are config.base_config defaults).
OPTIM = dict(lr=2e-3, warmup_steps=20, steps=300, min_lr_ratio=0.1, weight_decay=0.01, b1=0.9,
             b2=0.95, eps=1e-8, clip_norm=1.0)
# XLA flags measured one at a time (each in its own process).
XLA_VARIANTS = (
    "--xla_cpu_use_thunk_runtime=false",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_experimental_ynn_fusion_type=",  # YNNPACK fusions off: Eigen's dots and loops
)


def train_flops_per_token(n_layer: int, n_embd: int, vocab: int, seq: int) -> int:
    """Model FLOPs of one training step per token (formula in the module docstring)."""
    return 6 * (12 * n_layer * n_embd ** 2 + vocab * n_embd) + 12 * n_layer * seq * n_embd


def lm_head_matmuls(rows: int, n_embd: int, vocab: int) -> dict[str, tuple[int, int, int]]:
    """(M, K, N) of the three LM-head products of a training step over `rows` tokens: the
    step's largest matmuls."""
    return {"lm_head_fwd": (rows, n_embd, vocab),       # logits = h @ wte^T
            "lm_head_dx": (rows, vocab, n_embd),        # dh = dlogits @ wte
            "lm_head_dw": (vocab, rows, n_embd)}        # dwte = dlogits^T @ h


# --- matmul peak ---------------------------------------------------------------------------


def torch_matmul_flops(m: int, k: int, n: int, dtype: str, repeats: int) -> float:
    import torch

    g = torch.Generator().manual_seed(0)
    tdt = getattr(torch, dtype)
    a = torch.randn(m, k, generator=g).to(tdt)
    b = torch.randn(k, n, generator=g).to(tdt)
    t = common.median_time(lambda: torch.mm(a, b), repeats=repeats)["median_s"]
    return 2 * m * k * n / t


# --- the two training steps ------------------------------------------------------------------


def save_random_gpt2(shape: dict, directory: pathlib.Path, seed: int = 0) -> None:
    import torch
    import transformers

    cfg = transformers.GPT2Config(
        vocab_size=shape["vocab"], n_positions=shape["seq"], n_embd=shape["n_embd"],
        n_layer=shape["n_layer"], n_head=shape["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(directory))


def make_batch(shape: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, shape["vocab"], (shape["batch"], shape["seq"]), dtype=np.int32)
    ones = np.ones_like(ids)
    return {"input_ids": ids, "attention_mask": ones, "loss_mask": ones}


def optim_config():
    from ml_collections import ConfigDict
    return ConfigDict(OPTIM)


def lr_values(n: int) -> np.ndarray:
    """The stage's learning rate at steps 0..n-1 (for PyTorch's scheduler)."""
    from rlaif_jax.train.optim import lr_schedule
    sched = lr_schedule(optim_config())
    return np.array([float(sched(i)) for i in range(n)])


def jax_model(model_dir: pathlib.Path | None, shape: dict, dtype: str):
    """(model, params on device): imported from `model_dir`, or randomly initialised."""
    import jax
    import jax.numpy as jnp

    from rlaif_jax.models import hf_import
    from rlaif_jax.models.build import make_lm
    from rlaif_jax.models.gpt2 import GPT2Config

    if model_dir is not None:
        cfg, params = hf_import.load_lm(model_dir, dtype=dtype, dropout=0.0)
        return make_lm(cfg), jax.device_put(params)
    cfg = GPT2Config(vocab_size=shape["vocab"], n_positions=shape["seq"], n_embd=shape["n_embd"],
                     n_layer=shape["n_layer"], n_head=shape["n_head"], dtype=dtype)
    model = make_lm(cfg)
    return model, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]


def jax_step_runner(model, params, batch: dict):
    """A zero-argument callable running one JAX SFT step (blocking) and returning its loss."""
    import jax
    import jax.numpy as jnp

    from rlaif_jax.train.optim import make_optimizer
    from rlaif_jax.train.sft import make_train_step

    optimizer = make_optimizer(optim_config())
    params = jax.tree.map(jnp.copy, params)  # the state is donated: the caller keeps its params
    state = {"params": params, "opt_state": optimizer.init(params),
             "loop": {"step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(0)}}
    step = jax.jit(make_train_step(model, optimizer, deterministic=True), donate_argnums=(0,))
    device_batch = {k: jnp.asarray(v[None]) for k, v in batch.items()}  # one micro-batch

    def run():
        nonlocal state
        state, metrics = step(state, device_batch)
        jax.block_until_ready(state)
        return float(metrics["loss"])

    run.hlo_text = lambda: step.lower(state, device_batch).compile().as_text()
    return run


def jax_breakdown(model, params, batch: dict, repeats: int) -> dict:
    """Median seconds of the loss's forward pass alone and of forward + backward (the step's
    loss, same batch), to split a step's time into forward, backward and optimizer."""
    import jax
    import jax.numpy as jnp

    from rlaif_jax.train.losses import next_token_nll

    b = {k: jnp.asarray(v) for k, v in batch.items()}

    def loss(p):
        logits = model.apply({"params": p}, b["input_ids"], attention_mask=b["attention_mask"],
                             deterministic=True).logits
        nll, n = next_token_nll(logits, b["input_ids"], b["loss_mask"])
        return nll / n

    fwd, fwd_bwd = jax.jit(loss), jax.jit(jax.value_and_grad(loss))
    return {"forward_s": common.median_time(lambda: jax.block_until_ready(fwd(params)),
                                            repeats=repeats)["median_s"],
            "forward_backward_s": common.median_time(
                lambda: jax.block_until_ready(fwd_bwd(params)), repeats=repeats)["median_s"]}


# The attention core removed from both steps, to time what it costs each side (fp32 rows): an
# elementwise mix of the queries, keys and values stands in for it, so the projections around it
# and their gradients still run.
NO_ATTENTION = "bench_no_attention"


def _jax_mix_core(q, kt, vt, key_valid, **_):
    """Stand-in for ``models.attention._attend_heads_major`` (GPT-2: as many key/value heads as
    query heads): ``q + k + v`` per position and head, [B, T, H, Dh]."""
    return q + (kt + vt).transpose(0, 2, 1, 3).astype(q.dtype)


def _torch_mix_core(module, query, key, value, attention_mask, **_):
    """The same stand-in as a transformers attention function ([B, H, T, Dh] in, [B, T, H, Dh]
    out, no weights)."""
    return (query + key + value).transpose(1, 2).contiguous(), None


def jax_step_runner_without_attention(model, params, batch: dict):
    """:func:`jax_step_runner` whose step is compiled (by its first call, here) with the attention
    core replaced by :func:`_jax_mix_core`."""
    from rlaif_jax.models import attention

    real = attention._attend_heads_major
    attention._attend_heads_major = _jax_mix_core
    try:
        run = jax_step_runner(model, params, batch)
        run()  # traced and compiled with the stand-in
    finally:
        attention._attend_heads_major = real
    return run


def torch_step_runner(model_dir: pathlib.Path, dtype: str, batch: dict, n_steps: int,
                      attention: str = "sdpa"):
    """A zero-argument callable running one PyTorch training step and returning its loss;
    ``attention=NO_ATTENTION`` replaces the attention core with :func:`_torch_mix_core`."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    if attention == NO_ATTENTION:
        transformers.AttentionInterface.register(NO_ATTENTION, _torch_mix_core)
    model = transformers.GPT2LMHeadModel.from_pretrained(
        str(model_dir), attn_implementation=attention).train()
    params = list(model.parameters())  # the tied wte / lm_head weight once
    o = OPTIM
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": o["weight_decay"]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"])
    lrs = lr_values(n_steps + 1) / o["lr"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lrs[min(i, n_steps)])
    ids = torch.from_numpy(batch["input_ids"]).long()
    mask = torch.from_numpy(batch["attention_mask"]).long()
    labels = ids.masked_fill(torch.from_numpy(batch["loss_mask"]) == 0, -100)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())

    def run():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, o["clip_norm"])
        optimizer.step()
        scheduler.step()
        return float(loss.detach())

    return run


def time_steps(run, repeats: int) -> dict:
    """One untimed step (compilation), then `repeats` timed steps; every step's loss."""
    losses = []
    timing = common.median_time(lambda: losses.append(run()), repeats=repeats, warmup=1)
    return {**timing, "losses": losses, "steps": len(losses)}


def time_pair(jax_run, torch_run, repeats: int, peak_run=None,
              extra: dict | None = None) -> tuple[dict, dict, dict | None, dict]:
    """Both sides' steps as :func:`time_steps` gives them, but timed in turns
    (``common.alternating``) so a slow phase of the machine hits both sides of a round; with
    `peak_run` (a warm call of the LM-head matmuls, :func:`lm_head_call`) also those, in the
    same rounds, for an MFU per round, and the `extra` warm calls ({name: call}) too. Returns
    (jax, torch, peak timing or None, {name: extra timing})."""
    losses = {"jax": [], "torch": []}
    for side, run in (("jax", jax_run), ("torch", torch_run)):
        losses[side].append(run())  # untimed: compilation / first-call setup
    calls = {"jax": lambda: losses["jax"].append(jax_run()),
             "torch": lambda: losses["torch"].append(torch_run())}
    if peak_run is not None:
        calls["peak"] = peak_run
    calls.update(extra or {})
    timing = common.alternating(calls, repeats)
    return (*({**timing[side], "losses": losses[side], "steps": len(losses[side])}
              for side in ("jax", "torch")), timing.get("peak"),
            {name: timing[name] for name in extra or {}})


def lm_head_call(shape: dict, dtype: str):
    """(call, FLOPs): a warm jitted call of the shape's three LM-head products
    (:func:`lm_head_matmuls`, one program), for the matmul peak timed in the steps' rounds."""
    import jax
    import jax.numpy as jnp

    mms = lm_head_matmuls(shape["batch"] * shape["seq"], shape["n_embd"], shape["vocab"])
    rng = np.random.default_rng(0)
    operands = [(jnp.asarray(rng.standard_normal((m, k)), dtype),
                 jnp.asarray(rng.standard_normal((k, n)), dtype)) for m, k, n in mms.values()]
    products = jax.jit(lambda ops: [jnp.dot(a, b) for a, b in ops])
    jax.block_until_ready(products(operands))  # compile
    return (lambda: jax.block_until_ready(products(operands)),
            sum(2 * m * k * n for m, k, n in mms.values()))


# --- XLA flag variants ---------------------------------------------------------------------


def xla_variant(flag: str | None, shape: dict, repeats: int) -> dict:
    """Runs the JAX fp32 step and a square fp32/bf16 matmul in a subprocess with `flag` added to
    XLA_FLAGS; {"accepted": bool, "tokens_per_s", "matmul_fp32_gflops", ...} or the error."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(x for x in (env.get("XLA_FLAGS", ""), flag or "") if x)
    cmd = [sys.executable, __file__, "--child-variant", json.dumps(shape),
           "--repeats", str(repeats)]
    log(f"XLA variant {flag or '(default)'}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"flag": flag, "accepted": False, "error": err[-1][:300] if err else "failed"}
    return {"flag": flag, "accepted": True, **json.loads(proc.stdout.strip().splitlines()[-1])}


def child_variant(shape: dict, repeats: int) -> None:
    batch = make_batch(shape)
    run = jax_step_runner(*jax_model(None, shape, "float32"), batch)
    t = time_steps(run, repeats)["median_s"]
    n = 1024
    out = {"tokens_per_s": shape["batch"] * shape["seq"] / t, "step_s": t,
           "matmul_fp32_gflops": common.jax_matmul_flops(n, n, n, "float32", repeats) / 1e9,
           "matmul_bf16_gflops": common.jax_matmul_flops(n, n, n, "bfloat16", repeats) / 1e9}
    print(json.dumps(out))


# --- main ----------------------------------------------------------------------------------


def measure_matmuls(shapes: dict, square: int, repeats: int) -> tuple[dict, list]:
    """Peaks (FLOP/s) and the matmul table rows: square JAX/PyTorch products in fp32 and bf16
    (PyTorch bf16 at 512^3 only: it is two orders of magnitude slower here), then each shape's
    three LM-head products in JAX."""
    torch_bf16 = 512
    peaks = {"square": {dt: common.jax_matmul_flops(square, square, square, dt, repeats)
                        for dt in ("float32", "bfloat16")},
             "torch_square": {"float32": torch_matmul_flops(square, square, square, "float32",
                                                             repeats),
                              "bfloat16": torch_matmul_flops(torch_bf16, torch_bf16, torch_bf16,
                                                              "bfloat16", repeats)},
             "lm_head": {}}
    g = 1e9
    rows = [["square", f"{square}^3", round(peaks["square"]["float32"] / g, 1),
             round(peaks["square"]["bfloat16"] / g, 1),
             round(peaks["torch_square"]["float32"] / g, 1), None],
            ["square (PyTorch bf16)", f"{torch_bf16}^3", None, None, None,
             round(peaks["torch_square"]["bfloat16"] / g, 2)]]
    for name, shape in shapes.items():
        mms = lm_head_matmuls(shape["batch"] * shape["seq"], shape["n_embd"], shape["vocab"])
        peaks["lm_head"][name] = {}
        for dt in ("float32", "bfloat16"):
            times = {k: 2 * m * kk * n / common.jax_matmul_flops(m, kk, n, dt, repeats)
                     for k, (m, kk, n) in mms.items()}
            flops = sum(2 * m * kk * n for m, kk, n in mms.values())
            peaks["lm_head"][name][dt] = flops / sum(times.values())
            for k, (m, kk, n) in mms.items():
                rate = 2 * m * kk * n / times[k] / g
                row = next((r for r in rows if r[0] == f"{name} {k}"), None)
                if row is None:
                    row = [f"{name} {k}", f"[{m},{kk}]x[{kk},{n}]", None, None, None, None]
                    rows.append(row)
                row[2 if dt == "float32" else 3] = round(rate, 1)
    return peaks, rows


def step_row(shape_name, shape, dtype, side, timing, flops_per_token, peak_square,
             peak_lm_head):
    tokens = shape["batch"] * shape["seq"]
    rate = flops_per_token * tokens / timing["median_s"]
    return {"shape": shape_name, "dtype": dtype, "batch": shape["batch"], "seq": shape["seq"],
            "side": side, "tokens_per_step": tokens, "steps": timing["steps"],
            "step_ms": 1e3 * timing["median_s"], "tokens_per_s": tokens / timing["median_s"],
            "model_gflops": rate / 1e9, "mfu_square": rate / peak_square,
            "mfu_lm_head": rate / peak_lm_head if peak_lm_head else None,
            "loss_first": timing["losses"][0], "loss_last": timing["losses"][-1],
            "losses": timing["losses"]}


def run_shape(name, shape, directory, dtypes, repeats, peaks, breakdown: bool):
    """Rows of the step table for one shape (JAX and PyTorch per dtype), and the JAX breakdown."""
    save_random_gpt2(shape, directory)
    batch = make_batch(shape)
    fpt = train_flops_per_token(shape["n_layer"], shape["n_embd"], shape["vocab"], shape["seq"])
    rows, parts = [], None
    for dtype in dtypes:
        model, params = jax_model(directory, shape, dtype)
        if breakdown and dtype == "float32":
            parts = jax_breakdown(model, params, batch, repeats)
        peak_run, peak_flops = lm_head_call(shape, dtype) if dtype == "float32" else (None, None)
        extra = {}
        if dtype == "float32":  # both steps without their attention core, in the same rounds
            extra = {"jax_no_attention": jax_step_runner_without_attention(model, params, batch),
                     "torch_no_attention": torch_step_runner(directory, dtype, batch, repeats + 1,
                                                             attention=NO_ATTENTION)}
            extra["torch_no_attention"]()  # untimed first step
        jax_t, torch_t, peak_t, extra_t = time_pair(
            jax_step_runner(model, params, batch),
            torch_step_runner(directory, dtype, batch, repeats + 1), repeats, peak_run, extra)
        lm = peaks["lm_head"].get(name, {}).get(dtype)
        jax_row = step_row(name, shape, dtype, "rlaif_jax", jax_t, fpt, peaks["square"][dtype], lm)
        jax_row["speedup_vs_pytorch"] = common.paired_ratio(torch_t["times_s"], jax_t["times_s"])
        if peak_t is not None:
            # MFU per round: (step FLOPs / step time) / (LM-head FLOPs / their time, same round).
            mfu = common.paired_ratio(peak_t["times_s"], jax_t["times_s"])
            scale = fpt * shape["batch"] * shape["seq"] / peak_flops
            jax_row["mfu_lm_head_paired"] = {**mfu, **{k: mfu[k] * scale
                                                       for k in ("median", "min", "max")}}
        if extra_t:
            bare = {side: extra_t[f"{side}_no_attention"]["times_s"] for side in ("jax", "torch")}
            jax_row["without_attention"] = {
                "jax_step_ms": 1e3 * extra_t["jax_no_attention"]["median_s"],
                "torch_step_ms": 1e3 * extra_t["torch_no_attention"]["median_s"],
                # per round: each side's step minus its step without attention
                "jax_attention_ms": 1e3 * statistics.median(
                    a - b for a, b in zip(jax_t["times_s"], bare["jax"])),
                "torch_attention_ms": 1e3 * statistics.median(
                    a - b for a, b in zip(torch_t["times_s"], bare["torch"])),
                "speedup_vs_pytorch": common.paired_ratio(bare["torch"], bare["jax"])}
        rows += [jax_row, step_row(name, shape, dtype, "pytorch", torch_t, fpt,
                                   peaks["square"][dtype], lm)]
        if parts is not None and dtype == "float32":
            parts["step_s"] = jax_t["median_s"]
    return rows, parts


def jax_only_rows(name, shape, directory, dtype, repeats, peaks):
    """JAX alone (PyTorch's bf16 step at this size would take minutes: see the notes)."""
    fpt = train_flops_per_token(shape["n_layer"], shape["n_embd"], shape["vocab"], shape["seq"])
    t = time_steps(jax_step_runner(*jax_model(directory, shape, dtype), make_batch(shape)),
                   repeats)
    return [step_row(name, shape, dtype, "rlaif_jax", t, fpt, peaks["square"][dtype],
                     peaks["lm_head"].get(name, {}).get(dtype))]


# Parts of a step, by the op_name XLA keeps in each instruction's metadata (first match wins).
PROFILE_PARTS = (
    ("LM head + loss", ("lm_logits", "take_along_axis", "log_softmax", "logsumexp")),
    ("dense layers (c_attn, c_proj, c_fc)", ("/attn/c_attn", "/attn/c_proj", "/mlp/c_")),
    ("attention core (QK^T, mask, softmax, PV)", ("/attn/",)),
    ("layer norms", ("ln_",)),
    ("MLP activation", ("/mlp/",)),
)


def profile_steps(shape, directory, out: str, n: int = 3) -> list[list]:
    """Traces `n` JAX fp32 steps with jax.profiler and sums the time of XLA's kernels by the
    part of the model their HLO instruction comes from: [[part, ms per step, share], ...]."""
    import collections

    run = jax_step_runner(*jax_model(directory, shape, "float32"), make_batch(shape))
    run()  # compile outside the trace
    totals = collections.Counter()
    for _, op, ms, _ in common.xla_kernel_ms(run, run.hlo_text(), out, n):
        if op and "/while/" not in op:  # outside the micro-batch loop
            part = "optimizer (clip, AdamW)"
        else:
            part = next((name for name, keys in PROFILE_PARTS if any(k in op for k in keys)), "other")
        totals[part] += ms
    return _share_rows(totals)


def _share_rows(totals) -> list[list]:
    """[[part, ms, share of the total], ...], largest first, from a Counter of ms by part."""
    total = sum(totals.values())
    return [[part, _r(ms), _r(ms / total, 3)] for part, ms in totals.most_common()]


# PyTorch ops by kind (first match on the aten op name wins), to set beside our profile.
TORCH_PROFILE_PARTS = (
    ("attention core (SDPA forward + backward)", ("scaled_dot_product", "flash_attention")),
    ("matmuls (dense layers + LM head)", ("::mm", "::addmm", "::bmm", "::baddbmm")),
    ("LM head loss (log-softmax, NLL)", ("log_softmax", "nll_loss", "cross_entropy")),
    ("layer norms", ("layer_norm",)),
    ("MLP activation", ("gelu", "tanh", "::pow")),
    ("optimizer (clip, AdamW)", ("foreach", "Optimizer", "lerp", "addcdiv", "sqrt",
                                 "vector_norm", "clip")),
)


def profile_torch_steps(shape, directory, n: int = 3) -> list[list]:
    """`n` PyTorch fp32 steps under torch.profiler: self CPU time by kind of aten op,
    [[part, ms per step, share], ...] (autograd and Python frames have ~no self time)."""
    import collections

    import torch

    run = torch_step_runner(directory, "float32", make_batch(shape), n + 1)
    run()  # warm-up (oneDNN primitives, allocator)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            run()
    totals = collections.Counter()
    for event in prof.key_averages():
        part = next((name for name, keys in TORCH_PROFILE_PARTS
                     if any(k in event.key for k in keys)), "other")
        totals[part] += event.self_cpu_time_total / 1e3 / n
    return _share_rows(totals)


_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _r(x, nd=1):
    return None if x is None else round(x, nd)


def build_result(args, peaks, mm_rows, steps, parts, variants, shapes, profile) -> dict:
    step_cols = ["shape", "dtype", "batch x seq", "side", "tokens/step", "steps", "step ms",
                 "tokens/s", "model GFLOP/s", "MFU vs square peak", "MFU vs LM-head peak",
                 "MFU vs LM-head peak, same rounds (median, min-max)", "loss first", "loss last",
                 "x PyTorch (per-round median, min-max)"]

    def spread(v, nd=2):
        return f"{v['median']:.{nd}f} ({v['min']:.{nd}f}-{v['max']:.{nd}f})" if v else "-"

    step_rows = [[r["shape"], r["dtype"], f"{r['batch']}x{r['seq']}", r["side"],
                  r["tokens_per_step"], r["steps"], _r(r["step_ms"]), _r(r["tokens_per_s"], 0),
                  _r(r["model_gflops"]), _r(r["mfu_square"], 3), _r(r["mfu_lm_head"], 3),
                  spread(r.get("mfu_lm_head_paired"), 3), _r(r["loss_first"], 5),
                  _r(r["loss_last"], 5), spread(r.get("speedup_vs_pytorch"))] for r in steps]
    tables = [{"title": "Matmul throughput, GFLOP/s (jnp.dot / torch.mm, same run)",
               "columns": ["matmul", "shape", "JAX fp32", "JAX bf16", "PyTorch fp32",
                           "PyTorch bf16"], "rows": mm_rows},
              {"title": "SFT train step: rlaif_jax vs PyTorch (same model, weights, batch, "
                        "AdamW)", "columns": step_cols, "rows": step_rows}]
    bare_rows = [[r["shape"], _r(r["step_ms"]), _r(t["step_ms"]), _r(w["jax_step_ms"]),
                  _r(w["torch_step_ms"]), _r(w["jax_attention_ms"]), _r(w["torch_attention_ms"]),
                  spread(r["speedup_vs_pytorch"]), spread(w["speedup_vs_pytorch"])]
                 for r in steps if (w := r.get("without_attention"))
                 for t in steps if t["side"] == "pytorch" and t["dtype"] == r["dtype"]
                 and (t["shape"], t["batch"]) == (r["shape"], r["batch"])]
    if bare_rows:
        tables.append({"title": "fp32 SFT step with and without the attention core (both sides "
                                "timed in the same rounds; the core replaced by q + k + v)",
                       "columns": ["shape", "ours step ms", "PyTorch step ms",
                                   "ours without attention ms", "PyTorch without attention ms",
                                   "ours attention core ms", "PyTorch attention core ms",
                                   "x PyTorch", "x PyTorch without attention"],
                       "rows": bare_rows})
    if parts:
        fwd, fb, st = parts["forward_s"], parts["forward_backward_s"], parts["step_s"]
        tables.append({"title": f"JAX fp32 step breakdown ({next(iter(shapes))})",
                       "columns": ["part", "ms", "share of step"],
                       "rows": [["forward (loss)", _r(1e3 * fwd), _r(fwd / st, 3)],
                                ["backward", _r(1e3 * (fb - fwd)), _r((fb - fwd) / st, 3)],
                                ["clip + AdamW + rest", _r(1e3 * (st - fb)), _r((st - fb) / st, 3)]]})
    how = {"JAX": "jax.profiler trace, XLA kernel time by model part",
           "PyTorch": "torch.profiler, self CPU time by aten op kind"}
    for name, sides in (profile or {}).items():
        for side, rows in sides.items():
            tables.append({"title": f"{side} fp32 step profile ({name}: {how[side]})",
                           "columns": ["part", "ms/step", "share of kernel time"], "rows": rows})
    if variants:
        # The default runs first and (in a full run) again last: the machine drifts over the
        # minutes the variants take, so "vs default" divides by the mean of the default rows.
        defaults = [v["tokens_per_s"] for v in variants if v["flag"] is None and v["accepted"]]
        base = {"accepted": bool(defaults),
                "tokens_per_s": sum(defaults) / len(defaults) if defaults else None}
        tables.append({"title": "XLA_FLAGS variants (JAX fp32 step, own process each; 'vs "
                                "default': over the mean of the default rows)",
                       "columns": ["flag", "accepted", "tokens/s", "vs default",
                                   "matmul fp32 GFLOP/s", "matmul bf16 GFLOP/s", "error"],
                       "rows": [[v["flag"] or "(default)", v["accepted"],
                                 _r(v.get("tokens_per_s"), 0),
                                 _r(v["tokens_per_s"] / base["tokens_per_s"], 3)
                                 if v["accepted"] and base.get("accepted") else None,
                                 _r(v.get("matmul_fp32_gflops")),
                                 _r(v.get("matmul_bf16_gflops")), v.get("error")]
                                for v in variants]})

    def pick(shape, dtype, side):
        return next((r for r in steps if r["shape"] == shape and r["dtype"] == dtype
                     and r["side"] == side and r["batch"] == shapes[shape]["batch"]), None)

    headline, targets = {}, []
    for name in shapes:
        j, t = pick(name, "float32", "rlaif_jax"), pick(name, "float32", "pytorch")
        if j and t:
            ratio = j["speedup_vs_pytorch"]["median"]
            headline[f"{name}_fp32_jax_tokens_per_s"] = round(j["tokens_per_s"])
            headline[f"{name}_fp32_pytorch_tokens_per_s"] = round(t["tokens_per_s"])
            headline[f"{name}_fp32_speedup_vs_pytorch"] = round(ratio, 3)
            headline[f"{name}_fp32_mfu_square"] = round(j["mfu_square"], 3)
            if j.get("without_attention"):
                headline[f"{name}_fp32_speedup_without_attention"] = round(
                    j["without_attention"]["speedup_vs_pytorch"]["median"], 3)
            targets.append({"name": f"SFT step vs PyTorch, fp32, {name}", "value": round(ratio, 3),
                            "target": 1.0, "met": ratio >= 1.0})
    first = next(iter(shapes))
    j = pick(first, "float32", "rlaif_jax")
    if j and j.get("mfu_lm_head_paired"):
        mfu = j["mfu_lm_head_paired"]["median"]  # the peak timed in the step's own rounds
        headline[f"{first}_fp32_mfu_lm_head"] = round(mfu, 3)
        targets.append({"name": f"MFU vs matmul peak at the LM-head shapes, fp32, {first}",
                        "value": round(mfu, 3), "target": 0.5, "met": mfu >= 0.5})
    g = 1e9
    headline.update(matmul_fp32_gflops=_r(peaks["square"]["float32"] / g),
                    matmul_bf16_gflops=_r(peaks["square"]["bfloat16"] / g),
                    torch_matmul_bf16_gflops=_r(peaks["torch_square"]["bfloat16"] / g, 2))
    return {"title": "SFT train step vs PyTorch, MFU", "quick": args.quick, "tables": tables,
            "headline": headline, "targets": targets, "raw": {"steps": steps, "peaks": peaks,
                                                              "breakdown": parts,
                                                              "xla_variants": variants,
                                                              "shapes": shapes, "optim": OPTIM},
            "notes": notes(peaks, steps, variants, profile)}


def notes(peaks, steps, variants, profile=None) -> list[str]:
    out = [
        "Model FLOPs per token = 6*(12*L*D^2 + V*D) + 12*L*T*D (PaLM convention, tied LM head "
        "counted, attention over all T keys); MFU = model FLOP/s / jnp.dot peak measured in the "
        "same run, same dtype. The MFU target uses the LM-head products (the three of the step's "
        "shapes, one jitted call) timed in the same rounds as the two steps: per round, the "
        "step's FLOP/s over theirs; the median and range over the rounds. The 'MFU vs LM-head "
        "peak' column divides by the matmul table's peak instead, measured minutes apart.",
        "PyTorch runs transformers' GPT2LMHeadModel with its default attention (sdpa); "
        "rlaif_jax runs its block-causal attention (models/attention.py): fp32 scores per block "
        "of 128 queries over the keys up to the block's end, no mask array.",
    ]
    flags = common.cpu_flags()
    sq = peaks["square"]
    out.append(
        f"bf16 on this CPU (flags: {' '.join(flags) or 'unknown'}): no avx512_bf16 / amx, so no "
        f"native bf16 matmul. XLA's bf16 jnp.dot reaches {sq['bfloat16'] / 1e9:.1f} GFLOP/s vs "
        f"{sq['float32'] / 1e9:.1f} fp32 (bf16 inputs converted to fp32 for the kernel); "
        f"PyTorch's bf16 torch.mm reaches {peaks['torch_square']['bfloat16'] / 1e9:.2f} GFLOP/s "
        f"vs {peaks['torch_square']['float32'] / 1e9:.1f} fp32, so autocast bf16 steps are "
        "measured on one short sequence only.")
    for a, b in ((r, s) for r in steps for s in steps
                 if r["side"] == "rlaif_jax" and s["side"] == "pytorch" and r["dtype"] == "float32"
                 and s["dtype"] == "float32" and (r["shape"], r["batch"]) == (s["shape"], s["batch"])):
        diff = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
        out.append(f"{a['shape']} fp32: per-step losses of the two sides differ by at most "
                   f"{diff:.2e} over {a['steps']} steps (same model and update).")
    for name, sides in (profile or {}).items():
        rows, theirs = sides["JAX"], sides["PyTorch"]
        out.append(f"Profile of the JAX fp32 step, {name}: " + ", ".join(
            f"{part} {share:.0%}" for part, _, share in rows[:4]) + " of XLA kernel time.")
        ours_attn = next((ms for part, ms, _ in rows if part.startswith("attention")), None)
        torch_attn = next((ms for part, ms, _ in theirs if part.startswith("attention")), None)
        if ours_attn is not None and torch_attn:
            rest = sum(ms for part, ms, _ in rows if not part.startswith("attention"))
            torch_rest = sum(ms for part, ms, _ in theirs if not part.startswith("attention"))
            out.append(
                f"{name}, by profile: the attention core takes {ours_attn:.0f} ms per step in "
                f"ours vs {torch_attn:.0f} ms in PyTorch's fused SDPA ({ours_attn / torch_attn:.1f}x); "
                f"everything else {rest:.0f} ms vs {torch_rest:.0f} ms ({rest / torch_rest:.2f}x).")
    for r in steps:
        if w := r.get("without_attention"):
            out.append(
                f"{r['shape']} fp32: with the attention core replaced "
                f"by q + k + v on both sides (same rounds), ours takes {w['jax_step_ms']:.0f} ms "
                f"and PyTorch {w['torch_step_ms']:.0f} ms per step, "
                f"{w['speedup_vs_pytorch']['median']:.2f}x PyTorch "
                f"({w['speedup_vs_pytorch']['min']:.2f}-{w['speedup_vs_pytorch']['max']:.2f}) "
                f"against {r['speedup_vs_pytorch']['median']:.2f}x with it; the attention core "
                f"costs ours {w['jax_attention_ms']:.0f} ms and PyTorch (fused SDPA) "
                f"{w['torch_attention_ms']:.0f} ms per step (step minus step without it, median "
                "over rounds).")
    rejected = [v["flag"] for v in variants if not v["accepted"]]
    if rejected:
        out.append("XLA rejected: " + ", ".join(rejected) + " (see the variants table).")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats (a smoke run)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--no-xla-variants", action="store_true", help="skip the XLA flag variants")
    p.add_argument("--results-dir", default=None, help="write the JSON here instead of "
                   "benchmarks/results/")
    p.add_argument("--profile", default=None, help="keep the jax.profiler traces of three JAX "
                   "fp32 steps of each shape in this directory (the traces are always taken "
                   "and summarised without --quick; with --quick only when this is given)")
    p.add_argument("--child-variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    repeats = args.repeats or (2 if args.quick else 3)
    if args.child_variant:
        return child_variant(json.loads(args.child_variant), repeats)

    shapes = QUICK_SHAPES if args.quick else SHAPES
    first = next(iter(shapes))
    log("matmul peaks")
    peaks, mm_rows = measure_matmuls(shapes, 1024 if args.quick else 2048, repeats)
    steps, parts, profile = [], None, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, shape) in enumerate(shapes.items()):
            directory = pathlib.Path(tmp) / name
            log(f"{name} fp32 step, both sides")
            rows, shape_parts = run_shape(name, shape, directory, ("float32",), repeats, peaks,
                                          breakdown=i == 0)
            steps += rows
            parts = parts or shape_parts
            if i == 0:
                # bf16: JAX at the full batch; both sides on one (short) sequence.
                log(f"{name} bf16 steps")
                steps += jax_only_rows(name, shape, directory, "bfloat16", repeats, peaks)
                one = dict(shape, batch=1, seq=min(shape["seq"], 32 if args.quick else 128))
                steps += run_shape(name, one, pathlib.Path(tmp) / f"{name}_1", ("bfloat16",),
                                   1, peaks, breakdown=False)[0]
            if args.profile or not args.quick:
                log(f"{name} profile")
                profile[name] = {
                    "JAX": profile_steps(shape, directory, f"{args.profile or tmp + '/trace'}/{name}"),
                    "PyTorch": profile_torch_steps(shape, directory)}
    variants = []
    if not args.no_xla_variants:
        vshape = dict(shapes[first], batch=8, seq=64 if args.quick else 256)
        flags = (None,) + (XLA_VARIANTS[:1] if args.quick else XLA_VARIANTS + (None,))
        variants = [xla_variant(f, vshape, repeats) for f in flags]
    if args.results_dir:
        common.RESULTS = pathlib.Path(args.results_dir)
    path = common.write_result("train", build_result(args, peaks, mm_rows, steps, parts,
                                                     variants, shapes, profile))
    print(f"wrote {path}")
    for t in json.loads(path.read_text())["targets"]:
        print(f"  {t['name']}: {t['value']} (target {t['target']}, met: {t['met']})")


if __name__ == "__main__":
    main()
