"""What configs/gpt2_large.py and configs/qwen25_coder_05b.py share: the study's pipeline on
Hugging Face APIBench for a pretrained model of some hundred million parameters, sized for a
TPU v4-8 or one 80 GB GPU. Not a config itself (no get_config): each of the two loads
`study_config` with `runpy.run_path` (config files are loaded by path, not as a package) and
sets what differs: the model's sizes, SFT length and learning rate, the judge.
"""

from ml_collections import ConfigDict

from rlaif_jax.config import base_config


def study_config(hf_path: str) -> ConfigDict:
    c = base_config()
    c.model.hf_path = hf_path
    # bf16 compute, fp32 master params, fsdp over all devices, remat on; the model's tokenizer.
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = True
    c.data.sources = [ConfigDict({"hub": "huggingface", "path": "", "role": "split"})]
    c.data.max_len = 1024
    c.sft.batch_size = 64
    c.sft.warmup_steps = 100
    c.sft.weight_decay = 0.0
    c.sft.eval_every = 500
    c.checkpoint.every_steps = 500
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    # Candidates for the judge: 4 per training prompt, sampled at temperature 0.7.
    c.sample.split = "train"
    c.sample.num_samples = 4
    c.sample.max_prompt_len = 256
    c.sample.max_new_tokens = 512
    c.sample.temperature = 0.7
    c.sample.batch_size = 64
    # AI feedback from an OpenAI judge (the model is each config's), rubric gorilla8-v1.
    c.feedback.backend = "openai"
    c.feedback.rubric = "gorilla8-v1"
    c.feedback.logprobs = True
    c.feedback.threshold = 6
    # Reward model: Bradley-Terry on the judge's preference pairs, trunk from SFT.
    c.reward.loss = "pairwise"
    c.reward.init = "sft"
    c.reward.steps = 1000
    c.reward.batch_size = 16
    c.reward.lr = 1e-5
    c.reward.warmup_steps = 50
    c.reward.eval_every = 200
    # PPO against the reward model, separate critic started from it.
    c.ppo.iterations = 200
    c.ppo.prompts_per_iteration = 64
    c.ppo.minibatch_size = 16
    c.ppo.epochs = 2
    c.ppo.max_new_tokens = 256
    c.ppo.temperature = 1.0
    c.ppo.lr = 1e-6
    c.ppo.critic_lr = 5e-6
    c.ppo.critic = "separate"
    c.ppo.kl_coef = 0.05
    c.ppo.target_kl = 6.0
    c.ppo.checkpoint_every = 20
    c.eval.split = "test"
    c.stages = ("sft", "sample", "label", "reward", "ppo", "eval")
    return c
