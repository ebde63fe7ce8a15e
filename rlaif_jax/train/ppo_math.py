"""The arithmetic of PPO for language models, as pure `jax.numpy` functions.

Everything here works on right-padded per-token arrays of a rollout batch, shape [B, N] (N
generated tokens per response, `mask` 1 for a real response token and 0 for padding after it),
so each function can be traced into a jitted update or tested against a hand computation:

* `masked_mean` / `masked_var` / `masked_whiten`: statistics over the real tokens only;
* `kl_penalized_rewards`: per-token reward -beta * KL(token), plus the sequence reward on the
  last real token;
* `gae`: generalised advantage estimation (Schulman et al. 2016), each response an episode that
  ends at its last real token;
* `clipped_policy_loss`, `clipped_value_loss`: PPO's clipped surrogate objectives;
* `entropy_from_logits`, `approx_kl` (k1 and k3 estimators), `explained_variance`;
* KL controllers on a scalar beta: `adaptive_kl_update` (Ziegler et al. 2019) and
  `fixed_kl_update`, pure functions so beta can live in the jitted loop and in checkpoints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_sum(x: Array, mask: Array, axis=None) -> Array:
    return jnp.sum(x * mask, axis=axis)


def masked_mean(x: Array, mask: Array, axis=None) -> Array:
    """Mean of `x` over the entries where `mask` is 1 (0 when there are none)."""
    mask = mask.astype(jnp.float32)
    return masked_sum(x, mask, axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def masked_var(x: Array, mask: Array) -> Array:
    """Population variance of `x` over the masked entries."""
    mean = masked_mean(x, mask)
    return masked_mean(jnp.square(x - mean), mask)


def masked_whiten(x: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
    """`(x - mean) / std` over the masked entries (mean kept when not `shift_mean`); 0 elsewhere."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def last_token_index(mask: Array) -> Array:
    """Index of the last real token of each right-padded row of `mask` [B, N] -> [B]."""
    return jnp.maximum(jnp.sum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def kl_penalized_rewards(kl: Array, score: Array, mask: Array, beta) -> Array:
    """Per-token rewards [B, N]: `-beta * kl` everywhere, plus `score` [B] on the last token."""
    mask = mask.astype(jnp.float32)
    last = jax.nn.one_hot(last_token_index(mask), kl.shape[-1], dtype=jnp.float32)
    return (-beta * kl + score[:, None] * last) * mask


def gae(rewards: Array, values: Array, mask: Array, gamma: float, lam: float):
    """Advantages and returns [B, N] for right-padded responses.

    With delta_t = r_t + gamma * V_{t+1} - V_t, the advantage is
    A_t = delta_t + gamma * lam * A_{t+1}; V and A past a response's last token are 0 (the
    episode ends there). Returns are A_t + V_t. Padded entries are 0 in both outputs.
    """
    mask = mask.astype(jnp.float32)
    rewards, values = rewards * mask, values * mask
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    deltas = rewards + gamma * next_values - values

    def backward(next_advantage, xs):
        delta, m = xs
        advantage = (delta + gamma * lam * next_advantage) * m
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[:, 0]), (deltas.T, mask.T),
                                 reverse=True)
    advantages = advantages.T
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array,
                        clip_eps: float):
    """PPO's clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1 -+ eps)).

    `r = exp(logp - old_logp)`. Returns `(loss, clip_fraction)`, the fraction of tokens where
    the clipped term is the one used (the update is capped there).
    """
    ratio = jnp.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).astype(jnp.float32), mask)
    return loss, clip_fraction


def clipped_value_loss(values: Array, old_values: Array, returns: Array, mask: Array,
                       value_clip: float):
    """0.5 * mean over tokens of max((V - R)^2, (V_clipped - R)^2).

    `V_clipped = old_V + clip(V - old_V, -value_clip, value_clip)`; `value_clip <= 0` turns
    clipping off (plain squared error). Returns `(loss, clip_fraction)`.
    """
    error = jnp.square(values - returns)
    if value_clip <= 0:
        return 0.5 * masked_mean(error, mask), jnp.zeros((), jnp.float32)
    v_clipped = old_values + jnp.clip(values - old_values, -value_clip, value_clip)
    error_clipped = jnp.square(v_clipped - returns)
    loss = 0.5 * masked_mean(jnp.maximum(error, error_clipped), mask)
    clip_fraction = masked_mean((error_clipped > error).astype(jnp.float32), mask)
    return loss, clip_fraction


def entropy_from_logits(logits: Array, mask: Array) -> Array:
    """Mean entropy (nats) of softmax(logits) [B, N, V] over the masked tokens."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    probs = jax.nn.softmax(logits, axis=-1)
    entropy = logz - jnp.sum(probs * logits, axis=-1)
    return masked_mean(entropy, mask)


def approx_kl(logp: Array, old_logp: Array, mask: Array):
    """Estimates of KL(old || new) per token from tokens sampled by the old policy.

    k1 = mean(old_logp - logp) (unbiased, can be negative); k3 = mean(r - 1 - log r) with
    r = p_new / p_old (unbiased and always >= 0, Schulman's "approximating KL" estimators).
    """
    log_ratio = logp - old_logp
    k1 = masked_mean(-log_ratio, mask)
    k3 = masked_mean(jnp.exp(log_ratio) - 1.0 - log_ratio, mask)
    return k1, k3


def explained_variance(values: Array, returns: Array, mask: Array) -> Array:
    """1 - Var(R - V) / Var(R) over the masked tokens (1: perfect, 0: no better than a constant)."""
    return 1.0 - masked_var(returns - values, mask) / jnp.maximum(masked_var(returns, mask), 1e-8)


def adaptive_kl_update(beta, kl, n_steps, target: float, horizon: float):
    """Ziegler et al.'s proportional controller: beta *= 1 + clip(KL/target - 1, +-0.2) * n/H.

    `kl` is the measured KL per sequence and `n_steps` the number of sequences it was measured
    on; beta grows while the KL is above the target and shrinks while it is below.
    """
    error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
    return beta * (1.0 + error * n_steps / horizon)


def fixed_kl_update(beta, kl, n_steps, target: float, horizon: float):
    """A constant beta (same signature as `adaptive_kl_update`)."""
    del kl, n_steps, target, horizon
    return beta


def kl_controller(adaptive: bool):
    """The beta update rule selected by `config.ppo.adaptive_kl`."""
    return adaptive_kl_update if adaptive else fixed_kl_update
