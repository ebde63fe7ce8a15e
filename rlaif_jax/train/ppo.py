"""PPO against the reward model, with a KL penalty to the SFT policy: one flat, resumable loop.

Read top to bottom. Setup: the policy and a frozen reference both start from the latest SFT
checkpoint; the critic is a value head on its own trunk initialised from the reward model
("separate") or on the policy's trunk ("shared"); the reward source scores whole responses
(by default the reward model, see `reward_model_source`; tests inject toy rewards). Then each
iteration is

    prompts (host, seeded order) -> generate (jit: KV-cache sampler)
      -> score (jit: policy / reference log-probs, values, per-token KL, sequence reward)
      -> [optional host rewards: sandboxed executability, AST match of the decoded text]
      -> update (jit, donated state: per-token rewards with the KL penalty, GAE, advantage
         whitening, `epochs` x minibatches of clipped PPO steps as a `lax.scan`, early stop
         on policy KL, the KL controller's new beta)
      -> log / checkpoint (host).

All arrays stay on the device mesh; the host only picks prompts, logs and (when their weight is
non-zero) runs the executability / AST rewards. Dropout is off throughout (log-prob ratios need
a deterministic policy), and log-probs are those of the tempered policy softmax(logits / T) that
actually sampled the tokens, for both policy and reference.

Optimizers: Adam at a constant learning rate (`ppo.lr` for the policy, `ppo.critic_lr` for the
critic), each after its own global-norm clipping at `ppo.clip_norm`. In "shared" mode the
trunk is part of the policy's parameters and receives the gradient of the whole loss
(policy + vf_coef * value - ent_coef * entropy).

Checkpoint items (W/checkpoints/ppo/<iteration>): `params` = the policy's LM params (what
`sample`/`eval` load), `critic` (separate: {"transformer", "value_head"}; shared:
{"value_head"}), `policy_opt`, `critic_opt`, `loop` = {iteration, rng, beta}.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from rlaif_jax import distributed, sharding
from rlaif_jax.checkpoint import StageCheckpoints, StopRequested, abstract_with_shardings
from rlaif_jax.data import sft_data
from rlaif_jax.data.splits import build_splits
from rlaif_jax.data.tokenizer import load_tokenizer
from rlaif_jax.metrics import MetricWriter, read_metrics, write_summary
from rlaif_jax.models.build import load_model_config, make_lm
from rlaif_jax.sample_responses import load_stage_params
from rlaif_jax.sampling import SamplingParams, left_pad, make_generate_fn
from rlaif_jax.train import ppo_math as pm
from rlaif_jax.train import reward as reward_stage
from rlaif_jax.train.losses import token_log_probs
from rlaif_jax.train.rollout import (ROLLOUT_NDIM, ActorCritic, DeviceRewardFn, HostRewards,
                                     PromptSchedule, decode_responses, full_sequence,
                                     make_score_fn)

STAGE = "ppo"
# ppo keys that may change between a run and its resumption.
_RESUMABLE_KEYS = ("iterations", "log_every", "checkpoint_every")
# What each minibatch step reports (averaged over the minibatches and epochs run).
STEP_METRICS = ("loss", "pg_loss", "vf_loss", "clip_fraction", "vf_clip_fraction", "entropy",
                "policy_kl", "policy_grad_norm", "critic_grad_norm")


@dataclasses.dataclass
class RewardSource:
    """Scores whole responses inside the jitted scoring function.

    `fn(params, batch) -> {"reward": [B], **logged}` (see `rollout.DeviceRewardFn`), `params` a
    pytree on the mesh. `critic_init` ({"transformer", "value_head"}) seeds a separate critic;
    None starts it from the SFT trunk with a zero value head.
    """

    fn: DeviceRewardFn
    params: Any = dataclasses.field(default_factory=dict)
    critic_init: dict | None = None


def reward_model_source(config, workdir: pathlib.Path, mesh) -> RewardSource:
    """`ppo.rm_weight` x the reward model's score at the last response token (EOS if emitted)."""
    model, params = reward_stage.load_reward_params(workdir, mesh, config.mesh.fsdp_min_size,
                                                    config.model)
    score = reward_stage.make_score_fn(model)
    weight = config.ppo.rm_weight

    def fn(params, batch):
        if weight == 0:  # the reward comes from the host sources only
            return {"reward": jnp.zeros(batch["done"].shape, jnp.float32)}
        rm = score(params, batch["input_ids"], batch["attention_mask"]).astype(jnp.float32)
        return {"reward": weight * rm, "rm_score": rm}

    critic_init = {"transformer": params["transformer"], "value_head": params["reward_head"]}
    return RewardSource(fn, params, critic_init)


def _fingerprint(config, sft_step: int) -> str:
    """What must not change between a run and its resumption."""
    ppo = {k: v for k, v in config.ppo.to_dict().items() if k not in _RESUMABLE_KEYS}
    return json.dumps({"seed": config.seed, "model": config.model.to_dict(),
                       "data": config.data.to_dict(), "ppo": ppo, "sft_step": sft_step,
                       "max_prompt_len": config.sample.max_prompt_len},
                      sort_keys=True, default=list)


def _check_batching(cfg, mesh) -> None:
    shards = sharding.batch_size_multiple(mesh)
    for key in ("prompts_per_iteration", "minibatch_size"):
        if cfg[key] % shards:
            raise ValueError(f"config.ppo.{key}={cfg[key]} must be divisible by the {shards} "
                             "batch shards of the mesh")


def make_optimizer(lr: float, clip_norm: float) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam at a constant learning rate."""
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(lr, eps=1e-5))


def trim_responses(gen: dict, longest: int, bucket: int) -> dict:
    """Cuts the sampler's [B, max_new_tokens] outputs to the longest response, rounded up to a
    multiple of `bucket` (0: no cut).

    Columns past every response are padding: scoring and the update would spend most of their
    time there. Rounding keeps the compiled shapes few (at most max_new_tokens / bucket).
    """
    width = gen["tokens"].shape[1]
    if bucket > 0:
        width = min(width, max(bucket, -(-longest // bucket) * bucket))
    return {k: v[:, :width] if v.ndim == 2 else v for k, v in gen.items()}


def make_update_fn(ac: ActorCritic, cfg, prompt_len: int, policy_opt, critic_opt, mesh):
    """`update(state, rollout) -> (state, metrics)`: one PPO iteration's learning, all on device."""
    control = pm.kl_controller(cfg.adaptive_kl)

    def loss_fn(trainable, mb):
        ids, mask, positions = full_sequence(mb["prompt_ids"], mb["prompt_mask"], mb["tokens"],
                                             mb["response_mask"])
        logits, values = ac(trainable["params"], trainable["critic"], ids, mask, positions,
                            prompt_len)
        m = mb["response_mask"]
        logp = token_log_probs(logits, mb["tokens"])
        pg_loss, clip_fraction = pm.clipped_policy_loss(logp, mb["logp"], mb["advantages"], m,
                                                        cfg.clip_eps)
        vf_loss, vf_clip_fraction = pm.clipped_value_loss(values, mb["values"], mb["returns"],
                                                          m, cfg.value_clip)
        entropy = pm.entropy_from_logits(logits, m)
        _, policy_kl = pm.approx_kl(logp, mb["logp"], m)
        loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
        return loss, {"loss": loss, "pg_loss": pg_loss, "vf_loss": vf_loss,
                      "clip_fraction": clip_fraction, "vf_clip_fraction": vf_clip_fraction,
                      "entropy": entropy, "policy_kl": policy_kl}

    def minibatch_step(state, mb):
        trainable = {"params": state["params"], "critic": state["critic"]}
        grads, metrics = jax.grad(loss_fn, has_aux=True)(trainable, mb)
        p_updates, policy_opt_state = policy_opt.update(grads["params"], state["policy_opt"],
                                                        state["params"])
        c_updates, critic_opt_state = critic_opt.update(grads["critic"], state["critic_opt"],
                                                        state["critic"])
        metrics.update(policy_grad_norm=optax.tree.norm(grads["params"]),
                       critic_grad_norm=optax.tree.norm(grads["critic"]))
        return dict(state, params=optax.apply_updates(state["params"], p_updates),
                    critic=optax.apply_updates(state["critic"], c_updates),
                    policy_opt=policy_opt_state, critic_opt=critic_opt_state), metrics

    def update(state, rollout):
        m = rollout["response_mask"]
        batch_size = m.shape[0]
        n_minibatches = batch_size // cfg.minibatch_size
        beta = state["loop"]["beta"]
        loop_rng, epochs_rng = jax.random.split(state["loop"]["rng"])

        # Per-token rewards (KL penalty + sequence reward at the end), advantages and returns.
        rewards = pm.kl_penalized_rewards(rollout["kl"], rollout["reward"], m, beta)
        advantages, returns = pm.gae(rewards, rollout["values"], m, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = pm.masked_whiten(advantages, m)
        batch = {k: rollout[k] for k in ("prompt_ids", "prompt_mask", "tokens", "response_mask",
                                          "logp", "values")}
        batch.update(advantages=advantages, returns=returns)

        def one_epoch(carry):
            """A pass over the batch in shuffled minibatches (a scan of minibatch steps)."""
            state, epoch, _, sums = carry
            perm = jax.random.permutation(jax.random.fold_in(epochs_rng, epoch), batch_size)
            minibatches = jax.tree.map(
                lambda x: jax.lax.with_sharding_constraint(
                    x[perm].reshape(n_minibatches, cfg.minibatch_size, *x.shape[1:]),
                    sharding.batch_sharding(mesh, batch_dim=1, ndim=x.ndim + 1)), batch)
            state, metrics = jax.lax.scan(minibatch_step, state, minibatches)
            means = {k: jnp.mean(v) for k, v in metrics.items()}
            blew_up = (cfg.early_stop_kl > 0) & (means["policy_kl"] > cfg.early_stop_kl)
            return state, epoch + 1, blew_up, jax.tree.map(jnp.add, sums, means)

        def more_epochs(carry):
            _, epoch, blew_up, _ = carry
            return (epoch < cfg.epochs) & ~blew_up

        # Up to `epochs` passes; stop early once the policy's KL to the rollout policy blew up.
        carry = (state, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.bool_),
                 {k: jnp.zeros((), jnp.float32) for k in STEP_METRICS})
        state, epochs_run, _, sums = jax.lax.while_loop(more_epochs, one_epoch, carry)
        metrics = {k: v / epochs_run for k, v in sums.items()}  # means over the epochs run

        # The KL controller sees this rollout's KL to the reference (nats per sequence).
        seq_kl = jnp.mean(jnp.sum(rollout["kl"], axis=1))
        new_beta = control(beta, seq_kl, batch_size, cfg.target_kl, cfg.kl_horizon)
        state = dict(state, loop={"iteration": state["loop"]["iteration"] + 1, "rng": loop_rng,
                                  "beta": new_beta})
        metrics.update(
            reward=jnp.mean(rollout["reward"]),
            reward_total=jnp.mean(jnp.sum(rewards, axis=1)),
            kl=seq_kl, beta=beta,
            explained_variance=pm.explained_variance(rollout["values"], returns, m),
            value_mean=pm.masked_mean(rollout["values"], m),
            return_mean=pm.masked_mean(returns, m),
            response_length=jnp.mean(rollout["lengths"].astype(jnp.float32)),
            finished_fraction=jnp.mean(rollout["done"].astype(jnp.float32)),
            epochs_run=epochs_run.astype(jnp.float32))
        return state, metrics

    return update


def train(config, workdir: pathlib.Path, reward_source: RewardSource | None = None) -> dict:
    """Runs (or resumes) PPO in `workdir`; returns the summary also written to summaries/ppo.json.

    `reward_source` replaces the reward model (the no-EOS penalty and the host rewards still
    apply); by default the `rlaif-jax reward` checkpoint of the workdir is used.
    """
    wall_start = time.time()
    cfg = config.ppo
    mesh = sharding.make_mesh(config.mesh)
    _check_batching(cfg, mesh)
    prompt_len = config.sample.max_prompt_len

    # Tokenizer, models, the SFT start, the reward source.
    tokenizer = load_tokenizer(workdir / "tokenizer")
    model_cfg = dataclasses.replace(load_model_config(workdir, config.model), dropout=0.0)
    policy = make_lm(model_cfg)
    ac = ActorCritic(policy, cfg.critic, cfg.temperature)
    ref_params, sft_step = load_stage_params(workdir, "sft", policy, mesh,
                                             config.mesh.fsdp_min_size)
    if reward_source is None:
        reward_source = reward_model_source(config, workdir, mesh)
    host_rewards = None  # executability / AST match of the rollouts: rewards and/or logged
    if cfg.exec_weight or cfg.ast_weight or cfg.exec_ast_weight or cfg.track_rollout_quality:
        both = cfg.exec_ast_weight != 0 or cfg.track_rollout_quality
        host_rewards = HostRewards(cfg.exec_weight != 0 or both, cfg.ast_weight != 0 or both,
                                   config.eval.exec_timeout, config.eval.exec_workers)

    # Prompts of the training split, tokenized once.
    records = list(build_splits(config.data)["train"])
    prompt_tokens = tokenizer([sft_data.prompt_text(r, config.data) for r in records],
                              add_special_tokens=False)["input_ids"]
    schedule = PromptSchedule(len(records), cfg.prompts_per_iteration, config.seed)

    # Sharded train state: policy, critic, their optimizer states, loop counters.
    policy_opt = make_optimizer(cfg.lr, cfg.clip_norm)
    critic_opt = make_optimizer(cfg.critic_lr, cfg.clip_norm)
    gen_base_rng, loop_rng = jax.random.split(jax.random.PRNGKey(config.seed))

    def init_state(sft_params, critic_init, rng):
        zero_head = ac.value_head.init(rng, jnp.zeros((1, 1, model_cfg.n_embd)))["params"]
        if cfg.critic == "shared":
            critic = {"value_head": zero_head}
        elif critic_init is None:
            critic = {"transformer": sft_params["transformer"], "value_head": zero_head}
        else:
            critic = critic_init
        params, critic = jax.tree.map(jnp.copy, (sft_params, critic))  # own, donatable buffers
        return {"params": params, "critic": critic, "policy_opt": policy_opt.init(params),
                "critic_opt": critic_opt.init(critic),
                "loop": {"iteration": jnp.zeros((), jnp.int32), "rng": rng,
                         "beta": jnp.asarray(cfg.kl_coef, jnp.float32)}}

    init_args = (ref_params, reward_source.critic_init, loop_rng)
    abstract = jax.eval_shape(init_state, *init_args)
    state_sh = sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)

    ckpts = StageCheckpoints(workdir / "checkpoints" / STAGE, config.checkpoint.keep,
                             config.checkpoint.async_save)
    fingerprint = _fingerprint(config, sft_step)
    start = ckpts.latest_step() or 0
    if start:
        if ckpts.restore_meta(start).get("fingerprint") != fingerprint:
            raise ValueError(
                f"{workdir} holds a PPO run with a different config (seed/model/data/ppo) or SFT "
                "checkpoint; resume with the same config or use a new --workdir")
        state = ckpts.restore(start, abstract_with_shardings(abstract, state_sh))
        logging.info("Resumed PPO from iteration %d", start)
    else:
        state = jax.jit(init_state, out_shardings=state_sh)(*init_args)

    # The three compiled functions.
    generate = make_generate_fn(policy, SamplingParams(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id), prompt_len=prompt_len,
        max_segments=config.sample.cache_segments)
    score = jax.jit(make_score_fn(ac, reward_source.fn, prompt_len, cfg.no_eos_penalty,
                                  compare_sampler=cfg.temperature == 1.0))
    rollout_sh = {k: sharding.batch_sharding(mesh, 0, ndim) for k, ndim in ROLLOUT_NDIM.items()}
    update = jax.jit(make_update_fn(ac, cfg, prompt_len, policy_opt, critic_opt, mesh),
                     in_shardings=(state_sh, rollout_sh),
                     out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,))

    writer = MetricWriter(workdir / "metrics", STAGE, resume_step=start)

    def save(iteration):
        ckpts.save(iteration, state, {"iteration": iteration, "fingerprint": fingerprint})

    def rollout_for(iteration):
        """Samples and scores this iteration's prompts; returns (rollout, host metrics)."""
        idx = schedule.indices(iteration)
        ids, mask = left_pad([prompt_tokens[i] for i in idx], prompt_len, tokenizer.pad_token_id)
        prompts = sharding.put_batch({"ids": ids, "mask": mask}, mesh)
        gen = generate(state["params"], prompts["ids"], prompts["mask"],
                       jax.random.fold_in(gen_base_rng, iteration))
        gen = trim_responses(gen, int(distributed.to_host(jnp.max(gen["lengths"]))),
                             cfg.response_bucket)
        rollout = score(state["params"], state["critic"], ref_params, reward_source.params,
                        prompts["ids"], prompts["mask"], gen)
        host = {"response_width": float(gen["tokens"].shape[1])}
        if host_rewards is not None:
            # Every host decodes all rows (gathered) and scores them; process 0's results are
            # used everywhere, as sandbox time limits could make hosts disagree.
            tokens, lengths, done = distributed.to_host(
                (gen["tokens"], gen["lengths"], gen["done"]))
            found = distributed.from_writer(host_rewards(
                decode_responses(tokenizer, tokens, lengths, done), [records[i] for i in idx]))
            bonus = sum(found.get(k, 0.0) * w for k, w in (("exec", cfg.exec_weight),
                                                            ("ast", cfg.ast_weight),
                                                            ("exec_ast", cfg.exec_ast_weight)))
            bonus = np.broadcast_to(np.asarray(bonus, np.float32), (len(idx),))
            rollout["reward"] = rollout["reward"] + sharding.put_batch({"bonus": bonus},
                                                                       mesh)["bonus"]
            host.update({f"{k}_rate": float(np.mean(v)) for k, v in found.items()})
        logged = distributed.to_host({k: v for k, v in rollout.items() if k not in ROLLOUT_NDIM})
        host.update({k: float(np.max(v) if k == "sampler_logp_gap" else np.mean(v))
                     for k, v in logged.items()})
        return {k: rollout[k] for k in ROLLOUT_NDIM}, host

    pending: list[dict] = []
    bar = tqdm(total=cfg.iterations, initial=start, desc="ppo", disable=not config.progress,
               dynamic_ncols=True)
    with StopRequested() as stop:
        for iteration in range(start, cfg.iterations):
            t0 = time.time()
            rollout, host = rollout_for(iteration)
            generated = int(np.sum(distributed.to_host(rollout["lengths"])))  # waits for it
            t1 = time.time()
            state, metrics = update(state, rollout)
            metrics = jax.device_get(metrics)  # waits for the update; replicated scalars
            t2 = time.time()
            positions = rollout["tokens"].shape[0] * (prompt_len + rollout["tokens"].shape[1])
            pending.append({**{k: float(v) for k, v in metrics.items()}, **host,
                            "rollout_s": t1 - t0, "update_s": t2 - t1,
                            "rollout_tokens_per_s": generated / (t1 - t0),
                            "update_tokens_per_s": positions * metrics["epochs_run"] / (t2 - t1)})
            done = iteration + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.iterations or stop.requested:
                row = {k: float(np.mean([p[k] for p in pending])) for k in pending[-1]}
                row["window"] = len(pending)  # iterations averaged in this row
                writer.write(done, row)
                bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.2f}")
                pending = []
            saved = done % cfg.checkpoint_every == 0 or done == cfg.iterations
            if saved:
                save(done)
            stop.save_and_exit(ckpts, save, done, saved, unit="iteration", close=(bar, writer))
    bar.close()
    ckpts.wait()
    ckpts.close()
    writer.close()
    distributed.barrier("ppo metrics written")  # the summary reads process 0's metrics file
    return _write_summary(workdir, config, start, mesh, wall_start)


def _write_summary(workdir, config, start, mesh, wall_start) -> dict:
    """Figures of the whole run (also across resumptions), read back from the metrics file."""
    rows = [r for r in read_metrics(workdir / "metrics" / f"{STAGE}.jsonl") if "reward" in r]
    first, last = (rows[0], rows[-1]) if rows else ({}, {})
    summary = {"stage": STAGE, "iterations": config.ppo.iterations, "resumed_from": start,
               "critic": config.ppo.critic, "mesh": dict(mesh.shape),
               "initial_reward": first.get("reward"), "final_reward": last.get("reward"),
               "final_kl": last.get("kl"), "final_beta": last.get("beta"),
               "rollout_s": round(sum(r["rollout_s"] * r["window"] for r in rows), 2),
               "update_s": round(sum(r["update_s"] * r["window"] for r in rows), 2),
               "rollout_tokens_per_s": last.get("rollout_tokens_per_s"),
               "update_tokens_per_s": last.get("update_tokens_per_s"),
               "wall_time_s": round(time.time() - wall_start, 1)}
    for key in ("rm_score", "exec_rate", "ast_rate"):
        if key in last:
            summary[f"initial_{key}"], summary[f"final_{key}"] = first.get(key), last[key]
    write_summary(workdir, STAGE, summary)
    return summary
