"""PPO arithmetic against hand computations (plain Python loops)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from rlaif_jax.train import ppo_math as pm


def _hand_gae(rewards, values, length, gamma, lam):
    """GAE of one response of `length` real tokens, written out as in the paper."""
    adv = [0.0] * length
    next_adv = 0.0
    for t in reversed(range(length)):
        next_v = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        next_adv = delta + gamma * lam * next_adv
        adv[t] = next_adv
    return adv, [a + v for a, v in zip(adv, values[:length])]


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8), (0.99, 0.95)])
def test_gae_matches_a_hand_computation_and_ignores_padding(gamma, lam):
    rng = np.random.default_rng(0)
    lengths = [5, 2, 7, 1]
    B, N = len(lengths), 7
    mask = np.array([[t < n for t in range(N)] for n in lengths], np.float32)
    rewards = rng.normal(size=(B, N)).astype(np.float32)
    values = rng.normal(size=(B, N)).astype(np.float32)
    # Garbage in the padding must not leak into the real tokens.
    garbage_r = np.where(mask > 0, rewards, 1e3)
    garbage_v = np.where(mask > 0, values, -1e3)
    adv, ret = pm.gae(jnp.asarray(garbage_r), jnp.asarray(garbage_v), jnp.asarray(mask),
                      gamma, lam)
    adv, ret = np.asarray(adv), np.asarray(ret)
    for b, n in enumerate(lengths):
        want_adv, want_ret = _hand_gae(rewards[b], values[b], n, gamma, lam)
        np.testing.assert_allclose(adv[b, :n], want_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ret[b, :n], want_ret, rtol=1e-5, atol=1e-5)
        assert np.all(adv[b, n:] == 0) and np.all(ret[b, n:] == 0)


def test_gae_with_lambda_one_and_gamma_one_is_reward_to_go_minus_value():
    rewards = jnp.array([[0.0, 0.0, 2.0, 0.0]])
    values = jnp.array([[0.5, 1.0, 1.5, 9.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = pm.gae(rewards, values, mask, 1.0, 1.0)
    np.testing.assert_allclose(ret[0, :3], [2.0, 2.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(adv[0, :3], [1.5, 1.0, 0.5], atol=1e-6)


def test_kl_penalized_rewards_put_the_score_on_the_last_real_token():
    kl = jnp.array([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r = np.asarray(pm.kl_penalized_rewards(kl, jnp.array([3.0, -1.0]), mask, 0.5))
    np.testing.assert_allclose(r, [[-0.05, -0.1 + 3.0, 0.0], [-0.25, -0.25, -0.25 - 1.0]],
                               atol=1e-6)


def test_whitening_uses_only_masked_entries():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 5.0, size=(4, 6)).astype(np.float32)
    mask = (rng.random((4, 6)) > 0.4).astype(np.float32)
    x_pad = np.where(mask > 0, x, 1e4)  # huge padding would wreck unmasked statistics
    w = np.asarray(pm.masked_whiten(jnp.asarray(x_pad), jnp.asarray(mask)))
    real = w[mask > 0]
    assert abs(real.mean()) < 1e-5
    assert abs(real.var() - 1.0) < 1e-4
    assert np.all(w[mask == 0] == 0)
    np.testing.assert_allclose(float(pm.masked_mean(jnp.asarray(x_pad), jnp.asarray(mask))),
                               x[mask > 0].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(pm.masked_var(jnp.asarray(x_pad), jnp.asarray(mask))),
                               x[mask > 0].var(), rtol=1e-4)
    kept = np.asarray(pm.masked_whiten(jnp.asarray(x_pad), jnp.asarray(mask), shift_mean=False))
    assert abs(kept[mask > 0].mean() - x[mask > 0].mean()) < 1e-4


def test_clipped_policy_loss_and_clip_fraction_on_hand_made_ratios():
    eps = 0.2
    ratios = np.array([[0.5, 1.0, 1.5, 1.1, 0.7, 3.0]])
    adv = np.array([[1.0, 1.0, 1.0, -1.0, -1.0, 9.0]])
    mask = np.array([[1, 1, 1, 1, 1, 0]], np.float32)  # the last entry is padding
    # Per token: max(-A r, -A clip(r)):
    # r=0.5,A=1: max(-0.5,-0.8)=-0.5 (unclipped)   r=1.0,A=1: -1.0
    # r=1.5,A=1: max(-1.5,-1.2)=-1.2 (clipped)     r=1.1,A=-1: max(1.1,1.1)=1.1
    # r=0.7,A=-1: max(0.7,0.8)=0.8 (clipped)
    want_loss = (-0.5 - 1.0 - 1.2 + 1.1 + 0.8) / 5
    loss, frac = pm.clipped_policy_loss(jnp.log(ratios), jnp.zeros_like(ratios), adv, mask, eps)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
    np.testing.assert_allclose(float(frac), 2 / 5, rtol=1e-6)


def test_clipped_value_loss():
    old = jnp.array([[0.0, 0.0, 1.0, 0.0]])
    new = jnp.array([[0.5, -0.1, 0.0, 7.0]])
    ret = jnp.array([[1.0, 1.0, 0.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    # V=0.5 clipped to 0.2: max(0.25, 0.64)=0.64 (clipped)  V=-0.1 in range: 1.21
    # V=0.0 from old 1.0 clipped to 0.8: max(0, 0.64)=0.64 (clipped)
    loss, frac = pm.clipped_value_loss(new, old, ret, mask, 0.2)
    np.testing.assert_allclose(float(loss), 0.5 * (0.64 + 1.21 + 0.64) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(frac), 2 / 3, rtol=1e-6)
    plain, _ = pm.clipped_value_loss(new, old, ret, mask, 0.0)
    np.testing.assert_allclose(float(plain), 0.5 * (0.25 + 1.21 + 0.0) / 3, rtol=1e-6)


def test_entropy_of_uniform_is_log_vocab_and_of_one_hot_is_zero():
    V = 37
    mask = jnp.ones((2, 3))
    np.testing.assert_allclose(float(pm.entropy_from_logits(jnp.zeros((2, 3, V)), mask)),
                               math.log(V), rtol=1e-6)
    peaked = jnp.zeros((2, 3, V)).at[..., 0].set(1e4)
    assert float(pm.entropy_from_logits(peaked, mask)) < 1e-5


def test_approx_kl_estimators():
    logp = jnp.log(jnp.array([[0.5, 0.25, 0.1]]))
    old = jnp.log(jnp.array([[0.25, 0.25, 0.9]]))
    mask = jnp.array([[1.0, 1.0, 0.0]])
    k1, k3 = pm.approx_kl(logp, old, mask)
    np.testing.assert_allclose(float(k1), (math.log(0.25 / 0.5) + 0.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(k3), ((2.0 - 1 - math.log(2.0)) + 0.0) / 2, rtol=1e-6)
    same = pm.approx_kl(old, old, mask)
    assert float(same[0]) == 0.0 and float(same[1]) == 0.0


def test_explained_variance():
    ret = jnp.array([[1.0, 2.0, 3.0, 100.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    assert abs(float(pm.explained_variance(ret, ret, mask)) - 1.0) < 1e-6
    mean = jnp.full_like(ret, 2.0)
    assert abs(float(pm.explained_variance(mean, ret, mask))) < 1e-6


def test_adaptive_kl_controller_moves_beta_toward_the_target_and_clips_the_error():
    beta, target, horizon, n = 0.1, 6.0, 1000.0, 100
    up = float(pm.adaptive_kl_update(beta, 6.6, n, target, horizon))  # 10% above target
    np.testing.assert_allclose(up, beta * (1 + 0.1 * n / horizon), rtol=1e-6)
    down = float(pm.adaptive_kl_update(beta, 5.4, n, target, horizon))
    np.testing.assert_allclose(down, beta * (1 - 0.1 * n / horizon), rtol=1e-6)
    # Far away from the target, the proportional error is clipped to +-0.2.
    far_up = float(pm.adaptive_kl_update(beta, 600.0, n, target, horizon))
    far_down = float(pm.adaptive_kl_update(beta, 0.0, n, target, horizon))
    np.testing.assert_allclose(far_up, beta * 1.02, rtol=1e-6)
    np.testing.assert_allclose(far_down, beta * 0.98, rtol=1e-6)
    assert float(pm.adaptive_kl_update(beta, target, n, target, horizon)) == pytest.approx(beta)
    # Repeated updates at a fixed KL keep moving beta the same way.
    b = beta
    for _ in range(10):
        b = float(pm.adaptive_kl_update(b, 12.0, n, target, horizon))
    np.testing.assert_allclose(b, beta * 1.02 ** 10, rtol=1e-5)


def test_fixed_kl_controller_stays_and_selection():
    assert float(pm.fixed_kl_update(0.3, 100.0, 64, 6.0, 10.0)) == pytest.approx(0.3)
    assert pm.kl_controller(True) is pm.adaptive_kl_update
    assert pm.kl_controller(False) is pm.fixed_kl_update
