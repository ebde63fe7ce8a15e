"""PPO rollouts: which prompts, the sequence layout, the policy/critic forward, and scoring.

A rollout batch is `B` prompts of the training split (a seeded shuffled order, `PromptSchedule`),
left-padded to `P = sample.max_prompt_len`, and the `N = ppo.max_new_tokens` tokens the compiled
sampler drew for them (right-padded after EOS). The full sequence is `[prompt | response]`,
[B, P + N], with position ids from the attention mask, exactly as the sampler saw it; the logits
and hidden states at positions `P-1 .. P+N-2` are the ones that predict response tokens 0..N-1.

`make_score_fn` builds the ONE jitted function that turns a sampled batch into everything PPO
needs, on device: policy and reference log-probs of the sampled tokens (recomputed with a full
forward at the sampling temperature), the critic's values, the per-token KL to the reference and
the sequence reward of the reward source (e.g. the reward model at the last response token).
`host_rewards` adds the optional executability / AST-match rewards, which need the text.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax.models.build import make_trunk
from rlaif_jax.models.gpt2 import ScalarHead
from rlaif_jax.sampling import positions_from_mask
from rlaif_jax.train.losses import token_log_probs


class PromptSchedule:
    """Prompt indices of iteration `i`: a pure function of (seed, i), so a resumed run repeats them.

    The prompts are an endless stream of seeded permutations of `0..n-1` (one per pass over the
    split); iteration `i` takes stream positions `[i * per_iteration, (i + 1) * per_iteration)`.
    """

    def __init__(self, n: int, per_iteration: int, seed: int):
        if n < 1:
            raise ValueError("the training split has no prompts for PPO")
        self.n, self.per_iteration, self.seed = n, per_iteration, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def indices(self, iteration: int) -> np.ndarray:
        start = iteration * self.per_iteration
        return np.array([self._perm(pos // self.n)[pos % self.n]
                         for pos in range(start, start + self.per_iteration)])


def response_mask(lengths: jax.Array, n: int) -> jax.Array:
    """[B, n] float32: 1 for the first `lengths[b]` generated tokens (EOS included)."""
    return (jnp.arange(n)[None, :] < lengths[:, None]).astype(jnp.float32)


def full_sequence(prompt_ids, prompt_mask, tokens, resp_mask):
    """`[prompt | response]` ids, attention mask and position ids, [B, P + N] each."""
    ids = jnp.concatenate([prompt_ids, tokens], axis=1).astype(jnp.int32)
    mask = jnp.concatenate([prompt_mask.astype(jnp.int32), resp_mask.astype(jnp.int32)], axis=1)
    return ids, mask, positions_from_mask(mask)


def left_align(ids, mask):
    """Moves each row's left padding to its end: `[prompt | response | padding]` from position 0.

    The reward model then sees sequences laid out as in its own training, whatever position
    convention its scoring function uses.
    """
    length = ids.shape[1]
    shift = jnp.argmax(mask, axis=1)  # number of leading pads: the first index with mask 1
    index = (jnp.arange(length)[None, :] + shift[:, None]) % length
    return (jnp.take_along_axis(ids, index, axis=1), jnp.take_along_axis(mask, index, axis=1))


@dataclasses.dataclass(frozen=True)
class ActorCritic:
    """The policy (a causal LM of either model family) and its critic: a value head on its own
    trunk ("separate") or on the policy's trunk ("shared").

    Params: policy `{"transformer"}` (the LM's own tree); critic `{"transformer", "value_head"}`
    when separate, `{"value_head"}` when shared.
    """

    policy: nn.Module
    critic_mode: str
    temperature: float

    @property
    def trunk(self) -> nn.Module:
        return make_trunk(self.policy.config)

    @property
    def value_head(self) -> nn.Module:
        return ScalarHead(0.0, self.policy.config.param_dtype)

    def __call__(self, policy_params, critic_params, ids, mask, positions, prompt_len: int):
        """Tempered logits [B, N, V] and values [B, N] at the positions predicting the response."""
        hidden, _ = self.policy.apply({"params": policy_params}, ids, positions=positions,
                                      attention_mask=mask, method="hidden_states")
        hidden = hidden[:, prompt_len - 1:-1]
        logits = self.policy.apply({"params": policy_params}, hidden, method="lm_logits")
        logits = logits / self.temperature
        if self.critic_mode == "shared":
            critic_hidden = hidden
        else:
            critic_hidden, _ = self.trunk.apply({"params": critic_params["transformer"]}, ids,
                                                positions=positions, attention_mask=mask)
            critic_hidden = critic_hidden[:, prompt_len - 1:-1]
        values = self.value_head.apply({"params": critic_params["value_head"]}, critic_hidden)
        return logits, values

    def log_probs(self, policy_params, ids, mask, positions, prompt_len: int):
        """Tempered log-probs [B, N] of the response tokens (for the frozen reference)."""
        hidden, _ = self.policy.apply({"params": policy_params}, ids, positions=positions,
                                      attention_mask=mask, method="hidden_states")
        logits = self.policy.apply({"params": policy_params}, hidden[:, prompt_len - 1:-1],
                                   method="lm_logits")
        return token_log_probs(logits / self.temperature, ids[:, prompt_len:])


# fn(params, batch) -> {"reward": [B], other logged [B] arrays}; batch holds "input_ids" and
# "attention_mask" ([prompt | response | padding], left-aligned), "tokens", "response_mask",
# "done" and "lengths".
DeviceRewardFn = Callable[[Any, dict], dict]

# What every rollout holds (name: number of dimensions, batch first); any other entry (the
# reward function's extras such as "rm_score", "sampler_logp_gap") is only logged.
ROLLOUT_NDIM = {"prompt_ids": 2, "prompt_mask": 2, "tokens": 2, "response_mask": 2, "logp": 2,
                "ref_logp": 2, "values": 2, "kl": 2, "reward": 1, "done": 1, "lengths": 1}


def make_score_fn(ac: ActorCritic, reward_fn: DeviceRewardFn, prompt_len: int,
                  no_eos_penalty: float, compare_sampler: bool) -> Callable:
    """`score(policy, critic, ref, reward_params, prompt_ids, prompt_mask, gen) -> rollout`.

    `gen` is the sampler's output. The rollout dict ([B, ...] arrays, batch-major) holds the
    prompt, `tokens`, `response_mask`, `logp` (policy), `ref_logp`, `values`, `kl` (per token,
    logp - ref_logp), `reward` (sequence reward incl. the no-EOS penalty), `done`, `lengths`
    and the reward function's extra outputs. With `compare_sampler` (temperature 1), it also
    returns `sampler_logp_gap`, the largest difference to the sampler's own log-probs.
    """

    def score(policy, critic, ref, reward_params, prompt_ids, prompt_mask, gen):
        n = gen["tokens"].shape[1]
        resp_mask = response_mask(gen["lengths"], n)
        ids, mask, positions = full_sequence(prompt_ids, prompt_mask, gen["tokens"], resp_mask)
        logits, values = ac(policy, critic, ids, mask, positions, prompt_len)
        logp = token_log_probs(logits, gen["tokens"]) * resp_mask
        ref_logp = ac.log_probs(ref, ids, mask, positions, prompt_len) * resp_mask
        aligned_ids, aligned_mask = left_align(ids, mask)
        extra = reward_fn(reward_params, {
            "input_ids": aligned_ids, "attention_mask": aligned_mask, "tokens": gen["tokens"],
            "response_mask": resp_mask, "done": gen["done"], "lengths": gen["lengths"]})
        reward = extra.pop("reward") + no_eos_penalty * (1.0 - gen["done"].astype(jnp.float32))
        rollout = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "tokens": gen["tokens"],
                   "response_mask": resp_mask, "logp": logp, "ref_logp": ref_logp,
                   "values": values * resp_mask, "kl": (logp - ref_logp) * resp_mask,
                   "reward": reward.astype(jnp.float32), "done": gen["done"],
                   "lengths": gen["lengths"], **extra}
        if compare_sampler:
            rollout["sampler_logp_gap"] = jnp.max(jnp.abs(logp - gen["logprobs"] * resp_mask),
                                                  axis=1)
        return rollout

    return score


def decode_responses(tokenizer, tokens: np.ndarray, lengths: np.ndarray,
                     done: np.ndarray) -> list[str]:
    """The response texts (EOS and padding dropped)."""
    return [tokenizer.decode(row[:int(n) - int(d)].tolist(), skip_special_tokens=True)
            for row, n, d in zip(tokens, lengths, done)]


class HostRewards:
    """Executability (sandboxed run) and AST match of decoded responses against each record's gold.

    Built when a host reward weight is non-zero (or rollout quality is tracked). `__call__`
    returns `{"exec": [B], "ast": [B]}` float arrays (1.0 = executable / AST-correct, exactly as
    the evaluator judges them) for the sources on, and `"exec_ast"` (runs AND matches, the
    evaluator's `executable_ast_accuracy`) when both are on.
    """

    def __init__(self, exec_on: bool, ast_on: bool, exec_timeout: float, workers: int):
        self.exec_on, self.ast_on = exec_on, ast_on
        self.exec_timeout, self.workers = exec_timeout, workers or None
        self._dbs: dict = {}

    def _db(self, hub: str):
        from rlaif_jax.evaluation import ast_match

        if hub not in self._dbs:
            self._dbs[hub] = ast_match.APIDatabase.load(hub)
        return self._dbs[hub]

    def __call__(self, texts: list[str], records: list[dict]) -> dict[str, np.ndarray]:
        from rlaif_jax.evaluation import ast_match, sandbox

        out = {}
        if self.exec_on:
            results = sandbox.run_many([sandbox.executable_code(t) for t in texts],
                                       [r["hub"] for r in records], workers=self.workers,
                                       timeout=self.exec_timeout)
            out["exec"] = np.array([r.ok for r in results], np.float32)
        if self.ast_on:
            out["ast"] = np.array([ast_match.match_response(t, r, self._db(r["hub"])).correct
                                   for t, r in zip(texts, records)], np.float32)
        if self.exec_on and self.ast_on:
            out["exec_ast"] = out["exec"] * out["ast"]
        return out
