"""The reward model stage: the SFT trunk plus a scalar head, trained on the AI feedback.

Read top to bottom, like `sft.py`: read the labels/pairs and hold out prompts, build the model
(trunk from the latest `reward.init` checkpoint, fresh head), create or restore the sharded train
state, score the held-out set once before training (what the untrained head gets), then loop:
batch for this step -> one jitted update -> log, evaluate, checkpoint.

The score of a sequence is the head's output at its last attended token (the EOS the policy
wrote, see `RewardModel`). Losses (`reward.loss`, see `rm_losses`):

* ``pairwise``: Bradley-Terry on preference pairs; a batch is one ``[2B, T]`` forward of the B
  chosen rows followed by the B rejected rows.
* ``pointwise``: binary cross-entropy on the judge's acceptable/not label per candidate.

Either way the held-out prompts give pairwise accuracy (when pairs exist) and the ROC AUC of
scores against ``acceptable``. For PPO this module exports `load_reward_params` and
`make_score_fn`.
"""

from __future__ import annotations

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
from rlaif_jax.data.tokenizer import load_tokenizer
from rlaif_jax.metrics import MetricWriter, write_summary
from rlaif_jax.models.build import load_model_config, make_lm, make_reward_model
from rlaif_jax.models.gpt2 import count_params
from rlaif_jax.sample_responses import load_stage_params
from rlaif_jax.sampling import positions_from_mask
from rlaif_jax.train import reward_data, rm_losses
from rlaif_jax.train.optim import lr_schedule, make_optimizer

STAGE = "reward"
# reward.* keys a resumed run must share with the run it resumes (steps, lr, ... may change).
_FIXED_REWARD_KEYS = ("loss", "init", "validation_fraction", "batch_size")


def make_score_fn(model):
    """``fn(params, input_ids [B,T], attention_mask [B,T]) -> scores [B] float32``.

    Rows may be a left-padded prompt followed by a right-padded response: position ids come from
    the mask (`sampling.positions_from_mask`) and the score is read at the last token whose mask
    is 1. The reward model was trained on ``prompt + response + EOS``, so include the EOS in the
    mask when the policy wrote one. Not jitted: wrap it in `jax.jit` or call it inside a jit.
    """

    def score(params, input_ids, attention_mask):
        return model.apply({"params": params}, input_ids, attention_mask=attention_mask,
                           positions=positions_from_mask(attention_mask), deterministic=True)

    return score


def load_reward_params(workdir: pathlib.Path, mesh, fsdp_min_size: int, model_cfg=None):
    """``(RewardModel, params)`` of the latest reward checkpoint in `workdir`, placed on `mesh`.

    `model_cfg` (config.model) sets the compute dtype and remat, as for the other stages.
    """
    model = make_reward_model(load_model_config(workdir, model_cfg))
    params, _ = load_stage_params(workdir, STAGE, model, mesh, fsdp_min_size)
    return model, params


def _fingerprint(config, feedback_digest: dict) -> dict:
    """What must not change between a run and its resumption (as a JSON-round-tripped dict)."""
    fp = {k: config[k].to_dict() for k in ("model", "tokenizer", "data")}
    fp["seed"] = config.seed
    fp["reward"] = {k: config.reward[k] for k in _FIXED_REWARD_KEYS}
    fp["feedback_files"] = feedback_digest
    return json.loads(json.dumps(fp, sort_keys=True, default=list))


def _check_resumable(saved: dict, current: dict, workdir) -> None:
    if saved == current:
        return
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if "reward" in diff:
        diff.remove("reward")
        diff += [f"reward.{k}" for k in _FIXED_REWARD_KEYS
                 if saved.get("reward", {}).get(k) != current["reward"][k]]
    raise ValueError(
        f"{workdir} holds a reward-model run with a different {', '.join(diff)}; resume with "
        "the same config and feedback files, or use a new --workdir (or delete "
        f"{workdir}/checkpoints/{STAGE})")


def make_train_step(model, optimizer, loss: str, deterministic: bool):
    """state, batch -> state, metrics (loss, accuracy, grad_norm)."""

    def loss_fn(params, batch, rng):
        mask = batch["attention_mask"]
        scores = model.apply({"params": params}, batch["input_ids"], attention_mask=mask,
                             positions=positions_from_mask(mask), deterministic=deterministic,
                             rngs={"dropout": rng})
        if loss == "pairwise":
            chosen, rejected = jnp.split(scores, 2)
            value = rm_losses.bradley_terry_loss(chosen, rejected)
            accuracy = rm_losses.pairwise_accuracy(chosen, rejected)
        else:
            value = rm_losses.pointwise_bce(scores, batch["labels"])
            accuracy = rm_losses.binary_accuracy(scores, batch["labels"])
        return value, accuracy

    def train_step(state, batch):
        rng, step_rng = jax.random.split(state["loop"]["rng"])
        (value, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], batch, step_rng)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {"params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state,
                     "loop": {"step": state["loop"]["step"] + 1, "rng": rng}}
        return new_state, {"loss": value, "accuracy": accuracy,
                           "grad_norm": optax.tree.norm(grads)}

    return train_step


def score_sequences(score_fn, params, seqs: reward_data.Sequences, batch_size: int, bucket: int,
                    mesh) -> np.ndarray:
    """Scores [N] of every row of `seqs`, in fixed-size batches (the last padded, then dropped)."""
    out = []
    for batch in sft_data.eval_batches(seqs, batch_size):
        batch = sharding.put_batch(sft_data.trim_to_bucket(batch, bucket), mesh)
        out.append(distributed.to_host(  # batch-sharded: gathered from every host
            score_fn(params, batch["input_ids"], batch["attention_mask"])))
    return np.concatenate(out)[:len(seqs)] if out else np.zeros((0,), np.float32)


def held_out_metrics(scores: np.ndarray, held: reward_data.HeldOut) -> dict:
    """Pairwise accuracy / BT loss on held-out pairs, AUC on held-out labels, score statistics."""
    nan = float("nan")
    chosen, rejected = scores[held.pair_index[:, 0]], scores[held.pair_index[:, 1]]
    has_pairs = len(held.pair_index) > 0
    row = {"val_pairwise_accuracy": float(rm_losses.pairwise_accuracy(chosen, rejected))
           if has_pairs else nan,
           "val_pairwise_loss": float(rm_losses.bradley_terry_loss(chosen, rejected))
           if has_pairs else nan,
           "val_auc": rm_losses.roc_auc(scores[held.label_index], held.acceptable)}
    row.update({f"val_{k}": v for k, v in rm_losses.score_stats(scores).items()})
    return row


def _check_batching(config, mesh) -> int:
    """Rows per step (2B for pairs); they and the evaluation batch must split over the mesh."""
    rows = config.reward.batch_size * (2 if config.reward.loss == "pairwise" else 1)
    shards = sharding.batch_size_multiple(mesh)
    if rows % shards:
        raise ValueError(f"config.reward.batch_size={config.reward.batch_size} gives {rows} "
                         f"sequences per step, not divisible by the {shards} batch shards of "
                         "the mesh")
    return rows


def train(config, workdir: pathlib.Path) -> dict:
    """Runs (or resumes) reward-model training; returns the summary (summaries/reward.json)."""
    wall_start = time.time()
    rc = config.reward
    mesh = sharding.make_mesh(config.mesh)
    eval_rows = _check_batching(config, mesh)

    # Data.
    model_cfg = load_model_config(workdir, config.model)
    tokenizer = load_tokenizer(workdir / "tokenizer")
    data = reward_data.build(workdir, rc, config.data, config.seed, tokenizer)
    logging.info("Reward data (%s loss): %s", rc.loss, data.counts)
    rows, schedule = reward_data.batch_schedule(data.train_lengths(), rc.batch_size, config.seed,
                                                config.data.group_by_length)
    if len(rows) > len(data.train_lengths()):
        logging.warning("Only %d training examples for batches of %d: each is repeated %d times",
                        len(data.train_lengths()), rc.batch_size,
                        len(rows) // len(data.train_lengths()))
    fingerprint = _fingerprint(config, reward_data.files_digest(workdir))

    # Model, optimizer, sharded state.
    model = make_reward_model(model_cfg)
    optimizer = make_optimizer(rc)

    def init_state(rng, trunk):
        init_rng, rng = jax.random.split(rng)
        params = model.init(init_rng, jnp.zeros((1, 8), jnp.int32))["params"]
        params = {**params, "transformer": trunk}  # the trunk's own init is dead code under jit
        return {"params": params, "opt_state": optimizer.init(params),
                "loop": {"step": jnp.zeros((), jnp.int32), "rng": rng}}

    rng = jax.random.PRNGKey(config.seed)
    abstract_params = jax.eval_shape(model.init, rng, jnp.zeros((1, 8), jnp.int32))["params"]
    abstract = jax.eval_shape(init_state, rng, abstract_params["transformer"])
    state_sh = sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)

    ckpts = StageCheckpoints(workdir / "checkpoints" / STAGE, config.checkpoint.keep,
                             config.checkpoint.async_save)
    start = ckpts.latest_step() or 0
    if start:
        meta = ckpts.restore_meta(start)
        _check_resumable(meta.get("fingerprint", {}), fingerprint, workdir)
        state = ckpts.restore(start, abstract_with_shardings(abstract, state_sh))
        initial, last_loss = meta["initial"], meta.get("train_loss", float("nan"))
        logging.info("Resumed the reward model from step %d (data position %s)", start,
                     meta["data_position"])
    else:
        trunk, init_step = load_stage_params(workdir, rc.init, make_lm(model_cfg), mesh,
                                             config.mesh.fsdp_min_size)
        logging.info("Reward trunk from the %s checkpoint at step %d", rc.init, init_step)
        state = jax.jit(init_state, out_shardings=state_sh)(rng, trunk["transformer"])
        del trunk
    logging.info("Reward model: %s parameters; mesh %s", f"{count_params(state['params']):,}",
                 dict(mesh.shape))

    rows_sh = sharding.batch_sharding(mesh, 0, 2)
    batch_sh = {"input_ids": rows_sh, "attention_mask": rows_sh}
    if rc.loss == "pointwise":
        batch_sh["labels"] = sharding.batch_sharding(mesh, 0, 1)
    train_step = jax.jit(
        make_train_step(model, optimizer, rc.loss, deterministic=model_cfg.dropout == 0),
        in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=(0,))
    score_fn = jax.jit(make_score_fn(model))
    lr_at = lr_schedule(rc)

    def evaluate(params) -> dict:
        if not len(data.held_out.sequences):
            return held_out_metrics(np.zeros((0,), np.float32), data.held_out)
        scores = score_sequences(score_fn, params, data.held_out.sequences, eval_rows,
                                 config.data.length_bucket, mesh)
        return held_out_metrics(scores, data.held_out)

    writer = MetricWriter(workdir / "metrics", STAGE, resume_step=start)
    if not start:
        initial = evaluate(state["params"])
        writer.write(0, {**initial, **data.counts})
        last_loss = float("nan")
        logging.info("Before training: %s", initial)

    def save(step):
        ckpts.save(step, state, {"step": step, "data_position": schedule.position(step),
                                 "fingerprint": fingerprint, "initial": initial,
                                 "train_loss": last_loss})

    pending, interval_start, interval_rows = [], time.time(), 0
    val = None
    bar = tqdm(total=rc.steps, initial=start, desc="reward", disable=not config.progress,
               dynamic_ncols=True)
    with StopRequested() as stop:
        for step in range(start, rc.steps):
            host = data.batch(rows[schedule.indices(step)], config.data.length_bucket)
            interval_rows += len(host["input_ids"])
            state, metrics = train_step(state, sharding.put_batch(host, mesh))
            pending.append(metrics)
            done = step + 1
            bar.update(1)

            if done % rc.log_every == 0 or done == rc.steps:
                fetched = jax.device_get(pending)  # replicated scalars: no gather needed
                elapsed = time.time() - interval_start
                last_loss = float(np.mean([m["loss"] for m in fetched]))
                writer.write(done, {
                    "loss": last_loss, "accuracy": np.mean([m["accuracy"] for m in fetched]),
                    "grad_norm": np.mean([m["grad_norm"] for m in fetched]),
                    "lr": float(lr_at(step)), "sequences_per_s": interval_rows / elapsed,
                    "step_time_s": elapsed / len(fetched)})
                bar.set_postfix(loss=f"{last_loss:.3f}")
                pending, interval_start, interval_rows = [], time.time(), 0
            if done % rc.eval_every == 0 or done == rc.steps:
                val = evaluate(state["params"])
                writer.write(done, val)
                bar.write(f"step {done}: held-out pairwise accuracy "
                          f"{val['val_pairwise_accuracy']:.3f}, AUC "
                          + ("undefined (held-out labels of one class)"
                             if np.isnan(val["val_auc"]) else f"{val['val_auc']:.3f}"))
            saved = done % config.checkpoint.every_steps == 0 or done == rc.steps
            if saved:
                save(done)
            stop.save_and_exit(ckpts, save, done, saved, close=(bar, writer))
    bar.close()
    ckpts.wait()
    ckpts.close()
    writer.close()

    if val is None:  # Nothing left to train: report the finished run's held-out metrics.
        val = evaluate(state["params"])
    summary = {"stage": STAGE, "loss_type": rc.loss, "steps": rc.steps, "resumed_from": start,
               **val, "loss": last_loss,
               **{f"initial_{k}": v for k, v in initial.items()},
               **data.counts,
               "params": count_params(state["params"]), "mesh": dict(mesh.shape),
               "wall_time_s": round(time.time() - wall_start, 1)}
    write_summary(workdir, STAGE, summary)
    return summary
