"""The optimizer every training stage uses: AdamW, warmup + cosine schedule, global-norm clipping."""

from __future__ import annotations

import jax
import optax


def lr_schedule(cfg) -> optax.Schedule:
    """Linear warmup to `cfg.lr`, then cosine decay to `cfg.lr * cfg.min_lr_ratio` at `cfg.steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.steps, end_value=cfg.lr * cfg.min_lr_ratio)


def _decay_mask(params):
    """Weight decay on matrices only (not biases, LayerNorm scales or scalars)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay, mask=_decay_mask),
    )
