"""Supervised fine-tuning on Gorilla API-usage data: one flat, resumable training loop.

Read top to bottom: build the data and tokenizer, build the model and optimizer, create (or
restore) the sharded train state, then loop: batch for this step -> one jitted update -> log,
evaluate, checkpoint. The update is a single `jax.jit` with explicit shardings and a donated
state; gradient accumulation is a `lax.scan` over micro-batches inside it.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from rlaif_jax import distributed, sharding
from rlaif_jax.checkpoint import StageCheckpoints, StopRequested, abstract_with_shardings
from rlaif_jax.data import sft_data
from rlaif_jax.data.splits import build_splits, split_summary
from rlaif_jax.data.tokenizer import tokenizer_for_run
from rlaif_jax.metrics import MetricWriter, write_summary
from rlaif_jax.models.build import (make_lm, model_config_for_run, pretrained_params,
                                    save_model_config)
from rlaif_jax.models.gpt2 import count_params
from rlaif_jax.train.losses import next_token_nll
from rlaif_jax.train.optim import lr_schedule, make_optimizer

STAGE = "sft"


def _fingerprint(config) -> str:
    """What must not change between a run and its resumption."""
    keys = ("seed", "model", "tokenizer", "data")
    return json.dumps({k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
                       for k in keys}, sort_keys=True, default=list)


def make_train_step(model, optimizer, deterministic: bool):
    """state, batch[accum, micro, L] -> state, metrics. Loss = mean NLL over all response tokens."""

    def loss_fn(params, micro, rng, total_tokens):
        out = model.apply({"params": params}, micro["input_ids"],
                          attention_mask=micro["attention_mask"], deterministic=deterministic,
                          rngs={"dropout": rng})
        nll, _ = next_token_nll(out.logits, micro["input_ids"], micro["loss_mask"])
        return nll / total_tokens

    def train_step(state, batch):
        rng, step_rng = jax.random.split(state["loop"]["rng"])
        total = jnp.maximum(jnp.sum(batch["loss_mask"][..., 1:]), 1).astype(jnp.float32)
        grad_fn = jax.value_and_grad(loss_fn)

        def accumulate(grads, xs):
            micro, i = xs
            loss, g = grad_fn(state["params"], micro, jax.random.fold_in(step_rng, i), total)
            return jax.tree.map(jnp.add, grads, g), loss

        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        accum = batch["input_ids"].shape[0]
        grads, losses = jax.lax.scan(accumulate, zeros, (batch, jnp.arange(accum)))
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {"params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state,
                     "loop": {"step": state["loop"]["step"] + 1, "rng": rng}}
        metrics = {"loss": jnp.sum(losses), "grad_norm": optax.global_norm(grads),
                   "response_tokens": total}
        return new_state, metrics

    return train_step


def make_eval_step(model):
    def eval_step(params, batch):
        out = model.apply({"params": params}, batch["input_ids"],
                          attention_mask=batch["attention_mask"], deterministic=True)
        return next_token_nll(out.logits, batch["input_ids"], batch["loss_mask"])
    return eval_step


def evaluate(eval_step, params, split: sft_data.EncodedSplit, batch_size: int, bucket: int,
             mesh) -> float:
    """Mean NLL per response token over the whole split."""
    total, count = 0.0, 0.0
    for batch in sft_data.eval_batches(split, batch_size):
        batch = sft_data.trim_to_bucket(batch, bucket)
        # Sums over the whole batch: replicated scalars, readable on every host.
        nll, n = eval_step(params, sharding.put_batch(batch, mesh))
        total, count = total + float(nll), count + float(n)
    return total / max(count, 1.0)


def _check_batching(config, mesh) -> int:
    s, shards = config.sft, sharding.batch_size_multiple(mesh)
    micro = s.batch_size // s.grad_accum
    if micro % shards:
        raise ValueError(f"config.sft.batch_size / config.sft.grad_accum = {micro} must be "
                         f"divisible by the {shards} batch shards of the mesh")
    if config.sft.eval_batch_size % shards:
        raise ValueError(f"config.sft.eval_batch_size={config.sft.eval_batch_size} must be "
                         f"divisible by the {shards} batch shards of the mesh")
    return micro


def train(config, workdir: pathlib.Path) -> dict:
    """Runs (or resumes) SFT in `workdir`; returns the summary also written to summaries/sft.json."""
    wall_start = time.time()
    mesh = sharding.make_mesh(config.mesh)
    micro = _check_batching(config, mesh)

    # Data and tokenizer.
    splits = build_splits(config.data)
    logging.info("Data splits: %s", split_summary(splits))
    train_texts = (sft_data.prompt_text(r, config.data) + sft_data.target_text(r, config.data)
                   for r in splits["train"])
    tokenizer = tokenizer_for_run(config, workdir, train_texts)
    train_set = sft_data.encode(splits["train"], tokenizer, config.data)
    val_set = sft_data.encode(splits["validation"], tokenizer, config.data)
    if train_set.n_truncated:
        logging.warning("%d/%d training examples exceed data.max_len=%d and are cut",
                        train_set.n_truncated, len(train_set), config.data.max_len)
    schedule = sft_data.BatchSchedule(train_set.attention_mask.sum(1), config.sft.batch_size,
                                      config.seed, config.data.group_by_length)
    unigram = sft_data.unigram_baseline(train_set, val_set, len(tokenizer))

    # Model, optimizer, sharded state.
    model_cfg = model_config_for_run(config, tokenizer)
    if distributed.is_writer():
        save_model_config(model_cfg, workdir, tokenizer)
    model = make_lm(model_cfg)
    optimizer = make_optimizer(config.sft)
    init_params = pretrained_params(config, model_cfg) if config.model.hf_path else None

    def init_state(rng, params):
        init_rng, rng = jax.random.split(rng)
        if params is None:
            dummy = jnp.zeros((1, 8), jnp.int32)
            params = model.init(init_rng, dummy)["params"]
        return {"params": params, "opt_state": optimizer.init(params),
                "loop": {"step": jnp.zeros((), jnp.int32), "rng": rng}}

    init_fn = functools.partial(init_state, params=init_params)
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(init_fn, rng)
    state_sh = sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)

    ckpts = StageCheckpoints(workdir / "checkpoints" / STAGE, config.checkpoint.keep,
                             config.checkpoint.async_save)
    start = ckpts.latest_step() or 0
    if start:
        meta = ckpts.restore_meta(start)
        if meta.get("fingerprint") != _fingerprint(config):
            raise ValueError(
                f"{workdir} holds an SFT run with a different model/tokenizer/data/seed config; "
                "resume with the same config or use a new --workdir")
        state = ckpts.restore(start, abstract_with_shardings(abstract, state_sh))
        logging.info("Resumed SFT from step %d (data position %s)", start, meta["data_position"])
    else:
        state = jax.jit(init_fn, out_shardings=state_sh)(rng)
    logging.info("Model: %s parameters; mesh %s", f"{count_params(state['params']):,}",
                 dict(mesh.shape))

    batch_sh = {k: sharding.batch_sharding(mesh, batch_dim=1, ndim=3)
                for k in ("input_ids", "attention_mask", "loss_mask")}
    train_step = jax.jit(make_train_step(model, optimizer, deterministic=model_cfg.dropout == 0),
                         in_shardings=(state_sh, batch_sh),
                         out_shardings=(state_sh, sharding.replicated(mesh)),
                         donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(model))
    lr_at = lr_schedule(config.sft)

    writer = MetricWriter(workdir / "metrics", STAGE, resume_step=start)
    if not start:
        writer.write(0, {"unigram_val_loss": unigram, "train_examples": len(train_set),
                         "val_examples": len(val_set)})

    def save(step):
        ckpts.save(step, state, {"step": step, "data_position": schedule.position(step),
                                 "fingerprint": _fingerprint(config)})

    pending, interval_start, interval_tokens = [], time.time(), 0
    val_loss = None
    steps = config.sft.steps
    bar = tqdm(total=steps, initial=start, desc="sft", disable=not config.progress,
               dynamic_ncols=True)
    with StopRequested() as stop:
        for step in range(start, steps):
            host = sft_data.trim_to_bucket(train_set.take(schedule.indices(step)),
                                           config.data.length_bucket)
            interval_tokens += int(host["attention_mask"].sum())
            host = {k: v.reshape(config.sft.grad_accum, micro, -1) for k, v in host.items()}
            state, metrics = train_step(state, sharding.put_batch(host, mesh, batch_dim=1))
            pending.append(metrics)
            done = step + 1
            bar.update(1)

            if done % config.sft.log_every == 0 or done == steps:
                # Replicated scalars (out_shardings): every host holds them, no gather needed.
                fetched = jax.device_get(pending)
                elapsed = time.time() - interval_start
                row = {"loss": np.mean([m["loss"] for m in fetched]),
                       "grad_norm": np.mean([m["grad_norm"] for m in fetched]),
                       "lr": float(lr_at(step)), "tokens_per_s": interval_tokens / elapsed,
                       "step_time_s": elapsed / len(fetched)}
                writer.write(done, row)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                pending, interval_start, interval_tokens = [], time.time(), 0
            if done % config.sft.eval_every == 0 or done == steps:
                val_loss = evaluate(eval_step, state["params"], val_set,
                                    config.sft.eval_batch_size, config.data.length_bucket, mesh)
                writer.write(done, {"val_loss": val_loss})
                bar.write(f"step {done}: val_loss {val_loss:.4f} (unigram {unigram:.4f})")
            saved = done % config.checkpoint.every_steps == 0 or done == steps
            if saved:
                save(done)
            stop.save_and_exit(ckpts, save, done, saved, close=(bar, writer))
    bar.close()
    ckpts.wait()
    ckpts.close()
    writer.close()

    if val_loss is None:  # Nothing left to train: report the finished run's validation loss.
        val_loss = evaluate(eval_step, state["params"], val_set, config.sft.eval_batch_size,
                            config.data.length_bucket, mesh)
    summary = {"stage": STAGE, "steps": steps, "resumed_from": start, "val_loss": val_loss,
               "unigram_val_loss": unigram, "params": count_params(state["params"]),
               "param_bytes_per_device": max(sharding.bytes_per_device(state["params"]).values()),
               "mesh": dict(mesh.shape),
               "train_examples": len(train_set), "val_examples": len(val_set),
               "truncated_train_examples": train_set.n_truncated,
               "wall_time_s": round(time.time() - wall_start, 1)}
    write_summary(workdir, STAGE, summary)
    return summary
