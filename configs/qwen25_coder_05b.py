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

import pathlib
import runpy

# The settings shared with the other study config (configs/_study.py).
study_config = runpy.run_path(str(pathlib.Path(__file__).with_name("_study.py")))["study_config"]


def get_config(arg=None):
    c = study_config(arg or "/path/to/Qwen2.5-Coder-0.5B")
    c.model.family = "llama"  # informational: hf_path's model_type ("qwen2") decides
    # The checkpoint's config.json decides the architecture; these match it for validation.
    c.model.n_positions = 32768
    c.model.n_embd, c.model.n_layer, c.model.n_head, c.model.n_kv_head = 896, 24, 14, 2
    c.sft.steps = 2000
    c.sft.grad_accum = 8  # the 151,936-token logits: small micro-batches
    c.sft.lr = 1e-5
    c.feedback.model = "gpt-4o-mini"
    return c
