"""The study's setup: GPT-2-large (774M) through the whole pipeline on Hugging Face APIBench.

SFT of the policy on the HF APIBench training split, 4 candidates per training prompt, AI
feedback from an OpenAI judge (gpt-3.5-turbo, rubric gorilla8-v1, soft scores from log-probs),
a Bradley-Terry reward model on the GPT-2-large trunk, PPO of the policy against it (KL to the
SFT policy, separate critic started from the reward model), and evaluation on the HF test split.

Not run here (no accelerator, no network). Point `model.hf_path` at a directory holding
`config.json`, `model.safetensors` and the tokenizer files, e.g. one saved with
`transformers.AutoModelForCausalLM.from_pretrained("gpt2-large").save_pretrained(DIR)` and
`AutoTokenizer.from_pretrained("gpt2-large").save_pretrained(DIR)` on a machine with network,
and export the judge's key (OPENAI_API_KEY):

    rlaif-jax run --config=configs/gpt2_large.py:/path/to/gpt2-large --workdir runs/gpt2l

Sized for a TPU v4-8 (4 chips) or one 80 GB GPU: bf16 compute, fp32 master params, fsdp over all
devices, remat on; the tokenizer is the model's own. Expected memory per device (README,
"Scale-out"; `python -m rlaif_jax.memory configs/gpt2_large.py --devices 4 --arch gpt2-large`):
PPO, the largest stage, holds about 40 bytes per parameter (policy + Adam, reference, critic +
Adam, reward model), 31 GB in all, 7.2 GiB per chip on a v4-8 before activations.
"""

from ml_collections import ConfigDict

from rlaif_jax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.model.hf_path = arg or "/path/to/gpt2-large"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = True
    # The checkpoint's config.json decides the architecture; these match it for validation.
    c.model.n_positions = 1024
    c.model.n_embd, c.model.n_layer, c.model.n_head = 1280, 36, 20
    c.data.sources = [ConfigDict({"hub": "huggingface", "path": "", "role": "split"})]
    c.data.max_len = 1024
    c.sft.steps = 3000
    c.sft.batch_size = 64
    c.sft.grad_accum = 4
    c.sft.lr = 2e-5
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
    # AI feedback: the study's judge and rubric.
    c.feedback.backend = "openai"
    c.feedback.model = "gpt-3.5-turbo"
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
    # PPO against the reward model.
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
