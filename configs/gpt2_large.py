"""The study's policy: GPT-2-large (774M) loaded from a local Hugging Face directory.

Not run here (no accelerator, no network). Point `model.hf_path` at a directory holding
`config.json`, `model.safetensors` and the tokenizer files, e.g. one saved with
`transformers.AutoModelForCausalLM.from_pretrained("gpt2-large").save_pretrained(DIR)` and
`AutoTokenizer.from_pretrained("gpt2-large").save_pretrained(DIR)` on a machine with network:

    rlaif-jax sft --config=configs/gpt2_large.py:/path/to/gpt2-large --workdir runs/gpt2l

Sized for a TPU v4-8 or one 80 GB GPU: bf16 compute, fp32 master params, fsdp over all devices,
remat on; the tokenizer is the model's own.
"""

from rlaif_jax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.model.hf_path = arg or "/path/to/gpt2-large"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = True
    c.model.n_positions = 1024  # overridden by the checkpoint's config.json
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
    c.sample.max_prompt_len = 256
    c.sample.max_new_tokens = 512
    c.sample.temperature = 0.7
    c.sample.batch_size = 64
    return c
