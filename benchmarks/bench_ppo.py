"""PPO iteration speed: `rlaif_jax.train.ppo` vs TRL's PPOTrainer (`trl.experimental.ppo`).

    python -m benchmarks.bench_ppo [--quick] [--sizes tiny medium] [--batch N] [--minibatch M]
                                   [--epochs 2] [--response-len 64] [--prompt-len 64] [--iters 3]

Sizes: tiny = configs/tiny.py's GPT-2 (4 layers x 128, batch 32 in minibatches of 16); medium =
6 layers x 512 (batch 16 in minibatches of 8); both with a 4096-token vocabulary.

One PPO iteration = rollout (sample `--batch` responses of `--response-len` tokens at temperature
1) + scoring (policy and reference log-probs, values, reward-model score, per-token KL, GAE) +
update (`--epochs` passes over the batch in minibatches of `--minibatch`, one optimizer step per
minibatch, policy and a separate critic trunk trained together). Both sides run it in float32 on
the CPU with the same models and the same prompts:

* models: a random `transformers` GPT2LMHeadModel per size (its own N(0, 0.02) init) is the
  policy, its copy the frozen reference; a random GPT2ForSequenceClassification (one label) of
  the same size is the reward model, its copy the initial critic (TRL's value model; our
  `ppo.critic=separate`, initialised from the reward model). Ours imports the same directories
  (`import_stage.run` for the policy, `hf_import.load_reward_model` for the reward checkpoint);
* tokenizer: the byte-level BPE `rlaif-jax sft` trains (vocabulary 4096), on the training prompts;
* prompts: the training split's prompts, left-padded / left-truncated to `--prompt-len` tokens by
  `sampling.left_pad` (TRL gets exactly these rows; each side draws its own seeded batches);
* response length: both stop only when every row has emitted EOS (ours: the sampler's stop
  condition; TRL: `stop_token="eos"`). With random weights a row emits EOS with probability about
  1/4096 per token, so every iteration runs all `--response-len` steps on both sides: the
  response widths actually sampled are recorded and reported (`response width` column);
* TRL: `per_device_train_batch_size=batch`, `gradient_accumulation_steps=1`,
  `num_mini_batches=batch/minibatch` (so one optimizer step per minibatch, as ours),
  `num_ppo_epochs`, `response_length`, `temperature=1`, `local_rollout_forward_batch_size=batch`,
  `bf16=False`, `gradient_checkpointing=False` (PPOConfig defaults both to True; ours does not
  recompute activations), `num_sample_generations=0`, `use_cpu=True`,
  `torch.set_num_threads(os.cpu_count())`. JAX's CPU client uses every core by default.

Each side runs in its own subprocess (so neither's thread pools compete with the other's), for
1 + `--iters` iterations. Seconds per iteration are the median of the `--iters` iterations after
the first; the first is reported apart (ours: it includes XLA compilation of the sampler, the
scoring function and the update; the compile estimate is first minus median). Ours: the
`rollout_s` + `update_s` that `ppo.train` logs per iteration in `W/metrics/ppo.jsonl`. TRL: time
between consecutive `on_step_end` callbacks (so TRL's per-iteration logging and `gc.collect()` are
included), split into rollout (until the first forward pass with gradients) and update by
timing hooks on `ppo_trainer.batch_generation` and `ppo_trainer.forward`.

Our first iteration compiles cold (no persistent XLA cache) unless `--compile-cache`; `--quick`
(a smoke run: tiny size, batch 8 in minibatches of 4, 32 + 16 tokens, one epoch, 2 timed
iterations) turns the cache on. `--workdir DIR` keeps the models, runs and worker results.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import common  # noqa: E402

# GPT-2 shapes. tiny = configs/tiny.py (4 layers x 128); medium = 6 layers x 512.
SIZES = {"tiny": dict(n_layer=4, n_embd=128, n_head=4),
         "medium": dict(n_layer=6, n_embd=512, n_head=8)}
# Default (batch, minibatch) per size: medium's update alone is ~1 TFLOP at batch 16 (see
# iteration_flops), which keeps the full run within minutes on 2 cores.
DEFAULT_BATCH = {"tiny": (32, 16), "medium": (16, 8)}
VOCAB = 4096  # configs/tiny.py's BPE
TRL_VERSION = "1.12.0"  # the last release with PPO (trl.experimental.ppo)
TARGET_RATIO = 3.0  # issue 7: a PPO iteration >= 3x faster than TRL's
KL_COEF = 0.05
LR = 3e-6


@dataclasses.dataclass
class Spec:
    """One comparison: the model size and the PPO shape, the same on both sides."""

    size: str
    batch: int = 32
    minibatch: int = 16
    epochs: int = 2
    response_len: int = 64
    prompt_len: int = 64
    iters: int = 3  # timed iterations, after one untimed first iteration
    seed: int = 0

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r} (known: {', '.join(SIZES)})")
        if min(self.batch, self.minibatch, self.epochs, self.response_len, self.iters) < 1:
            raise ValueError("batch, minibatch, epochs, response_len and iters must be >= 1")
        if self.batch % self.minibatch:
            raise ValueError(f"batch={self.batch} must be divisible by minibatch={self.minibatch}")
        if self.prompt_len < 2:
            raise ValueError("prompt_len must be >= 2")


# --------------------------------------------------------------------------------------------
# Shared inputs: tokenizer, prompts, random HF models (built once, in the parent process).

def train_prompts() -> list[str]:
    """The prompt texts of the default config's training split."""
    from rlaif_jax.config import base_config
    from rlaif_jax.data import sft_data
    from rlaif_jax.data.splits import build_splits

    data = base_config().data
    return [sft_data.prompt_text(r, data) for r in build_splits(data)["train"]]


def build_tokenizer(texts: list[str], directory: pathlib.Path):
    """A byte-level BPE (`data.tokenizer.train_bpe`, vocabulary 4096 as configs/tiny.py) trained
    on the prompts: it only shapes the prompt ids (responses are sampled)."""
    from rlaif_jax.data.tokenizer import load_tokenizer, train_bpe

    train_bpe(texts, VOCAB, min_frequency=2).save_pretrained(str(directory))
    return load_tokenizer(directory)


def prompt_rows(tokenizer, texts: list[str], prompt_len: int):
    """The prompts left-padded / left-truncated to `prompt_len` (ids [N, P] int32)."""
    from rlaif_jax.sampling import left_pad

    tokens = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return left_pad(tokens, prompt_len, tokenizer.pad_token_id)[0]


def build_models(spec: Spec, tokenizer, directory: pathlib.Path) -> dict:
    """Random policy and reward model of `spec.size`, saved with the tokenizer; returns paths."""
    import torch
    import transformers

    cfg = transformers.GPT2Config(
        vocab_size=max(VOCAB, len(tokenizer)), n_positions=spec.prompt_len + spec.response_len,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, num_labels=1, **SIZES[spec.size])
    paths = {"policy": directory / "policy", "reward": directory / "reward"}
    torch.manual_seed(spec.seed)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(paths["policy"]))
    torch.manual_seed(spec.seed + 1)
    transformers.GPT2ForSequenceClassification(cfg).save_pretrained(str(paths["reward"]))
    for path in paths.values():
        tokenizer.save_pretrained(str(path))
    return {k: str(v) for k, v in paths.items()}


# --------------------------------------------------------------------------------------------
# Our side: `ppo.train` on a workdir made from the HF directories.

def base_cache_dir() -> str:
    from rlaif_jax.config import base_config

    return base_config().compilation_cache


def ours_config(spec: Spec):
    from rlaif_jax.config import base_config, validate

    c = base_config()
    c.seed = spec.seed
    c.progress = False
    c.compilation_cache = ""  # the first iteration's compile is measured, not read from a cache
    c.model.n_positions = c.data.max_len = spec.prompt_len + spec.response_len
    c.model.update({k: v for k, v in SIZES[spec.size].items()})
    c.sample.max_prompt_len, c.sample.max_new_tokens = spec.prompt_len, spec.response_len
    p = c.ppo
    p.iterations = 1 + spec.iters
    p.prompts_per_iteration, p.minibatch_size, p.epochs = spec.batch, spec.minibatch, spec.epochs
    p.max_new_tokens, p.temperature = spec.response_len, 1.0
    p.critic = "separate"
    p.lr = p.critic_lr = LR
    p.kl_coef, p.adaptive_kl = KL_COEF, False
    p.exec_weight = p.ast_weight = 0.0
    p.track_rollout_quality = False  # no host work: the iteration is device work only
    p.log_every, p.checkpoint_every = 1, p.iterations  # one checkpoint, after the last iteration
    validate(c)
    return c


def run_ours(spec: Spec, paths: dict, workdir: pathlib.Path, compile_cache: bool = False) -> dict:
    """Imports the HF models into `workdir`, runs `ppo.train`; per-iteration times from its log.

    `compile_cache`: use the persistent XLA cache at the config's default path, as the CLI does.
    """
    import jax

    from rlaif_jax import import_stage
    from rlaif_jax.checkpoint import StageCheckpoints
    from rlaif_jax.metrics import read_metrics
    from rlaif_jax.models import hf_import
    from rlaif_jax.models.gpt2 import count_params
    from rlaif_jax.train import ppo

    summary = import_stage.run(paths["policy"], workdir)
    _, rm_params = hf_import.load_reward_model(paths["reward"])
    ckpts = StageCheckpoints(workdir / "checkpoints" / "reward", keep=1, async_save=False)
    ckpts.save(1, {"params": jax.tree.map(jax.numpy.asarray, rm_params)}, {"step": 1})
    ckpts.wait()
    ckpts.close()

    config = ours_config(spec)
    if compile_cache:
        jax.config.update("jax_compilation_cache_dir",
                          str(pathlib.Path(base_cache_dir()).expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    t0 = time.perf_counter()
    ppo.train(config, workdir)
    wall = time.perf_counter() - t0
    rows = [r for r in read_metrics(workdir / "metrics" / "ppo.jsonl") if "rollout_s" in r]
    iterations = [{"total_s": r["rollout_s"] + r["update_s"], "rollout_s": r["rollout_s"],
                   "update_s": r["update_s"], "response_width": int(r["response_width"]),
                   "mean_response_len": r["response_length"],
                   "finished_fraction": r["finished_fraction"]} for r in rows]
    return {"side": "ours", "params": summary["params"],
            "reward_params": count_params(rm_params), "iterations": iterations,
            "train_wall_s": wall, "devices": jax.device_count(),
            "platform": jax.devices()[0].platform}


# --------------------------------------------------------------------------------------------
# TRL's side: PPOTrainer.train() with timing hooks.

def trl_status() -> str | None:
    """TRL's installed version, or None when it is not installed."""
    if importlib.util.find_spec("trl") is None:
        return None
    return importlib.metadata.version("trl")


class _TrlClock:
    """Per-iteration times of a PPOTrainer run: iteration ends at `on_step_end`; the rollout ends
    at the first forward pass with gradients; generation is the `batch_generation` call; `gc_s`
    the `gc.collect()` calls the trainer makes (one in the rollout, one after each step)."""

    def __init__(self):
        self.iterations: list[dict] = []
        self._start = self._rollout_end = None
        self._gen_s = self._gc_s = 0.0
        self._width = None

    def wrap(self, module) -> None:
        import gc
        import types

        import torch

        generate, forward = module.batch_generation, module.forward

        def timed_collect(*args):
            t0 = time.perf_counter()
            out = gc.collect(*args)
            self._gc_s += time.perf_counter() - t0
            return out

        module.gc = types.SimpleNamespace(collect=timed_collect)

        def timed_generation(model, queries, *args, **kwargs):
            t0 = time.perf_counter()
            out = generate(model, queries, *args, **kwargs)
            self._gen_s += time.perf_counter() - t0
            self._width = int(out[0].shape[1] - queries.shape[1])
            return out

        def timed_forward(*args, **kwargs):
            if torch.is_grad_enabled() and self._rollout_end is None:
                self._rollout_end = time.perf_counter()
            return forward(*args, **kwargs)

        module.batch_generation, module.forward = timed_generation, timed_forward

    def start(self) -> None:
        self._start = time.perf_counter()

    def step_end(self) -> None:
        now = time.perf_counter()
        end = self._rollout_end or now
        self.iterations.append({"total_s": now - self._start, "rollout_s": end - self._start,
                                "update_s": now - end, "generate_s": self._gen_s,
                                "gc_s": self._gc_s, "response_width": self._width})
        self._start, self._rollout_end, self._gen_s, self._gc_s = now, None, 0.0, 0.0


def run_trl(spec: Spec, paths: dict, prompts, outdir: pathlib.Path) -> dict:
    """TRL's PPOTrainer on the same models and prompts for 1 + spec.iters iterations."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we know trl.experimental is unstable
    import torch
    import transformers
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    torch.set_num_threads(os.cpu_count())
    tokenizer = transformers.AutoTokenizer.from_pretrained(paths["policy"])
    tokenizer.padding_side = "left"  # rows are already left-padded to the same length
    fp32 = {"dtype": torch.float32}
    policy = transformers.AutoModelForCausalLM.from_pretrained(paths["policy"], **fp32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(paths["policy"], **fp32)
    reward = transformers.AutoModelForSequenceClassification.from_pretrained(paths["reward"],
                                                                             **fp32)
    value = transformers.AutoModelForSequenceClassification.from_pretrained(paths["reward"],
                                                                            **fp32)
    dataset = Dataset.from_dict({"input_ids": [list(map(int, row)) for row in prompts]})
    iterations = 1 + spec.iters
    args = PPOConfig(
        output_dir=str(outdir), seed=spec.seed, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, learning_rate=LR,
        per_device_train_batch_size=spec.batch, gradient_accumulation_steps=1,
        num_mini_batches=spec.batch // spec.minibatch, num_ppo_epochs=spec.epochs,
        total_episodes=spec.batch * iterations, local_rollout_forward_batch_size=spec.batch,
        response_length=spec.response_len, temperature=1.0, stop_token="eos",
        missing_eos_penalty=1.0, kl_coef=KL_COEF, num_sample_generations=0)

    clock = _TrlClock()

    class Timing(transformers.TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock.start()

        def on_step_end(self, *a, **k):
            clock.step_end()

    clock.wrap(trl_ppo)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref,
                         reward_model=reward, value_model=value, train_dataset=dataset,
                         eval_dataset=dataset.select(range(spec.batch)), callbacks=[Timing()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    if len(clock.iterations) != iterations:
        raise RuntimeError(f"TRL ran {len(clock.iterations)} iterations, expected {iterations}")
    return {"side": "trl", "version": trl_status(), "iterations": clock.iterations,
            "train_wall_s": wall, "torch_threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in policy.parameters())}


# --------------------------------------------------------------------------------------------
# Orchestration: one subprocess per side, then the result file.

def _worker_env() -> dict:
    """The parent's environment without forced fake devices (one CPU device, all cores)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_side(side: str, spec: Spec, paths: dict, prompts_file: pathlib.Path,
             workdir: pathlib.Path, compile_cache: bool = False, timeout: float = 1800) -> dict:
    """Runs one side in a fresh Python process; returns its result dict."""
    job = workdir / f"{side}.json"
    job.write_text(json.dumps({"spec": dataclasses.asdict(spec), "paths": paths,
                               "prompts": str(prompts_file), "workdir": str(workdir / side),
                               "compile_cache": compile_cache}))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_ppo", "--worker", side,
                           "--job", str(job)], cwd=ROOT, env=_worker_env(), capture_output=True,
                          text=True, timeout=timeout)
    out = workdir / side / "result.json"
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"bench_ppo {side} worker failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def worker(side: str, job_file: str) -> None:
    import numpy as np

    job = json.loads(pathlib.Path(job_file).read_text())
    spec, workdir = Spec(**job["spec"]), pathlib.Path(job["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    if side == "ours":
        result = run_ours(spec, job["paths"], workdir / "run", job["compile_cache"])
    else:
        result = run_trl(spec, job["paths"], np.load(job["prompts"]), workdir / "trainer")
    (workdir / "result.json").write_text(json.dumps(result))


def side_stats(result: dict) -> dict:
    """Median of the iterations after the first, per phase, and the first iteration apart."""
    first, timed = result["iterations"][0], result["iterations"][1:]
    stats = {k: statistics.median(it[k] for it in timed)
             for k in ("total_s", "rollout_s", "update_s")}
    stats["first_s"] = first["total_s"]
    stats["times_s"] = [round(it["total_s"], 3) for it in timed]
    stats["widths"] = sorted({it["response_width"] for it in result["iterations"]})
    for key in ("generate_s", "gc_s"):
        if key in first:
            stats[key] = statistics.median(it[key] for it in timed)
    return stats


def iteration_flops(spec: Spec, side: str) -> float:
    """Matmul FLOPs of one iteration (2 per multiply-add), from the shapes and each side's passes.

    Per token, a trunk (embeddings to final LN) is 2 * 12 L d^2 + attention 4 L d T (T = the
    context: full-sequence passes compute every causal score, masked or not) and the LM head
    2 d V. Rollout: sampling (prompt prefill, then R KV-cache steps with the head) and scoring:
    ours runs four trunks (policy, reference, critic, reward model) over the P + R positions and
    the LM head at the R response positions only, twice (policy, reference); TRL reuses the
    sampler's logits and runs three trunks (reference with its head at every position, value,
    reward). Update: epochs x 3 (forward + backward) x (policy and critic trunks + the policy's
    head: ours at the R response positions, TRL at all P + R).
    """
    d, n_layer = SIZES[spec.size]["n_embd"], SIZES[spec.size]["n_layer"]
    seq, resp = spec.prompt_len + spec.response_len, spec.response_len

    def trunk(context: float) -> float:
        return 2 * 12 * n_layer * d * d + 4 * n_layer * d * context

    head = 2 * d * VOCAB
    head_positions = resp if side == "ours" else seq
    sampling = (spec.prompt_len * trunk(spec.prompt_len)
                + resp * (trunk(spec.prompt_len + resp / 2) + head))
    if side == "ours":
        scoring = 4 * seq * trunk(seq) + 2 * resp * head
    else:
        scoring = 3 * seq * trunk(seq) + seq * head
    update = spec.epochs * 3 * (2 * seq * trunk(seq) + head_positions * head)
    return spec.batch * (sampling + scoring + update)


def compare(spec: Spec, ours: dict, trl: dict | None) -> dict:
    """One size's table rows, ratio and target from the two sides' results (trl None: absent)."""
    o = side_stats(ours)
    tokens = spec.batch * spec.response_len

    def row(name, s, params, side):
        return [spec.size, f"{params:,}", name, round(s["total_s"], 3), round(s["rollout_s"], 3),
                round(s["update_s"], 3), round(s["first_s"], 2),
                round(tokens / s["total_s"], 1),
                round(iteration_flops(spec, side) / s["total_s"] / 1e9, 1),
                "/".join(map(str, s["widths"]))]

    rows = [row("rlaif_jax", o, ours["params"], "ours")]
    out = {"ours": o, "rows": rows, "ratio": None}
    if trl is None:
        rows.append([spec.size, "", f"TRL {TRL_VERSION}: not installed"] + [""] * 7)
        return out
    t = side_stats(trl)
    rows.append(row(f"TRL {trl['version']}", t, trl["params"], "trl"))
    out.update(trl=t, ratio=t["total_s"] / o["total_s"])
    return out


def target_flop_rate(spec: Spec, cmp: dict) -> float:
    """FLOP/s our iteration's matmuls would need to take a TARGET_RATIO-th of TRL's time."""
    return iteration_flops(spec, "ours") * TARGET_RATIO / cmp["trl"]["total_s"]


def notes_for(spec: Spec, cmp: dict, cached: bool, peak: float | None = None) -> list[str]:
    """What the measurement shows about where each side's time goes (computed, per size);
    `peak`: the machine's fp32 matmul FLOP/s, measured in the same run (None: not measured)."""
    o = cmp["ours"]
    compile_s = max(o["first_s"] - o["total_s"], 0)
    notes = [f"{spec.size}: ours {o['rollout_s'] / o['total_s']:.0%} rollout (generate + score) "
             f"/ {o['update_s'] / o['total_s']:.0%} update; first iteration {o['first_s']:.1f} s, "
             f"of which ~{compile_s:.1f} s XLA compilation"
             f"{' (persistent cache on)' if cached else ' (cold)'}."]
    if cmp.get("trl"):
        t = cmp["trl"]
        notes.append(
            f"{spec.size}: TRL {t['generate_s'] / t['total_s']:.0%} generation, "
            f"{(t['rollout_s'] - t['generate_s']) / t['total_s']:.0%} scoring, "
            f"{t['update_s'] / t['total_s']:.0%} update (its gc.collect() calls: "
            f"{t['gc_s'] / t['total_s']:.0%}); by phase TRL / ours = rollout "
            f"{t['rollout_s'] / o['rollout_s']:.2f}x, update {t['update_s'] / o['update_s']:.2f}x.")
    flops = {side: iteration_flops(spec, side) for side in ("ours", "trl")}
    notes.append(
        f"{spec.size}: {flops['ours'] / 1e9:.1f} GFLOP per iteration on our side, "
        f"{flops['trl'] / 1e9:.1f} on TRL's (matmuls, see iteration_flops); "
        f"{3 * spec.epochs * spec.batch * (spec.prompt_len + spec.response_len):,} token-passes "
        "of policy + critic in the update. The ratio is (our GFLOP/s / TRL's) x (TRL's FLOPs / "
        "ours): past the per-step overheads, both sides spend their time in the same matmuls.")
    if cmp.get("trl") and peak:
        need = target_flop_rate(spec, cmp)
        ours_rate, trl_rate = (flops[side] / cmp[key]["total_s"]
                               for side, key in (("ours", "ours"), ("trl", "trl")))
        notes.append(
            f"{spec.size}: {TARGET_RATIO:g}x TRL means {cmp['trl']['total_s'] / TARGET_RATIO:.2f} s "
            f"per iteration, i.e. our {flops['ours'] / 1e9:.0f} GFLOP of matmuls at "
            f"{need / 1e9:.0f} GFLOP/s = {need / peak:.0%} of this machine's fp32 matmul peak "
            f"measured in the same run ({peak / 1e9:.0f} GFLOP/s, jnp.dot 2048^3), sustained "
            f"over the whole iteration; ours runs at {ours_rate / 1e9:.0f} GFLOP/s "
            f"({ours_rate / peak:.0%} of it), TRL at {trl_rate / 1e9:.0f} ({trl_rate / peak:.0%}).")
    return notes


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny, batch 8, 16 tokens")
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["tiny", "medium"])
    p.add_argument("--batch", type=int, help="prompts per iteration (default: tiny 32, medium 16)")
    p.add_argument("--minibatch", type=int, help="minibatch size (default: half the batch)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--response-len", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--iters", type=int, default=3, help="timed iterations after the first")
    p.add_argument("--no-trl", action="store_true", help="time our side only")
    p.add_argument("--out", default="ppo", help="result name (benchmarks/results/NAME.json)")
    p.add_argument("--results-dir", type=pathlib.Path, default=common.RESULTS,
                   help="write NAME.json here (default: benchmarks/results)")
    p.add_argument("--compile-cache", action="store_true",
                   help="our side reads/writes the persistent XLA cache (on with --quick): the "
                   "first iteration then shows cached compilation, not a cold compile")
    p.add_argument("--workdir", help="keep the models, runs and worker results here "
                   "(default: a temporary directory, removed at the end)")
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.job)
        return {}
    if args.quick:
        args.sizes, args.batch, args.minibatch, args.epochs = ["tiny"], 8, 4, 1
        args.response_len, args.prompt_len, args.iters = 16, 32, 2
        args.compile_cache = True
    common.RESULTS = args.results_dir
    try:
        specs = []
        for size in args.sizes:
            batch = args.batch or DEFAULT_BATCH[size][0]
            minibatch = args.minibatch or (DEFAULT_BATCH[size][1] if not args.batch
                                           else max(batch // 2, 1))
            specs.append(Spec(size, batch, minibatch, args.epochs, args.response_len,
                              args.prompt_len, args.iters))
    except ValueError as e:
        p.error(str(e))
    trl_version = None if args.no_trl else trl_status()
    if trl_version not in (None, TRL_VERSION):
        print(f"warning: trl {trl_version} installed; this benchmark is written for "
              f"{TRL_VERSION} (the last release with PPO)", file=sys.stderr)

    watch = common.CpuWatch()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as tmp:
        tmp = pathlib.Path(args.workdir or tmp)
        texts = train_prompts()
        tokenizer = build_tokenizer(texts, tmp / "tokenizer")
        for spec in specs:
            ours, trl = measure(spec, tokenizer, texts, tmp / spec.size, trl_version is not None,
                                args.compile_cache)
            runs.append((spec, ours, trl))
            print(json.dumps({"size": spec.size, "ours_s": side_stats(ours)["total_s"],
                              "trl_s": side_stats(trl)["total_s"] if trl else None}), flush=True)
    other_cores = watch.other_cores()  # the side workers are waited-for children: ours
    # The machine's fp32 matmul rate, after both sides' processes have exited: what a 3x
    # iteration would have to sustain is quoted against it.
    peak = common.jax_matmul_flops(2048, 2048, 2048, "float32", repeats=5)
    result = build_result(runs, quick=args.quick, compile_cache=args.compile_cache,
                          trl_version=trl_version, other_cores=other_cores, peak=peak)
    path = common.write_result(args.out, result)
    print(f"wrote {path}")
    return result


def measure(spec: Spec, tokenizer, texts: list[str], directory: pathlib.Path, with_trl: bool,
            compile_cache: bool) -> tuple[dict, dict | None]:
    """Builds `spec`'s models and prompts in `directory`, runs each side in its own process."""
    import numpy as np

    directory.mkdir(parents=True)
    paths = build_models(spec, tokenizer, directory)
    prompts_file = directory / "prompts.npy"
    np.save(prompts_file, prompt_rows(tokenizer, texts, spec.prompt_len))
    ours = run_side("ours", spec, paths, prompts_file, directory, compile_cache)
    trl = run_side("trl", spec, paths, prompts_file, directory) if with_trl else None
    return ours, trl


def build_result(runs: list[tuple[Spec, dict, dict | None]], *, quick: bool, compile_cache: bool,
                 trl_version: str | None, other_cores: float | None,
                 peak: float | None = None) -> dict:
    """The result record (benchmarks/common.py schema) of (spec, ours, trl or None) runs."""
    rows, times_rows, headline, targets, size_notes = [], [], {}, [], []
    for spec, ours, trl in runs:
        cmp = compare(spec, ours, trl)
        rows += cmp["rows"]
        size_notes += notes_for(spec, cmp, compile_cache, peak)
        times_rows += [[spec.size, name, ", ".join(f"{it['total_s']:.3f}"
                                                    for it in res["iterations"])]
                       for name, res in (("rlaif_jax", ours), ("TRL", trl)) if res]
        headline[f"{spec.size}_ours_s_per_iter"] = round(cmp["ours"]["total_s"], 3)
        if cmp["ratio"] is not None:
            headline[f"{spec.size}_trl_s_per_iter"] = round(cmp["trl"]["total_s"], 3)
            headline[f"{spec.size}_ratio"] = round(cmp["ratio"], 2)
            targets.append({"name": f"PPO iteration {spec.size}: x TRL", "target": TARGET_RATIO,
                            "value": round(cmp["ratio"], 2), "met": cmp["ratio"] >= TARGET_RATIO})
            if peak:
                headline[f"{spec.size}_target_needs_peak_share"] = round(
                    target_flop_rate(spec, cmp) / peak, 2)
    if peak:
        headline["matmul_fp32_gflops"] = round(peak / 1e9, 1)
    s = runs[0][0]
    notes = [
        f"Per iteration: prompts of {s.prompt_len} tokens, {s.response_len} response tokens at "
        f"temperature 1, {s.epochs} epoch(s) over the batch; "
        + "; ".join(f"{r.size}: {r.batch} prompts in minibatches of {r.minibatch}"
                    for r, _, _ in runs)
        + ". Policy + frozen reference + reward model + separate critic of the same size, "
        "float32 on the CPU, same weights and prompts on both sides.",
        "TRL: " + (f"{TRL_VERSION} not installed (pip install -e '.[bench]'), its side not run."
                   if trl_version is None else
                   f"trl {trl_version}, torch.set_num_threads({os.cpu_count()}), "
                   "gradient_checkpointing and bf16 off."),
        f"Seconds per iteration: median of {s.iters} iterations after the first; the first "
        "(ours: with XLA compilation" + (", read from the persistent cache when warm"
                                          if compile_cache else ", cold") +
        ") in its own column. tok/s = batch x response length / median. The response width "
        "column lists the widths sampled (EOS never ended a batch early on either side when it "
        "equals the response length).",
        "Known differences: ours recomputes the policy's log-probs in the scoring pass (TRL keeps "
        "the sampler's logits: [batch, response, vocab] floats) but applies the LM head at the "
        "response positions only (TRL: at every position), clips gradient norms, uses Adam at a "
        "constant rate (TRL: AdamW, linear decay); TRL runs gc.collect() twice per iteration.",
    ] + size_notes
    if other_cores is not None and other_cores > 0.25:
        notes.append(
            f"NOT an idle machine: other processes kept {other_cores:.2f} of the "
            f"{os.cpu_count()} cores busy on average (/proc/stat less this benchmark's own "
            "processes). Other work slows both sides, and torch's OpenMP threads (which spin at "
            "barriers) far more than XLA's, so these ratios do not stand for an idle machine.")
    elif other_cores is not None:
        notes.append(f"Other processes kept {other_cores:.2f} of the {os.cpu_count()} cores busy "
                     "on average during the run (/proc/stat less this benchmark's own processes).")
    table = {"title": "Seconds per PPO iteration (median after the first)",
             "columns": ["size", "policy params", "side", "s / iter", "rollout s", "update s",
                         "first iter s", "tok/s", "GFLOP/s", "response width"], "rows": rows}
    times = {"title": "Every iteration, first included (s)",
             "columns": ["size", "side", "seconds per iteration"], "rows": times_rows}
    return {"title": "PPO iteration: rlaif_jax vs TRL PPOTrainer", "quick": quick,
            "tables": [table, times], "headline": headline, "targets": targets, "notes": notes}


if __name__ == "__main__":
    main()
