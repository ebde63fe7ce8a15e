"""The embedded default: a 1.4M-parameter GPT-2 (4 layers, 128 wide) trained from scratch on CPU.

Data: the Hugging Face APIBench records (seeded 80/10/10 split) plus TorchHub train (10% held out
for validation); TorchHub eval is a second test set. Tokenizer: a byte-level BPE trained on the
training split. Sized so that SFT takes a few minutes on 2 CPU cores.

    rlaif-jax sft --config=configs/tiny.py --workdir runs/tiny
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
    return c
