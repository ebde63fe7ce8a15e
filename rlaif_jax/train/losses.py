"""Token-level losses shared by the training stages."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets) under `logits` ([B, T, V] -> [B, T]), in float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def next_token_nll(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array):
    """Summed negative log-likelihood of the masked next tokens, and how many there are.

    Position t's logits predict token t+1, which counts when `loss_mask[:, t+1] == 1`.
    """
    weights = loss_mask[:, 1:].astype(jnp.float32)
    nll = -token_log_probs(logits[:, :-1], input_ids[:, 1:])
    return jnp.sum(nll * weights), jnp.sum(weights)
