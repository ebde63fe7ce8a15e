"""Reward-model losses and metrics, as pure functions of scores and labels.

The jitted ones (losses and accuracies) take jnp arrays and run inside the train step; `roc_auc`
and `score_stats` run on the host with numpy over a whole held-out set.

* Bradley-Terry: P(chosen preferred) = sigmoid(r_chosen - r_rejected); the loss is its mean
  negative log-likelihood, ``softplus(r_rejected - r_chosen)`` (= ``-log sigmoid(diff)``, computed
  without overflow).
* Pointwise: binary cross-entropy with logits on the judge's acceptable/not label.
* Pairwise accuracy counts a tie as half right, so a constant scorer gets exactly 0.5.
* ROC AUC is the probability that a random acceptable candidate scores above a random
  unacceptable one, ties counting 1/2 (the Mann-Whitney U statistic with average ranks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def bradley_terry_loss(chosen: jax.Array, rejected: jax.Array) -> jax.Array:
    """Mean of ``-log sigmoid(chosen - rejected)`` over pairs; [P], [P] -> scalar."""
    return jnp.mean(jax.nn.softplus(rejected.astype(jnp.float32) - chosen.astype(jnp.float32)))


def pointwise_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against 0/1 `labels`; [N], [N] -> scalar.

    ``-y log s(x) - (1 - y) log(1 - s(x)) = softplus(x) - x y``.
    """
    x, y = logits.astype(jnp.float32), labels.astype(jnp.float32)
    return jnp.mean(jax.nn.softplus(x) - x * y)


def pairwise_accuracy(chosen: jax.Array, rejected: jax.Array) -> jax.Array:
    """Fraction of pairs with ``chosen > rejected``; a tie counts 0.5."""
    right = jnp.where(chosen > rejected, 1.0, jnp.where(chosen == rejected, 0.5, 0.0))
    return jnp.mean(right)


def binary_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of candidates whose ``logit > 0`` agrees with the 0/1 label."""
    return jnp.mean(((logits > 0) == (labels > 0.5)).astype(jnp.float32))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, tied values sharing the mean of their ranks."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (ties 1/2); NaN with one class."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def score_stats(scores) -> dict:
    """Mean and standard deviation of a set of scores (NaN when empty)."""
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        return {"score_mean": float("nan"), "score_std": float("nan")}
    return {"score_mean": float(scores.mean()), "score_std": float(scores.std())}
