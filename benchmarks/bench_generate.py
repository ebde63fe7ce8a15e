"""Generation speed (the PPO rollout cost): our compiled KV-cache sampler vs `transformers` generate.

    python -m benchmarks.bench_generate [--quick] [--sizes tiny small] [--batches 1 8 32] ...

One random GPT-2 per size is built with `transformers` + `torch` (``GPT2LMHeadModel``, its own
N(0, 0.02) init), saved with ``save_pretrained`` and imported into our flax params with
``models.hf_import.load_lm`` (the path the logit-parity tests cover), so both sides run the same
config and the same weights, in float32 on the CPU:

* ours: ``sampling.make_generate_fn`` (one prefill, then a ``lax.while_loop`` of KV-cache decode
  steps, all in one XLA program; compiled once per batch size, the compile timed apart);
* theirs: ``GPT2LMHeadModel.generate`` under ``torch.inference_mode()``, default dynamic KV cache,
  ``torch.set_num_threads(os.cpu_count())`` (intra-op threads on every core; JAX's CPU client
  uses every core by default).

The prompts are the same left-padded token ids on both sides (lengths between half and all of
``--prompt-len``). Every decode step runs on both sides: EOS is an id outside the vocabulary
(ours) / ``eos_token_id=None`` (transformers), and after each call the script checks that every
row got exactly ``--new-tokens`` new tokens. Decoding: greedy at every batch size, and sampling at
temperature 0.7 (no top-k; top-p ``--top-p``, default none, on both sides) at ``--sample-batches``.
Each (side, batch, decoding) is warmed up (ours: by the first call, which compiles; transformers:
by a generate of 8 tokens), then the two sides are timed in turns over ``--repeats`` rounds
(``common.alternating``: this machine's speed drifts by 2-4x over seconds, and a pair of calls in
one round shares a phase). tok/s and ms/step are per-side medians; ``ratio`` is the median over
rounds of that round's transformers time / ours, and ``ratio range`` its min-max. tok/s counts
new tokens over all rows (``batch * new_tokens / median time``); ms/step is the median time over
``new_tokens`` (the prefill amortised in). ``greedy same`` is the share of greedy
tokens identical on both sides (a sanity check that both ran the same model; float32 rounding can
flip a near-tie, after which a row diverges). Per batch size the script also times each side's
"matmul floor": the decode step's weight matmuls alone (``matmul_floor``), which bounds the ratio
any sampler on XLA's matmuls could reach (see the notes written with the result). One greedy
batch (``--profile-batch``, default 8) is also traced with ``jax.profiler``: its XLA kernel time
per decode step by part of the step (weight matmuls, LM head, attention over the cache, layer
norms, token choice, prefill), the kernels per step, and the untraced step time beside them;
for the tiny size the same step is also rebuilt from its parts (``decode_buildup``: weight
matmuls, then layer norms / biases / GELU, the KV-cache write, a plain read of every cache
slot, the attention over the cache), each stage a jitted loop timed untraced in turns with the
real generate, since the profiler's per-kernel overhead inflates small kernels inside a loop.
The stages use one cache of ``prompt-len + new-tokens`` slots, so the real generate they are timed
with is ours with one loop over such a cache (``segment=new_tokens``). Our default generate grows
its cache in segments (``rlaif_jax.sampling.default_segment``) and reads fewer
slots per step; at ``--profile-batch`` the one-loop generate is timed in the greedy rounds too,
and a note gives its time over the default's (median of per-round ratios).

``--quick`` is a smoke run (tiny size, batch 8 greedy and sampled, 16 new tokens, one repeat).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks import common  # noqa: E402
from benchmarks.common import write_result  # noqa: E402
from rlaif_jax.models import attention, build, gpt2, hf_import  # noqa: E402
from rlaif_jax.models.gpt2 import count_params  # noqa: E402
from rlaif_jax.sampling import (SamplingParams, default_segment, left_pad,  # noqa: E402
                                make_generate_fn, segment_ends)

# GPT-2 shapes (transformers.GPT2Config fields). tiny = configs/tiny.py (1.4M params, overhead-
# bound); mid = 6 x 512 with GPT-2's vocabulary (45M params, the default "real" size: it fits the
# run's time budget on 2 cores); small = GPT-2 small (124M params; opt in with --sizes).
SIZES = {
    "tiny": dict(vocab_size=4096, n_positions=512, n_embd=128, n_layer=4, n_head=4),
    "mid": dict(vocab_size=50257, n_positions=1024, n_embd=512, n_layer=6, n_head=8),
    "small": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
}
PAD = 0
TEMPERATURE = 0.7
# Decode steps per matmul-floor call. A call of 16 steps (~10-40 ms) timed right after the
# generates measured 2-4x slower per step than one of 128 (measured): a short call pays the
# machine's warm-up after another program's turn.
FLOOR_STEPS = 128
TARGET_RATIO = 3.0  # issue 7: >= 3x transformers at batch 8


def build_models(size: str, directory: str):
    """(torch model, our flax model, our params) with the same random weights."""
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(**SIZES[size], bos_token_id=None, eos_token_id=None,
                                     pad_token_id=PAD)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(directory)
    cfg, params = hf_import.load_lm(directory)
    return hf, build.make_lm(cfg), jax.device_put(params)


def prompts(batch: int, prompt_len: int, vocab: int, seed: int = 0):
    rs = np.random.RandomState(seed)
    lengths = rs.randint(prompt_len // 2, prompt_len + 1, batch)
    lengths[0] = prompt_len
    return left_pad([rs.randint(1, vocab, n).tolist() for n in lengths], prompt_len, PAD)


def ours_call(model, params, ids, mask, n_new: int, greedy: bool, top_p: float, **generate_kw):
    """Our generate for these prompts, compiled and warmed up: ``(call, compile_s, tokens)``, with
    ``tokens()`` the new tokens of the last call (checked to be ``n_new`` per row);
    ``generate_kw`` go to ``make_generate_fn``."""
    sampling = SamplingParams(max_new_tokens=n_new, greedy=greedy, temperature=TEMPERATURE, top_p=top_p,
                              eos_id=model.config.vocab_size, pad_id=PAD)  # EOS can never be drawn
    generate = make_generate_fn(model, sampling, ids.shape[1], **generate_kw)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    out = {}

    def call():
        out.update(jax.block_until_ready(generate(params, ids, mask, jax.random.key(0))))

    def tokens():
        lengths = np.asarray(out["lengths"])
        if not (lengths == n_new).all():
            raise RuntimeError(f"ours generated {lengths.tolist()} tokens, expected {n_new} per row")
        return np.asarray(out["tokens"])

    t0 = time.perf_counter()
    call()  # compile + warm-up
    compile_s = time.perf_counter() - t0
    call.hlo_text = lambda: generate.lower(params, ids, mask, jax.random.key(0)).compile().as_text()
    return call, compile_s, tokens


def hf_call(hf, ids, mask, n_new: int, greedy: bool, top_p: float):
    """transformers' generate for these prompts, warmed up: ``(call, tokens)`` as in
    :func:`ours_call`."""
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=TEMPERATURE,
                                                       top_k=0, top_p=top_p)
    out = {}

    def call():
        with torch.inference_mode():
            out["seq"] = hf.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=n_new,
                                     eos_token_id=None, pad_token_id=PAD, **kwargs)

    def tokens():
        new = out["seq"][:, ids.shape[1]:].numpy()
        if new.shape != (ids.shape[0], n_new):
            raise RuntimeError(f"transformers generated {new.shape[1]} tokens, expected {n_new}")
        return new

    with torch.inference_mode():  # warm-up: a short call (oneDNN primitives, allocator, caches)
        hf.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=min(n_new, 8),
                    eos_token_id=None, pad_token_id=PAD, **kwargs)
    return call, tokens


def matmul_floor(hf, params, batch: int, steps: int = FLOOR_STEPS):
    """Two warm calls, ``(xla, torch)``, each running `steps` decode steps' weight matmuls alone
    (each block's 4 matrices and the LM head, no attention over the cache, no layer norms), with
    XLA (a jitted loop) and with torch (a Python loop of the same matmuls): the floor each side's
    step cannot go below."""
    t = params["transformer"]
    d = hf.config.n_embd
    mats = [[t[name]["attn"]["c_attn"]["kernel"], t[name]["attn"]["c_proj"]["kernel"],
             t[name]["mlp"]["c_fc"]["kernel"], t[name]["mlp"]["c_proj"]["kernel"]]
            for name in (f"h_{i}" for i in range(hf.config.n_layer))]
    wte = t["wte"]["embedding"]

    def step(x, mats, wte):
        h = x
        for qkv, proj, fc, fc_proj in mats:
            h = h + (h @ qkv)[:, :d] @ proj
            h = h + (h @ fc) @ fc_proj
        logits = h @ wte.T  # the max keeps every logit needed (as the argmax of a real step does)
        return x + 1e-6 * logits.max(axis=-1, keepdims=True)

    run = jax.jit(lambda x, mats, wte: jax.lax.fori_loop(0, steps, lambda _, x: step(x, mats, wte), x))
    x0 = jnp.ones((batch, d), jnp.float32)

    def xla_run():
        jax.block_until_ready(run(x0, mats, wte))
    blocks = hf.transformer.h
    tw = [[b.attn.c_attn.weight, b.attn.c_proj.weight, b.mlp.c_fc.weight, b.mlp.c_proj.weight]
          for b in blocks]  # Conv1D weights are [in, out]
    twte = hf.transformer.wte.weight

    def torch_run():
        with torch.inference_mode():
            x = torch.ones(batch, d)
            for _ in range(steps):
                h = x
                for qkv, proj, fc, fc_proj in tw:
                    h = h + (h @ qkv)[:, :d] @ proj
                    h = h + (h @ fc) @ fc_proj
                x = x + 1e-6 * (h @ twte.T).amax(dim=-1, keepdim=True)

    xla_run(), torch_run()  # compile / warm up
    return xla_run, torch_run


# The decode step built up from its weight matmuls, one part at a time (`decode_buildup`).
BUILDUP_STAGES = ("weight matmuls + LM head", "+ layer norms, biases, GELU", "+ KV-cache write",
                  "+ reading every cache slot (a sum, no attention)",
                  "attention over the cache instead (models.attention.cached_attend)")
BUILDUP_REAL = "our generate, one loop over a full-width cache (the real step)"


def decode_buildup(params, cfg, ours_run, batch: int, prompt_len: int, n_new: int,
                   repeats: int) -> tuple[list, dict]:
    """ms per decode step of the step rebuilt from its parts, each stage a jitted loop of `n_new`
    steps on a [batch, n_embd] state with the real weights and a real KV cache
    (``gpt2.init_cache`` of ``prompt_len + n_new`` slots, written and read as the model does),
    timed untraced and in turns with our real generate (`ours_run`: pass the one with one loop
    over a full-width cache, ``segment=n_new``, which reads the same slots). Rows: [stage,
    ms/step, + over the previous stage]; the last row is the real step. This finds what a step's
    time goes to without the profiler, whose per-kernel overhead inflates small kernels inside a
    loop."""
    t = params["transformer"]
    D, H = cfg.n_embd, cfg.n_head
    Dh, S = D // H, prompt_len + n_new
    blocks = [t[f"h_{i}"] for i in range(cfg.n_layer)]
    wte = t["wte"]["embedding"]

    def norm(x, p, on):
        if not on:
            return x
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + cfg.layer_norm_epsilon) * p["scale"] + p["bias"]

    def make(stage: int):
        def step(i, carry):
            x, ck, cv = carry
            slot, h = prompt_len + i, x
            for layer, b in enumerate(blocks):
                qkv = norm(h, b["ln_1"], stage >= 1) @ b["attn"]["c_attn"]["kernel"]
                qkv = qkv + b["attn"]["c_attn"]["bias"] if stage >= 1 else qkv
                q, k, v = (a.reshape(batch, 1, H, Dh) for a in jnp.split(qkv, 3, axis=-1))
                if stage in (2, 3):
                    new = [jax.lax.dynamic_update_slice(c[layer], a.transpose(0, 2, 1, 3), (0, 0, slot, 0))
                           for c, a in ((ck, k), (cv, v))]
                if stage == 4:
                    att, new = attention.cached_attend(
                        q, k, v, jnp.ones((batch, S), bool), (ck[layer], cv[layer], slot), scale=Dh ** -0.5)
                else:
                    att = q + k + v
                if stage == 3:  # the bytes the attention reads, without its dots and softmax
                    att = att + 1e-9 * (new[0] + new[1]).sum(axis=2).reshape(batch, 1, H, Dh)
                if stage >= 2:
                    ck, cv = (c[:layer] + (n,) + c[layer + 1:] for c, n in zip((ck, cv), new))
                o = att.reshape(batch, D) @ b["attn"]["c_proj"]["kernel"]
                h = h + (o + b["attn"]["c_proj"]["bias"] if stage >= 1 else o)
                f = norm(h, b["ln_2"], stage >= 1) @ b["mlp"]["c_fc"]["kernel"]
                f = jax.nn.gelu(f + b["mlp"]["c_fc"]["bias"], approximate=True) if stage >= 1 else f
                o = f @ b["mlp"]["c_proj"]["kernel"]
                h = h + (o + b["mlp"]["c_proj"]["bias"] if stage >= 1 else o)
            logits = norm(h, t["ln_f"], stage >= 1) @ wte.T  # the max keeps every logit needed
            return x + 1e-6 * logits.max(axis=-1, keepdims=True), ck, cv

        run = jax.jit(lambda x, ck, cv: jax.lax.fori_loop(0, n_new, step, (x, ck, cv)))
        cache = gpt2.init_cache(cfg, batch, S)
        args = (jnp.ones((batch, D), jnp.float32), cache["k"], cache["v"])
        jax.block_until_ready(run(*args))  # compile
        return lambda: jax.block_until_ready(run(*args))

    calls = {name: make(i) for i, name in enumerate(BUILDUP_STAGES)}
    calls[BUILDUP_REAL] = ours_run
    ms = {name: 1e3 * tm["median_s"] / n_new
          for name, tm in common.alternating(calls, repeats).items()}
    steps = list(ms.values())
    rows = [[name, round(step, 3), round(step - steps[i - 1], 3) if i else "-"]
            for i, (name, step) in enumerate(ms.items())]
    return rows, ms


# Parts of a decode step, by the op_name of each XLA kernel (first match wins).
DECODE_PARTS = (
    ("LM head", ("lm_logits",)),
    ("weight matmuls (c_attn, c_proj, c_fc)", ("/c_attn/", "/c_proj/", "/c_fc/")),
    ("attention over the KV cache (write, scores, softmax, values)", ("/attn/",)),
    ("layer norms", ("/ln_",)),
    ("MLP activation, residual adds", ("/mlp/", "/transformer/h_")),
)


def decode_profile(call, n_new: int, step_ms: float, trace_dir: str) -> tuple[list, dict]:
    """XLA kernel time per decode step by part of the step (`call`: a compiled, warmed-up
    generate), from a jax.profiler trace: (rows [part, ms/step, share, kernels/step], totals).
    The loop body runs `n_new - 1` times (the first token comes from the prefill's logits); the
    prefill's kernels are spread over the `n_new` tokens."""
    import collections

    ms, runs = collections.Counter(), collections.Counter()
    for _, op, kernel_ms, kernel_runs in common.xla_kernel_ms(call, call.hlo_text(), trace_dir):
        if "/while/body/" not in op:
            part, per = "prefill + setup (once per call, amortised)", n_new
        else:
            part = next((name for name, keys in DECODE_PARTS if any(k in op for k in keys)),
                        "token choice + loop bookkeeping")
            per = max(n_new - 1, 1)
        ms[part] += kernel_ms / per
        runs[part] += kernel_runs / per
    total = sum(ms.values())
    rows = [[part, round(t, 3), round(t / total, 3), round(runs[part], 1)]
            for part, t in ms.most_common()]
    rows.append(["sum of kernels (traced)", round(total, 3), 1.0, round(sum(runs.values()), 1)])
    rows.append(["step wall time (untraced median)", round(step_ms, 3), round(step_ms / total, 3), "-"])
    return rows, {"kernel_ms": total, "kernels": sum(runs.values()), "parts": dict(ms)}


def bench_size(size: str, batches, sample_batches, prompt_len: int, n_new: int, top_p: float,
               repeats: int, profile_batch: int | None, buildup_sizes=("tiny",)):
    with tempfile.TemporaryDirectory() as tmp:
        hf, model, params = build_models(size, tmp)
    cfg = model.config
    title = (f"{size}: GPT-2 {cfg.n_layer} layers x {cfg.n_embd}, vocab {cfg.vocab_size}, "
             f"{count_params(params) / 1e6:.1f}M params; prompt {prompt_len}, {n_new} new tokens")
    # Matmul parameters (the four matrices of each block + the tied LM head): 2 FLOPs each per
    # generated token, and 4 bytes each read per decode step (attention over ~100 keys adds ~2%).
    matmul_params = 12 * cfg.n_layer * cfg.n_embd ** 2 + cfg.vocab_size * cfg.n_embd
    rows, ratios, profile, buildup = [], {}, None, None
    for batch in batches:
        ids, mask = prompts(batch, prompt_len, cfg.vocab_size, seed=batch)
        floor_calls = matmul_floor(hf, params, batch)
        for greedy in [True] + ([False] if batch in sample_batches else []):
            ours_run, compile_s, ours_tokens = ours_call(model, params, ids, mask, n_new, greedy, top_p)
            hf_run, hf_tokens_of = hf_call(hf, ids, mask, n_new, greedy, top_p)
            calls = {"ours": ours_run, "theirs": hf_run}
            if greedy:  # the floors do not depend on the decoding: timed in the greedy rounds
                calls.update(floor_xla=floor_calls[0], floor_torch=floor_calls[1])
            if greedy and batch == profile_batch:  # the cache segments' gain, in the same rounds
                one_loop_run = ours_call(model, params, ids, mask, n_new, greedy, top_p,
                                         segment=n_new)[0]
                calls["ours_one_loop"] = one_loop_run
            timing = common.alternating(calls, repeats)
            ours, theirs = timing["ours"], timing["theirs"]
            if greedy:
                floor = {k: [t / FLOOR_STEPS for t in timing[k]["times_s"]]
                         for k in ("floor_xla", "floor_torch")}
            floor_xla, floor_torch = (1e3 * statistics.median(floor[k])
                                      for k in ("floor_xla", "floor_torch"))
            # per round: transformers' step over the XLA floor, and our step over it (for
            # sampling, against the greedy rounds' floors)
            bound = common.paired_ratio([t / n_new for t in theirs["times_s"]], floor["floor_xla"])
            overhead = common.paired_ratio([t / n_new for t in ours["times_s"]], floor["floor_xla"])
            our_tokens, hf_tokens = ours_tokens(), hf_tokens_of()
            speedup = common.paired_ratio(theirs["times_s"], ours["times_s"])
            if greedy and batch == profile_batch:
                segment = default_segment(n_new)  # what our generate used
                with tempfile.TemporaryDirectory() as trace_dir:
                    profile = decode_profile(ours_run, n_new, 1e3 * ours["median_s"] / n_new, trace_dir)
                profile[1].update(batch=batch, floor_ms=floor_xla, over_floor=overhead["median"],
                                  one_loop=common.paired_ratio(timing["ours_one_loop"]["times_s"],
                                                               ours["times_s"]),
                                  segment=segment, segments=len(segment_ends(n_new, segment)))
                if size in buildup_sizes:
                    buildup = decode_buildup(params, cfg, one_loop_run, batch, prompt_len, n_new,
                                             repeats)
                    profile[1]["buildup"] = buildup[1]
            ours_tps = batch * n_new / ours["median_s"]
            hf_tps = batch * n_new / theirs["median_s"]
            decoding = "greedy" if greedy else f"sample T={TEMPERATURE}" + (
                f" top-p {top_p}" if top_p < 1 else "")
            ratios[(batch, decoding)] = speedup["median"]
            same = f"{(our_tokens == hf_tokens).mean():.0%}" if greedy else "-"
            rows.append([batch, decoding, round(ours_tps, 1), round(hf_tps, 1),
                         round(speedup["median"], 2),
                         f"{speedup['min']:.2f}-{speedup['max']:.2f}",
                         round(1e3 * ours["median_s"] / n_new, 2),
                         round(1e3 * theirs["median_s"] / n_new, 2), round(compile_s, 1),
                         round(2 * matmul_params * ours_tps / 1e9, 1),
                         round(2 * matmul_params * hf_tps / 1e9, 1),
                         round(4 * matmul_params * n_new / ours["median_s"] / 1e9, 1),
                         round(floor_xla, 2), round(floor_torch, 2), round(bound["median"], 1),
                         round(overhead["median"], 2),
                         f"{our_tokens.shape[1]} / {hf_tokens.shape[1]}", same])
            print(f"[{size}] batch {batch} {decoding}: ours {ours_tps:.0f} tok/s, transformers "
                  f"{hf_tps:.0f} tok/s, ratio {speedup['median']:.2f} "
                  f"({speedup['min']:.2f}-{speedup['max']:.2f} over {repeats} rounds)", flush=True)
    table = {"title": title,
             "columns": ["batch", "decoding", "ours tok/s", "transformers tok/s", "ratio",
                         "ratio range", "ours ms/step", "transformers ms/step", "ours compile s",
                         "ours GFLOP/s", "transformers GFLOP/s", "ours weights GB/s",
                         "XLA matmul floor ms/step", "torch matmul floor ms/step", "ratio bound",
                         "ours / XLA floor",
                         "new tokens (ours / transformers)", "greedy same"],
             "rows": rows}
    tables = [table]
    if profile is not None:
        tables.append({"title": f"{size}: where a decode step goes (batch {profile[1]['batch']} "
                                "greedy, XLA kernel time from a jax.profiler trace)",
                       "columns": ["part", "ms/step", "share", "kernels/step"], "rows": profile[0]})
    if buildup is not None:
        tables.append({"title": f"{size}: the decode step built up from its parts (batch "
                                f"{profile[1]['batch']} greedy, untraced, timed in turns)",
                       "columns": ["stage", "ms/step", "+ ms/step"], "rows": buildup[0]})
    return tables, ratios, (profile[1] if profile else None)


def profile_notes(profiles: dict) -> list[str]:
    """What the decode-step profiles say bounds each size."""
    notes = []
    for size, prof in profiles.items():
        if not prof:
            continue
        parts = prof["parts"]
        matmul = sum(v for k, v in parts.items() if k.startswith(("LM head", "weight matmuls")))
        attention = sum(v for k, v in parts.items() if k.startswith("attention"))
        rest = prof["kernel_ms"] - matmul - attention
        notes.append(
            f"{size}, batch {prof['batch']} greedy, profile: {prof['kernels']:.0f} XLA kernels per "
            f"decode step, {prof['kernel_ms']:.2f} ms of kernel time (traced): weight matmuls + LM "
            f"head {matmul:.2f} ms ({matmul / prof['kernel_ms']:.0%}; the same matmuls alone, "
            f"untraced, in a loop of nothing else: {prof['floor_ms']:.2f} ms; the untraced step is "
            f"{prof['over_floor']:.1f}x the floor, per round), attention over the "
            f"cache {attention:.2f} ms ({attention / prof['kernel_ms']:.0%}), everything else "
            f"{rest:.2f} ms ({rest / prof['kernel_ms']:.0%}). Tracing adds a few microseconds per "
            "kernel, so compare shares, and the wall time row for the untraced step.")
        one = prof["one_loop"]
        notes.append(
            f"{size}, batch {prof['batch']} greedy, cache segments: our generate grows its KV "
            f"cache in {prof['segments']} segment(s) of {prof['segment']} new tokens "
            "(rlaif_jax.sampling); the same generate with one loop over a full-width cache, timed "
            f"in the same rounds, took {one['median']:.2f}x as long (median of per-round ratios, "
            f"{one['min']:.2f}-{one['max']:.2f}).")
        if "buildup" in prof:
            b = list(prof["buildup"].values())
            notes.append(
                f"{size}, batch {prof['batch']} greedy, built up untraced in turns: weight matmuls "
                f"+ LM head {b[0]:.2f} ms/step, with layer norms, biases and GELU {b[1]:.2f}, with "
                f"the KV-cache write {b[2]:.2f}, reading every cache slot (a sum) instead of "
                f"attending {b[3]:.2f}, with the attention over the cache {b[4]:.2f}; our generate "
                f"with one loop over the same full-width cache "
                f"{b[5]:.2f}. The attention over the cache adds {b[4] - b[2]:.2f} ms, "
                f"{(b[4] - b[2]) / b[5]:.0%} of the real step; merely reading the cache adds "
                f"{b[3] - b[2]:.2f} ms.")
    return notes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny, batch 8, 16 tokens, one repeat")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["tiny", "mid"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--sample-batches", type=int, nargs="*", default=[8],
                   help="batch sizes also timed with sampling (greedy is timed at every batch)")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (both sides once each)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus for the sampling rows (both sides)")
    p.add_argument("--results-dir", type=pathlib.Path, default=common.RESULTS,
                   help="where generate.json goes (default benchmarks/results)")
    p.add_argument("--profile-batch", type=int, default=8,
                   help="batch size whose greedy decode step is profiled by part (0: none)")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                   help="torch intra-op threads (default os.cpu_count())")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.sample_batches = ["tiny"], [8], [8]
        args.new_tokens, args.repeats = 16, 1
    if min(args.batches) < 1 or args.new_tokens < 1 or args.prompt_len < 2 or args.repeats < 1:
        p.error("batches, --new-tokens and --repeats must be >= 1, --prompt-len >= 2")
    if not 0 < args.top_p <= 1:
        p.error("--top-p must be in (0, 1]")
    common.RESULTS = args.results_dir

    torch.set_num_threads(args.torch_threads)
    watch = common.CpuWatch()
    tables, headline, targets = [], {}, []
    profiles = {}
    for size in args.sizes:
        size_tables, ratios, profiles[size] = bench_size(
            size, args.batches, args.sample_batches, args.prompt_len, args.new_tokens, args.top_p,
            args.repeats, args.profile_batch)
        tables.extend(size_tables)
        for (batch, decoding), ratio in ratios.items():
            headline[f"{size}_b{batch}_{decoding.split()[0]}_ratio"] = round(ratio, 2)
        if (8, "greedy") in ratios:
            value = ratios[(8, "greedy")]
            targets.append({"name": f"generation {size}, batch 8 greedy: x transformers",
                            "value": round(value, 2), "target": TARGET_RATIO,
                            "met": value >= TARGET_RATIO})
    notes = [
        f"Both sides float32 on the CPU; torch.set_num_threads({torch.get_num_threads()}) "
        f"(os.cpu_count() = {os.cpu_count()}), generate under torch.inference_mode() with its "
        f"default dynamic KV cache; JAX on {jax.device_count()} {jax.devices()[0].platform} "
        "device(s), one used.",
        "Same weights (saved by transformers, imported by rlaif_jax.models.hf_import), same "
        "left-padded prompts; EOS unreachable on both sides, every row checked to get all new tokens.",
        f"{args.repeats} rounds after a warm-up (ours: the first call, which compiles, once per "
        "batch size and decoding; the compile is given apart, not in tok/s; transformers: a "
        "generate of 8 tokens); in each round both sides run once, in turns (the order reverses "
        "every round). tok/s and ms/step: per-side medians; ratio: the median of the per-round "
        "ratios (transformers time / ours), its min-max in 'ratio range'.",
        "GFLOP/s = 2 x matmul parameters (12 L D^2 + V D) per generated token; weights GB/s = "
        "4 bytes x matmul parameters read per decode step: high GB/s at batch 1 means the step "
        "streams the weights (memory-bound); GFLOP/s at batch 32 against the machine's matmul "
        "rate shows how matmul-bound it is; ms/step that hardly changes with batch at the tiny "
        "size is per-step overhead.",
        "Matmul floor: ms per step of the step's weight matmuls alone (4 per block + the LM "
        f"head, at the batch size; XLA: a jitted loop of {FLOOR_STEPS} steps; torch: a Python "
        "loop of the same matmuls under inference_mode), timed in the same rounds as the two generates. A "
        "step cannot be faster than its floor, so 'ratio bound' = transformers ms/step / XLA "
        "floor is the most our sampler could reach against transformers if its step were "
        "nothing but these matmuls; 'ours / XLA floor' is our own overhead (attention, norms, "
        "sampling, loop). Both are medians of per-round ratios.",
    ]
    notes.extend(profile_notes(profiles))
    other = watch.other_cores()
    if other is not None:
        notes.append(f"Other processes kept {other:.2f} of the {os.cpu_count()} cores busy on "
                     "average during this run (/proc/stat less this process's own CPU time)"
                     + (": torch's OpenMP threads slow down far more than XLA's under "
                        "contention, so these ratios overstate ours; rerun on an idle machine."
                        if other > 0.25 else "."))
    path = write_result("generate", {
        "title": "Generation: compiled KV-cache sampler vs transformers generate",
        "quick": args.quick, "tables": tables, "headline": headline, "targets": targets,
        "notes": notes})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
