"""The embedded default: a 1.4M-parameter GPT-2 (4 layers, 128 wide) trained from scratch on CPU.

Data: the Hugging Face APIBench records (seeded 80/10/10 split) plus TorchHub train (10% held out
for validation); TorchHub eval is a second test set. Tokenizer: a byte-level BPE trained on the
training split. The whole pipeline is sized for about 15 minutes on 2 CPU cores: SFT (300 steps),
4 candidates for each of 128 training prompts, labels by the offline reference judge, a reward
model (80 steps of 8 pairs), PPO (10 iterations of 32 prompts sampled at temperature 0.7,
reward = RM score + 5 when the rollout's code runs, fixed KL coefficient 0.2), then greedy
evaluation of the test split from SFT and from PPO.

    rlaif-jax run --config=configs/tiny.py --workdir runs/tiny
"""

from rlaif_jax.config import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.model.n_positions = 512
    c.model.n_embd = 128
    c.model.n_layer = 4
    c.model.n_head = 4
    c.model.dropout = 0.1
    c.tokenizer.vocab_size = 4096
    c.data.max_len = 512
    c.sft.steps = 300
    c.sft.batch_size = 16
    c.sft.lr = 2e-3
    c.sft.warmup_steps = 20
    c.sft.log_every = 10
    c.sft.eval_every = 100
    c.checkpoint.every_steps = 100
    c.sample.max_prompt_len = 96
    c.sample.max_new_tokens = 384
    c.sample.batch_size = 32
    c.sample.temperature = 0.7
    c.sample.max_prompts = 128  # x 4 samples: the candidates the judge labels
    c.reward.steps = 80
    c.reward.batch_size = 8
    c.reward.eval_every = 40
    c.ppo.iterations = 10
    c.ppo.prompts_per_iteration = 32
    c.ppo.max_new_tokens = 256
    c.ppo.lr = 5e-5
    c.ppo.critic_lr = 1e-4
    # Hybrid reward: RM score + 5 when the rollout's code runs, rollouts at temperature 0.7.
    # Chosen on the validation split over seeds 0-2 (same SFT and reward models; README's
    # pipeline section): at temperature 1 only 0-9% of rollouts run, so the bonus hardly fires
    # and greedy executability fell; at 0.7 it rose on every seed (mean +60.9 pt, AST +14.4 pt),
    # by converging on ONE runnable TorchHub program for every question (distinct_code 0.02-0.03).
    # exec_ast_weight=5 instead of exec_weight (reward only code that runs AND is the right API)
    # kept more diversity but gained less (+15.4 pt exec, +0.4 pt runs-and-matches).
    c.ppo.temperature = 0.7
    c.ppo.exec_weight = 5.0
    # A fixed, firm KL penalty: with the adaptive controller (target 6 nats) the policy drifted
    # to one template the reward model liked (measured on the validation split, see README).
    c.ppo.adaptive_kl = False
    c.ppo.kl_coef = 0.2
    c.ppo.checkpoint_every = 5
    return c
