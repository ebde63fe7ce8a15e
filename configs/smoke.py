"""Seconds-long runs for tests: a very small model on the first records of each source.

`configs/smoke.py:mesh8` is the same run laid out for 8 devices (4 data x 2 fsdp) so tests can
compare it with the 1-device run; `:fsdp8` is 1 data x 8 fsdp and `:tp` is 4 fsdp x 2 tensor
(Megatron tensor parallelism, see rlaif_jax/sharding.py).
"""

from rlaif_jax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.progress = False
    c.model.n_positions = 160
    c.model.n_embd = 64
    c.model.n_layer = 2
    c.model.n_head = 4
    c.tokenizer.vocab_size = 600
    c.data.max_records_per_source = 60
    c.data.max_len = 160
    c.sft.steps = 24
    c.sft.batch_size = 8
    c.sft.grad_accum = 1
    c.sft.lr = 3e-3
    c.sft.warmup_steps = 4
    c.sft.eval_every = 12
    c.sft.eval_batch_size = 8
    c.sft.log_every = 4
    c.checkpoint.every_steps = 8
    c.checkpoint.keep = 3
    c.mesh.fsdp_min_size = 1024
    c.sample.max_prompts = 8
    c.sample.num_samples = 3
    c.sample.batch_size = 8
    c.sample.max_prompt_len = 64
    c.sample.max_new_tokens = 32
    c.feedback.exec_timeout = 5.0
    c.reward.steps = 12
    c.reward.batch_size = 8
    c.reward.lr = 1e-3
    c.reward.warmup_steps = 2
    c.reward.eval_every = 6
    c.reward.log_every = 3
    c.ppo.iterations = 3
    c.ppo.prompts_per_iteration = 8
    c.ppo.max_new_tokens = 32
    c.ppo.minibatch_size = 4
    c.ppo.lr = 1e-4
    c.ppo.critic_lr = 1e-4
    c.ppo.checkpoint_every = 2
    if arg == "mesh8":
        c.mesh.data = 4
        c.mesh.fsdp = 2
    elif arg == "fsdp8":
        c.mesh.data, c.mesh.fsdp = 1, 8
    elif arg == "tp":
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 4, 2
    elif arg:
        raise ValueError(f"configs/smoke.py: unknown argument {arg!r} (known: mesh8, fsdp8, tp)")
    return c
