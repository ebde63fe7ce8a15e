"""Decode-speed benchmark for :func:`rlaif_jax.sampling.make_generate_fn`.

    python benchmarks/bench_sampling.py [--batch 1 8 32] [--repeats 5] [--top-p 0.9] ...

Uses the embedded default model (``configs/tiny.py``: vocab 4096, 512 positions,
128 wide, 4 layers, 4 heads, ~1.4M parameters) with random weights, prompts of
96 tokens and 384 new tokens, sampled at the default temperature 0.7.

Every step of the decode loop runs: ``eos_id`` is set to ``vocab_size``, an id
outside ``[0, vocab_size)`` that neither sampling nor argmax can ever produce.
The script checks this after every call (all rows have ``lengths ==
max_new_tokens`` and ``done`` False), so the timed work is exactly one prefill
plus ``max_new_tokens - 1`` decode steps per call.

Each configuration is compiled and warmed up by one call, then timed over
``--repeats`` calls (median reported). ``ms/step`` is the median call time
divided by ``max_new_tokens`` (so it includes the prefill, amortised); ``tok/s``
counts generated tokens over all rows (``batch * max_new_tokens / time``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

try:  # the installed rlaif_jax, or one put first on PYTHONPATH to benchmark another version
    import rlaif_jax
except ImportError:  # not installed: this checkout
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import rlaif_jax

from rlaif_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel, count_params  # noqa: E402
from rlaif_jax.sampling import SamplingParams, left_pad, make_generate_fn  # noqa: E402

# configs/tiny.py
CONFIG = GPT2Config(vocab_size=4096, n_positions=512, n_embd=128, n_layer=4, n_head=4)


def _prompts(batch: int, prompt_len: int, seed: int = 0):
    """Left-padded random prompts of varied length (some rows fully use ``prompt_len``)."""
    rs = np.random.RandomState(seed)
    lengths = rs.randint(prompt_len // 4, prompt_len + 1, batch)
    lengths[0] = prompt_len
    prompts = [rs.randint(0, CONFIG.vocab_size, n).tolist() for n in lengths]
    return left_pad(prompts, prompt_len, pad_id=0)


def bench(generate, params, batch: int, prompt_len: int, n_new: int, repeats: int) -> dict:
    ids, mask = (jnp.asarray(x) for x in _prompts(batch, prompt_len))

    def call(seed):
        out = generate(params, ids, mask, jax.random.key(seed))
        out = jax.block_until_ready(out)
        # EOS can never be emitted, so every row must have run all n_new steps.
        assert (np.asarray(out["lengths"]) == n_new).all() and not np.asarray(out["done"]).any()
        return out

    t0 = time.perf_counter()
    call(0)  # compile + warm up
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        call(r + 1)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return dict(batch=batch, compile_s=compile_s, median_s=med, min_s=min(times),
                ms_per_step=1e3 * med / n_new, tok_s=batch * n_new / med)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--prompt-len", type=int, default=96)
    p.add_argument("--max-new-tokens", type=int, default=384)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per batch size (median reported)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true")
    args = p.parse_args(argv)

    model = GPT2LMHeadModel(CONFIG)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    sampling = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        eos_id=CONFIG.vocab_size,  # out of range: never sampled, so all steps run
        pad_id=0,
    )
    generate = make_generate_fn(model, sampling, args.prompt_len)

    print(f"rlaif_jax from {os.path.dirname(rlaif_jax.__file__)}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs, {platform.machine()}); "
          f"model {count_params(params) / 1e6:.2f}M params; prompt_len {args.prompt_len}, "
          f"max_new_tokens {args.max_new_tokens}; {sampling}")
    print(f"{'batch':>5} {'compile s':>10} {'median s':>9} {'min s':>7} {'ms/step':>8} {'tok/s':>9}")
    for batch in args.batch:
        r = bench(generate, params, batch, args.prompt_len, args.max_new_tokens, args.repeats)
        print(f"{r['batch']:>5} {r['compile_s']:>10.2f} {r['median_s']:>9.3f} {r['min_s']:>7.3f} "
              f"{r['ms_per_step']:>8.2f} {r['tok_s']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
