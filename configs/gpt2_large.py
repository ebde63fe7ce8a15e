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

import pathlib
import runpy

# The settings shared with the other study config (configs/_study.py).
study_config = runpy.run_path(str(pathlib.Path(__file__).with_name("_study.py")))["study_config"]


def get_config(arg=None):
    c = study_config(arg or "/path/to/gpt2-large")
    # The checkpoint's config.json decides the architecture; these match it for validation.
    c.model.n_positions = 1024
    c.model.n_embd, c.model.n_layer, c.model.n_head = 1280, 36, 20
    c.sft.steps = 3000
    c.sft.grad_accum = 4
    c.sft.lr = 2e-5
    c.feedback.model = "gpt-3.5-turbo"
    return c
