"""How the SFT and PPO steps scale: time and peak memory against model width, sequence length and
batch, and per-device memory under fsdp on 1/2/4/8 CPU devices.

    python benchmarks/bench_scaling.py [--quick]

Writes benchmarks/results/scaling.json and the curves as benchmarks/results/scaling.png.

* SFT step: the stage's jitted step (`train.sft.make_train_step`, the stage's optimizer, state
  sharded and donated as in `train.sft.train`), random weights and tokens.
* PPO step: the stage's jitted update (`train.ppo.make_update_fn`) with a separate critic, one
  epoch of one minibatch, i.e. one clipped-PPO step of policy and critic (forward, backward, two
  Adam updates) plus the rollout's GAE and whitening, on a synthetic rollout of
  `prompt_len + response` tokens.
* Peak memory: XLA's buffer assignment of the compiled step (`memory_analysis()`: arguments,
  outputs and temporaries alive at the peak, per device), not the process RSS.
* fsdp: each device count in its own process (`--xla_force_host_platform_device_count=N`), mesh
  1 data x N fsdp with the config's `fsdp_min_size`; bytes of params + Adam state on each device
  (`addressable_shards`), the compiled step's per-device peak, and `rlaif_jax.memory.estimate`'s
  figures for the same run. N fake devices share the same cores, so their step time is not a
  speed-up measurement.

One axis moves at a time from the base point (configs/tiny.py's model: 4 layers, 128 wide,
vocab 4096; SFT 8 x 256 tokens, PPO 16 rollouts of 96 prompt + 128 response tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_train import log, make_batch, optim_config  # noqa: E402

MODEL = dict(n_layer=4, n_embd=128, n_head=4, vocab=4096)
SFT_BASE = dict(MODEL, batch=8, seq=256)
PPO_BASE = dict(MODEL, batch=16, prompt=96, response=128)
SWEEPS = {"n_embd": (64, 128, 256), "seq": (128, 256, 512), "batch": (4, 8, 16)}
PPO_SWEEPS = {"n_embd": (64, 128, 256), "response": (64, 128, 256), "batch": (8, 16, 32)}
# --quick: a 2-layer model, two points of one axis each (compilation dominates a quick run).
QUICK = {"sft": dict(MODEL, n_layer=2, batch=4, seq=64),
         "ppo": dict(MODEL, n_layer=2, batch=4, prompt=32, response=32),
         "sweeps": {"batch": (2, 4)}, "ppo_sweeps": {"batch": (4, 8)}, "devices": (1, 2)}
DEVICES = (1, 2, 4, 8)
FSDP_SHAPE = dict(MODEL, batch=8, seq=256)
FSDP_MIN_SIZE = 2 ** 14  # config.base_config's mesh.fsdp_min_size


def gpt2_config(shape: dict, positions: int):
    from rlaif_jax.models.gpt2 import GPT2Config
    return GPT2Config(vocab_size=shape["vocab"], n_positions=positions, n_embd=shape["n_embd"],
                      n_layer=shape["n_layer"], n_head=shape["n_head"])


def make_mesh(fsdp: int = 1):
    from rlaif_jax import sharding
    from rlaif_jax.config import base_config

    mesh_cfg = base_config().mesh
    mesh_cfg.data, mesh_cfg.fsdp = (1, fsdp) if fsdp > 1 else (-1, 1)
    return sharding.make_mesh(mesh_cfg)


def peak_bytes(compiled) -> int:
    """Bytes XLA's buffer assignment keeps live per device: arguments + outputs + temporaries,
    less the outputs aliased to (donated) arguments. (`peak_memory_in_bytes` is not filled in
    by the CPU backend.)"""
    s = compiled.memory_analysis()
    return int(s.argument_size_in_bytes + s.output_size_in_bytes + s.temp_size_in_bytes
               - s.alias_size_in_bytes)


def timed(step, state, batch, repeats: int) -> tuple[float, object]:
    """Median seconds of `state = step(state, batch)` (donated state) after one warm-up call."""
    import jax

    holder = [state]

    def call():
        holder[0], metrics = step(holder[0], batch)
        jax.block_until_ready((holder[0], metrics))

    return common.median_time(call, repeats=repeats)["median_s"], holder[0]


def sft_point(shape: dict, repeats: int, mesh) -> dict:
    """Time, compiled peak and per-device state bytes of one SFT step of `shape` on `mesh`."""
    import jax
    import jax.numpy as jnp

    from rlaif_jax import sharding
    from rlaif_jax.models.build import make_lm
    from rlaif_jax.train.optim import make_optimizer
    from rlaif_jax.train.sft import make_train_step

    model = make_lm(gpt2_config(shape, shape["seq"]))
    optimizer = make_optimizer(optim_config())

    def init(rng):
        params = model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
        return {"params": params, "opt_state": optimizer.init(params),
                "loop": {"step": jnp.zeros((), jnp.int32), "rng": rng}}

    rng = jax.random.PRNGKey(0)
    state_sh = sharding.state_shardings(jax.eval_shape(init, rng), mesh, FSDP_MIN_SIZE)
    state = jax.jit(init, out_shardings=state_sh)(rng)
    state_bytes = max(sharding.bytes_per_device(state).values())
    batch_sh = sharding.batch_sharding(mesh, batch_dim=1, ndim=3)
    batch = {k: jax.device_put(v[None], batch_sh) for k, v in make_batch(shape).items()}
    step = jax.jit(make_train_step(model, optimizer, deterministic=True),
                   in_shardings=(state_sh, {k: batch_sh for k in batch}),
                   out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,))
    compiled = step.lower(state, batch).compile()  # one compilation, called directly below
    seconds, _ = timed(compiled, state, batch, repeats)
    peak = peak_bytes(compiled)
    return {"step_s": seconds, "peak_bytes": peak, "state_bytes_per_device": state_bytes,
            "tokens": shape["batch"] * shape["seq"]}


def ppo_point(shape: dict, repeats: int, mesh) -> dict:
    """Time and compiled peak of one PPO update (1 epoch x 1 minibatch, separate critic)."""
    import jax
    import jax.numpy as jnp

    from rlaif_jax import sharding
    from rlaif_jax.config import base_config
    from rlaif_jax.models.build import make_lm
    from rlaif_jax.train.ppo import make_optimizer, make_update_fn
    from rlaif_jax.train.rollout import ROLLOUT_NDIM, ActorCritic

    B, P, N = shape["batch"], shape["prompt"], shape["response"]
    cfg = base_config().ppo
    cfg.epochs, cfg.minibatch_size = 1, B
    policy = make_lm(gpt2_config(shape, P + N))
    ac = ActorCritic(policy, "separate", 1.0)
    policy_opt, critic_opt = make_optimizer(cfg.lr, 1.0), make_optimizer(cfg.critic_lr, 1.0)

    def init(rng):
        ids = jnp.zeros((1, 8), jnp.int32)
        params = policy.init(rng, ids)["params"]
        critic = {"transformer": ac.trunk.init(rng, ids)["params"],
                  "value_head": ac.value_head.init(rng, jnp.zeros((1, 1, shape["n_embd"])))["params"]}
        return {"params": params, "critic": critic, "policy_opt": policy_opt.init(params),
                "critic_opt": critic_opt.init(critic),
                "loop": {"iteration": jnp.zeros((), jnp.int32), "rng": rng,
                         "beta": jnp.asarray(cfg.kl_coef, jnp.float32)}}

    rng = jax.random.PRNGKey(0)
    state_sh = sharding.state_shardings(jax.eval_shape(init, rng), mesh, FSDP_MIN_SIZE)
    state = jax.jit(init, out_shardings=state_sh)(rng)
    r = np.random.default_rng(0)
    rollout = {"prompt_ids": r.integers(0, shape["vocab"], (B, P), dtype=np.int32),
               "prompt_mask": np.ones((B, P), np.int32),
               "tokens": r.integers(0, shape["vocab"], (B, N), dtype=np.int32),
               "response_mask": np.ones((B, N), np.float32),
               "logp": np.full((B, N), -np.log(shape["vocab"]), np.float32),
               "ref_logp": np.full((B, N), -np.log(shape["vocab"]), np.float32),
               "values": np.zeros((B, N), np.float32), "kl": np.zeros((B, N), np.float32),
               "reward": r.standard_normal(B).astype(np.float32),
               "done": np.ones(B, bool), "lengths": np.full(B, N, np.int32)}
    rollout_sh = {k: sharding.batch_sharding(mesh, 0, nd) for k, nd in ROLLOUT_NDIM.items()}
    rollout = {k: jax.device_put(v, rollout_sh[k]) for k, v in rollout.items()}
    update = jax.jit(make_update_fn(ac, cfg, P, policy_opt, critic_opt, mesh),
                     in_shardings=(state_sh, rollout_sh),
                     out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,))
    compiled = update.lower(state, rollout).compile()
    seconds, _ = timed(compiled, state, rollout, repeats)
    peak = peak_bytes(compiled)
    return {"step_s": seconds, "peak_bytes": peak, "tokens": B * (P + N)}


def sweep(point_fn, base: dict, sweeps: dict, repeats: int, mesh, label: str) -> list[dict]:
    """One axis at a time from `base`; the base point is measured once and shared."""
    cache, rows = {}, []
    for axis, values in sweeps.items():
        for v in values:
            shape = dict(base, **{axis: v})
            if axis == "n_embd":
                shape["n_head"] = max(1, v // 32)  # head size 32, as in the tiny model
            key = json.dumps(shape, sort_keys=True)
            if key not in cache:
                log(f"{label} {axis}={v}")
                cache[key] = point_fn(shape, repeats, mesh)
            rows.append({"axis": axis, "value": v, "shape": shape, **cache[key]})
    return rows


def fsdp_row(devices: int, shape: dict, point: dict) -> dict:
    """`point` (an SFT point on 1 data x `devices` fsdp) with memory.estimate's figures."""
    from rlaif_jax import memory
    from rlaif_jax.config import base_config

    c = base_config()
    c.model.n_positions, c.model.n_embd = shape["seq"], shape["n_embd"]
    c.model.n_layer, c.model.n_head = shape["n_layer"], shape["n_head"]
    c.tokenizer.vocab_size, c.data.max_len = shape["vocab"], shape["seq"]
    c.sft.batch_size, c.sft.grad_accum = shape["batch"], 1
    c.mesh.data, c.mesh.fsdp = 1, devices
    est = memory.estimate(c, devices)["stages"]["sft"]
    return {**point, "devices": devices, "estimate_state_bytes": est["state"],
            "estimate_total_bytes": est["total"]}


def fsdp_child(devices: int, shape: dict, repeats: int) -> None:
    import jax

    assert jax.device_count() == devices, jax.devices()
    print(json.dumps(fsdp_row(devices, shape, sft_point(shape, repeats, make_mesh(devices)))))


def fsdp_run(devices: int, shape: dict, repeats: int, sft_rows: list[dict]) -> dict:
    """One device count in its own process; 1 device reuses the sweep's point of `shape`."""
    same = next((r for r in sft_rows if r["shape"] == shape), None)
    if devices == 1 and same is not None:
        point = {k: same[k] for k in ("step_s", "peak_bytes", "state_bytes_per_device", "tokens")}
        return fsdp_row(1, shape, point)
    log(f"fsdp on {devices} device(s)")
    env = dict(os.environ, XLA_FLAGS=" ".join(
        x for x in (os.environ.get("XLA_FLAGS", ""),
                    f"--xla_force_host_platform_device_count={devices}") if x))
    proc = subprocess.run([sys.executable, __file__, "--child-fsdp", str(devices),
                           "--child-shape", json.dumps(shape), "--repeats", str(repeats)],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"fsdp child on {devices} devices failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(sft_rows, ppo_rows, fsdp_rows, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_order = [("n_embd", "model width (n_embd)"), ("seq", "sequence length"),
                  ("batch", "batch (sequences)")]
    fig, ax = plt.subplots(2, 4, figsize=(17, 7.5))
    for col, (axis, label) in enumerate(axes_order):
        for rows, name, ax_name, marker in ((sft_rows, "SFT step", axis, "o"),
                                            (ppo_rows, "PPO step",
                                             "response" if axis == "seq" else axis, "s")):
            pts = [r for r in rows if r["axis"] == ax_name]
            if not pts:
                continue
            xs = [r["value"] for r in pts]
            suffix = " (x = response tokens)" if name == "PPO step" and axis == "seq" else ""
            ax[0, col].plot(xs, [1e3 * r["step_s"] for r in pts], marker=marker,
                            label=name + suffix)
            ax[1, col].plot(xs, [r["peak_bytes"] / 2 ** 20 for r in pts], marker=marker,
                            label=name + suffix)
        for row, ylabel in ((0, "ms per step"), (1, "compiled peak memory (MiB)")):
            ax[row, col].set_xscale("log", base=2)
            ax[row, col].set_yscale("log")
            ax[row, col].set_xlabel(label)
            ax[row, col].set_ylabel(ylabel)
            ax[row, col].grid(True, which="both", alpha=0.3)
            if ax[row, col].lines:
                ax[row, col].legend(fontsize=8)
    if fsdp_rows:
        xs = [r["devices"] for r in fsdp_rows]
        a = ax[0, 3]
        a.plot(xs, [r["state_bytes_per_device"] / 2 ** 20 for r in fsdp_rows], "o-",
               label="params + Adam state (measured)")
        a.plot(xs, [r["estimate_state_bytes"] / 2 ** 20 for r in fsdp_rows], "x--",
               label="params + grads + Adam (memory.estimate)")
        a.plot(xs, [r["peak_bytes"] / 2 ** 20 for r in fsdp_rows], "s-",
               label="compiled step peak")
        a.set_xscale("log", base=2)
        a.set_xlabel("CPU devices (1 data x N fsdp)")
        a.set_ylabel("MiB per device")
        a.set_title("SFT under fsdp, per device", fontsize=9)
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
        b = ax[1, 3]
        b.plot(xs, [1e3 * r["step_s"] for r in fsdp_rows], "o-")
        b.set_xscale("log", base=2)
        b.set_xlabel("CPU devices (fake, sharing the same cores)")
        b.set_ylabel("ms per SFT step")
        b.grid(True, alpha=0.3)
    fig.suptitle("rlaif_jax step scaling (one axis at a time from the tiny model's base point)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mib(x):
    return None if x is None else round(x / 2 ** 20, 2)


def build_result(args, sft_rows, ppo_rows, fsdp_rows, png: str) -> dict:
    def table(title, rows, unit):
        return {"title": title,
                "columns": ["axis", "value", f"{unit}", "ms/step", "tokens/s",
                            "compiled peak MiB"],
                "rows": [[r["axis"], r["value"], r["tokens"], round(1e3 * r["step_s"], 1),
                          round(r["tokens"] / r["step_s"]), _mib(r["peak_bytes"])]
                         for r in rows]}

    tables = [table("SFT step vs width / sequence / batch (others at the base point)", sft_rows,
                    "tokens/step"),
              table("PPO step (policy + separate critic, one minibatch) vs width / response / "
                    "batch", ppo_rows, "tokens/step")]
    notes = [f"Curves: {png}.",
             "One axis moves at a time; width changes keep head size 32.",
             "Peak memory is XLA's compiled buffer assignment per device (arguments + outputs + "
             "temporaries live at the peak), not RSS."]
    headline = {}
    if fsdp_rows:
        base = fsdp_rows[0]
        tables.append({
            "title": "SFT under fsdp: bytes per device (1 data x N fsdp, fsdp_min_size "
                     f"{FSDP_MIN_SIZE})",
            "columns": ["devices", "params + Adam state MiB", "x of 1 device",
                        "memory.estimate state MiB", "compiled step peak MiB",
                        "memory.estimate SFT total MiB", "ms/step (fake devices)"],
            "rows": [[r["devices"], _mib(r["state_bytes_per_device"]),
                      round(r["state_bytes_per_device"] / base["state_bytes_per_device"], 3),
                      _mib(r["estimate_state_bytes"]), _mib(r["peak_bytes"]),
                      _mib(r["estimate_total_bytes"]), round(1e3 * r["step_s"], 1)]
                     for r in fsdp_rows]})
        last = fsdp_rows[-1]
        headline[f"fsdp_state_bytes_ratio_{last['devices']}_vs_1"] = round(
            last["state_bytes_per_device"] / base["state_bytes_per_device"], 3)
        notes.append("fsdp state bytes: arrays under fsdp_min_size elements (biases, LayerNorm "
                      "scales, Adam's step count) stay replicated, so the ratio sits above 1/N; "
                      "memory.estimate's state term also counts gradients (4 x params), which "
                      "only exist inside the step.")
    for rows, name in ((sft_rows, "sft"), (ppo_rows, "ppo")):
        for axis in {r["axis"] for r in rows}:
            pts = sorted((r for r in rows if r["axis"] == axis), key=lambda r: r["value"])
            if len(pts) >= 2:
                # Time growth over the axis' range, against the range itself (1 = linear).
                growth = pts[-1]["step_s"] / pts[0]["step_s"]
                headline[f"{name}_{axis}_time_growth_over_{pts[-1]['value'] // pts[0]['value']}x"] = \
                    round(growth, 2)
    return {"title": "Step time and memory scaling; fsdp per-device memory", "quick": args.quick,
            "tables": tables, "headline": headline, "targets": [], "notes": notes,
            "raw": {"sft": sft_rows, "ppo": ppo_rows, "fsdp": fsdp_rows}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes, few points (a smoke run)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per point")
    p.add_argument("--results-dir", default=None, help="write JSON + PNG here instead of "
                   "benchmarks/results/")
    p.add_argument("--child-fsdp", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-shape", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    repeats = args.repeats or 2
    if args.child_fsdp:
        return fsdp_child(args.child_fsdp, json.loads(args.child_shape), repeats)

    q = args.quick
    mesh = make_mesh()
    sft_rows = sweep(sft_point, QUICK["sft"] if q else SFT_BASE,
                     QUICK["sweeps"] if q else SWEEPS, repeats, mesh, "SFT")
    ppo_rows = sweep(ppo_point, QUICK["ppo"] if q else PPO_BASE,
                     QUICK["ppo_sweeps"] if q else PPO_SWEEPS, repeats, mesh, "PPO")
    fsdp_shape = QUICK["sft"] if q else FSDP_SHAPE
    fsdp_rows = [fsdp_run(n, fsdp_shape, repeats, sft_rows)
                 for n in (QUICK["devices"] if q else DEVICES)]

    if args.results_dir:
        common.RESULTS = pathlib.Path(args.results_dir)
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    png = common.RESULTS / "scaling.png"
    plot(sft_rows, ppo_rows, fsdp_rows, png)
    path = common.write_result("scaling", build_result(args, sft_rows, ppo_rows, fsdp_rows,
                                                       png.name))
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
