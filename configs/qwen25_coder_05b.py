"""A modern policy: Qwen2.5-Coder-0.5B (494M, Llama family) through the whole pipeline.

The same pipeline as configs/gpt2_large.py on HF APIBench, starting from a code model: RMSNorm,
rotary embeddings, grouped-query attention (14 query / 2 key-value heads), SwiGLU, q/k/v biases,
tied embeddings, a 151,936-token vocabulary. `model.hf_path` decides the family (its config.json
says model_type "qwen2", which rlaif_jax/models/llama.py implements); the tokenizer is the
model's own. The judge is gpt-4o-mini (cheaper and stronger than gpt-3.5-turbo).

Not run here (no accelerator, no network). Save the model on a machine with network with
`AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-Coder-0.5B").save_pretrained(DIR)` and
`AutoTokenizer.from_pretrained("Qwen/Qwen2.5-Coder-0.5B").save_pretrained(DIR)`, then

    rlaif-jax run --config=configs/qwen25_coder_05b.py:/path/to/Qwen2.5-Coder-0.5B --workdir runs/qwen

Sized for a TPU v4-8 or one 80 GB GPU: bf16 compute, fp32 master params, fsdp over all devices,
remat on. The large vocabulary makes the float32 logits the biggest activation, hence the small
micro-batches (grad_accum). `--config.mesh.tensor=2` adds tensor parallelism (2 divides the 14
query and 2 key-value heads; 4 does not). Expected memory per device: README, "Scale-out"
(`python -m rlaif_jax.memory configs/qwen25_coder_05b.py --devices 4 --arch qwen2.5-coder-0.5b`).
"""

from ml_collections import ConfigDict

from rlaif_jax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.model.hf_path = arg or "/path/to/Qwen2.5-Coder-0.5B"
    c.model.family = "llama"  # informational: hf_path's model_type ("qwen2") decides
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = True
    # The checkpoint's config.json decides the architecture; these match it for validation.
    c.model.n_positions = 32768
    c.model.n_embd, c.model.n_layer, c.model.n_head, c.model.n_kv_head = 896, 24, 14, 2
    c.data.sources = [ConfigDict({"hub": "huggingface", "path": "", "role": "split"})]
    c.data.max_len = 1024
    c.sft.steps = 2000
    c.sft.batch_size = 64
    c.sft.grad_accum = 8
    c.sft.lr = 1e-5
    c.sft.warmup_steps = 100
    c.sft.weight_decay = 0.0
    c.sft.eval_every = 500
    c.checkpoint.every_steps = 500
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.sample.split = "train"
    c.sample.num_samples = 4
    c.sample.max_prompt_len = 256
    c.sample.max_new_tokens = 512
    c.sample.temperature = 0.7
    c.sample.batch_size = 64
    c.feedback.backend = "openai"
    c.feedback.model = "gpt-4o-mini"
    c.feedback.rubric = "gorilla8-v1"
    c.feedback.logprobs = True
    c.feedback.threshold = 6
    c.reward.loss = "pairwise"
    c.reward.init = "sft"
    c.reward.steps = 1000
    c.reward.batch_size = 16
    c.reward.lr = 1e-5
    c.reward.warmup_steps = 50
    c.reward.eval_every = 200
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
