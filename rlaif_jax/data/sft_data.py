"""Turns parsed Gorilla records into token arrays with response-only loss masks, and batches them.

An example is `prompt + response + EOS`, right-padded to `data.max_len`. `loss_mask[i] = 1` when
token `i` is a response token (or the EOS), i.e. a token the model is trained to predict; prompt
and padding tokens have 0. Batches are a pure function of the step number, so a resumed run sees
exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np

from rlaif_jax.data import gorilla


def prompt_text(rec: dict, data_cfg) -> str:
    return gorilla.format_prompt(rec["instruction"], data_cfg.prompt_template)


def target_text(rec: dict, data_cfg) -> str:
    return gorilla.format_target(rec, tuple(data_cfg.sections))


@dataclasses.dataclass
class EncodedSplit:
    input_ids: np.ndarray  # [N, L] int32
    attention_mask: np.ndarray  # [N, L] int32, 1 for real tokens
    loss_mask: np.ndarray  # [N, L] int32, 1 for response tokens
    n_truncated: int  # examples cut at max_len

    def __len__(self) -> int:
        return len(self.input_ids)

    def take(self, idx: np.ndarray) -> dict:
        return {"input_ids": self.input_ids[idx], "attention_mask": self.attention_mask[idx],
                "loss_mask": self.loss_mask[idx]}


def encode(records, tokenizer, data_cfg) -> EncodedSplit:
    """Tokenizes prompt and response separately, so the mask boundary is exact."""
    prompts = [prompt_text(r, data_cfg) for r in records]
    targets = [target_text(r, data_cfg) for r in records]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    n, length = len(prompts), int(data_cfg.max_len)
    ids = np.full((n, length), tokenizer.pad_token_id, np.int32)
    attn = np.zeros((n, length), np.int32)
    loss = np.zeros((n, length), np.int32)
    truncated = 0
    for i, (p, t) in enumerate(zip(p_ids, t_ids)):
        seq = list(p) + list(t) + [tokenizer.eos_token_id]
        if len(seq) > length:
            truncated += 1
            seq = seq[:length]
        ids[i, :len(seq)] = seq
        attn[i, :len(seq)] = 1
        loss[i, len(p):len(seq)] = 1
    return EncodedSplit(ids, attn, loss, truncated)


class BatchSchedule:
    """Which examples form the batch of a given step: a new seeded permutation every epoch."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if num_examples < 1:
            raise ValueError("the training split is empty")
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed

    def _perm(self, epoch: int) -> np.ndarray:
        key = zlib.crc32(f"sft-epoch-{self.seed}-{epoch}".encode())
        return np.random.default_rng(key).permutation(self.n)

    def position(self, step: int) -> dict:
        """The data position reached before `step` (stored in checkpoints for the record)."""
        start = step * self.batch_size
        return {"epoch": start // self.n, "offset": start % self.n}

    def indices(self, step: int) -> np.ndarray:
        start = step * self.batch_size
        out = []
        epoch, offset = divmod(start, self.n)
        while len(out) < self.batch_size:
            perm = self._perm(epoch)
            take = perm[offset:offset + self.batch_size - len(out)]
            out.extend(take.tolist())
            epoch, offset = epoch + 1, 0
        return np.asarray(out, np.int64)


def eval_batches(split: EncodedSplit, batch_size: int):
    """Fixed-size batches over a whole split; the last one is padded with zero-mask rows."""
    for start in range(0, len(split), batch_size):
        idx = np.arange(start, min(start + batch_size, len(split)))
        batch = split.take(idx)
        short = batch_size - len(idx)
        if short:
            batch = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)])
                     for k, v in batch.items()}
        yield batch


def unigram_baseline(train: EncodedSplit, val: EncodedSplit, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of validation response tokens under the training unigram.

    Add-one smoothed; the loss any model must beat to have learned more than token frequencies.
    """
    train_tokens = train.input_ids[train.loss_mask.astype(bool)]
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    val_tokens = val.input_ids[val.loss_mask.astype(bool)]
    if val_tokens.size == 0:
        return math.nan
    return float(-logp[val_tokens].mean())
