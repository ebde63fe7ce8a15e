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
    """The records' prompt + target + EOS rows (`encode_texts`)."""
    return encode_texts([prompt_text(r, data_cfg) for r in records],
                        [target_text(r, data_cfg) for r in records], tokenizer,
                        int(data_cfg.max_len))


def encode_texts(prompts: list[str], targets: list[str], tokenizer, max_len: int) -> EncodedSplit:
    """Rows of ``prompt + target + EOS``, right-padded (cut) to `max_len`, the loss mask on the
    target and EOS. Prompt and target are tokenized separately, so the mask boundary is exact;
    the reward model's sequences are built here too, so it reads what the policy writes."""
    n = len(prompts)
    ids = np.full((n, max_len), tokenizer.pad_token_id, np.int32)
    attn = np.zeros((n, max_len), np.int32)
    loss = np.zeros((n, max_len), np.int32)
    if not n:
        return EncodedSplit(ids, attn, loss, 0)
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    truncated = 0
    for i, (p, t) in enumerate(zip(p_ids, t_ids)):
        seq = list(p) + list(t) + [tokenizer.eos_token_id]
        if len(seq) > max_len:
            truncated += 1
            seq = seq[:max_len]
        ids[i, :len(seq)] = seq
        attn[i, :len(seq)] = 1
        loss[i, len(p):len(seq)] = 1
    return EncodedSplit(ids, attn, loss, truncated)


class BatchSchedule:
    """Which examples form the batch of a given step; a pure function of (seed, step).

    Every epoch is a new seeded permutation of the examples, cut into `batch_size` batches (the
    few examples left over are dropped for that epoch only). With `group_by_length`, the
    permutation is first cut into windows of `group_window` batches, each window is sorted by
    length and cut into batches, and the batches are shuffled: batches then hold examples of
    similar length, so trimming padding (`trim_to_bucket`) saves most of the padded compute.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int,
                 group_by_length: bool = True, group_window: int = 32):
        self.lengths = np.asarray(lengths)
        self.n, self.batch_size, self.seed = len(self.lengths), batch_size, seed
        if self.n < batch_size:
            raise ValueError(f"the training split has {self.n} examples, fewer than one batch "
                             f"of {batch_size}")
        self.batches_per_epoch = self.n // batch_size
        self.group_by_length, self.group_window = group_by_length, group_window
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng(zlib.crc32(f"sft-epoch-{self.seed}-{epoch}".encode()))

    def _epoch_batches(self, epoch: int) -> np.ndarray:
        """[batches_per_epoch, batch_size] example indices of one epoch."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = self._rng(epoch)
        perm = rng.permutation(self.n)[:self.batches_per_epoch * self.batch_size]
        if self.group_by_length:
            window = self.group_window * self.batch_size
            chunks = [perm[i:i + window] for i in range(0, len(perm), window)]
            perm = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = perm.reshape(self.batches_per_epoch, self.batch_size)
        if self.group_by_length:
            batches = batches[rng.permutation(self.batches_per_epoch)]
        self._epoch_cache = (epoch, batches)
        return batches

    def position(self, step: int) -> dict:
        """The data position reached before `step` (stored in checkpoints for the record)."""
        epoch, batch = divmod(step, self.batches_per_epoch)
        return {"epoch": epoch, "batch": batch}

    def indices(self, step: int) -> np.ndarray:
        epoch, batch = divmod(step, self.batches_per_epoch)
        return self._epoch_batches(epoch)[batch]


def trim_to_bucket(batch: dict, bucket: int) -> dict:
    """Cuts trailing all-padding columns, keeping a length that is a multiple of `bucket`.

    Padding never changes the loss, so this only saves compute; the jitted step compiles once per
    distinct length (at most max_len / bucket shapes). `bucket=0` keeps the full length.
    """
    length = batch["attention_mask"].shape[-1]
    if bucket <= 0:
        return batch
    used = int(batch["attention_mask"].sum(axis=-1).max())
    keep = min(length, max(bucket, -(-used // bucket) * bucket))
    return {k: v[..., :keep] for k, v in batch.items()}


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
