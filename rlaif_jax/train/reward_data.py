"""Reward-model data: the AI labels and preference pairs, held-out prompts, token arrays, batches.

Inputs are the label stage's files (formats in the project notes):

* ``W/feedback/pairs.jsonl``: one preference pair per row (``prompt``, ``chosen``, ``rejected``);
  the training data of the pairwise (Bradley-Terry) loss.
* ``W/feedback/labels.jsonl``: one judged candidate per row (``prompt``, ``text``,
  ``acceptable``); the training data of the pointwise loss, and in both modes the held-out set
  whose AUC (scores vs ``acceptable``) is reported.

Hold-out is by PROMPT (``hub`` + ``question_id``): a seeded permutation of all prompts of both
files puts ``reward.validation_fraction`` of them in validation, so no prompt (and none of its
candidates) is seen in training and validation both.

A sequence is ``tokens(prompt) + tokens(response) + EOS`` cut to ``data.max_len``, built by
`sft_data.encode_texts` as the SFT examples are (prompt and response tokenised separately), so the
reward model reads the token sequences the policy writes. Batches are a pure function of the step
(`sft_data.BatchSchedule`), so a resumed run sees the batches an uninterrupted one would; a
pairwise batch is the B chosen rows followed by the B rejected rows, one ``[2B, T]`` array.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import zlib

import numpy as np

from rlaif_jax.data import sft_data
from rlaif_jax.data.jsonl import MalformedRecordError, read_jsonl

# Required keys of each file and the types their values must have.
LABEL_FIELDS = {"question_id": (int, str), "hub": str, "prompt": str, "text": str,
                "acceptable": bool}
PAIR_FIELDS = {"question_id": (int, str), "hub": str, "prompt": str, "chosen": str,
               "rejected": str}


def read_rows(path: pathlib.Path, fields: dict) -> list[dict]:
    """The rows of a JSON Lines file, each checked for `fields`; errors name ``path:line``."""
    rows = []
    for lineno, row in read_jsonl(path):
        for key, types in fields.items():
            if key not in row:
                raise MalformedRecordError(path, lineno, f"missing key {key!r}")
            # bool is an int subclass: a question_id of `true` is still wrong.
            if not isinstance(row[key], types) or (types is not bool
                                                   and isinstance(row[key], bool)):
                raise MalformedRecordError(
                    path, lineno, f"{key!r} is {type(row[key]).__name__}, expected "
                    f"{types.__name__ if isinstance(types, type) else 'int or str'}")
        rows.append(row)
    return rows


def feedback_paths(workdir: pathlib.Path) -> dict:
    return {"labels": workdir / "feedback" / "labels.jsonl",
            "pairs": workdir / "feedback" / "pairs.jsonl"}


def _require(path: pathlib.Path, why: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({why}): run `rlaif-jax label` with this "
                                "--workdir first")


def load_feedback(workdir: pathlib.Path, loss: str) -> tuple[list[dict], list[dict] | None]:
    """(label rows, pair rows) of a workdir; pairs are None when absent in pointwise mode.

    labels.jsonl is always required (pointwise training data, AUC in both modes); pairs.jsonl is
    required by the pairwise loss and, in pointwise mode, only used for held-out accuracy.
    """
    paths = feedback_paths(workdir)
    _require(paths["labels"], "the judged candidates")
    if loss == "pairwise":
        _require(paths["pairs"], "the preference pairs of the pairwise loss")
    labels = read_rows(paths["labels"], LABEL_FIELDS)
    pairs = read_rows(paths["pairs"], PAIR_FIELDS) if paths["pairs"].is_file() else None
    return labels, pairs


def files_digest(workdir: pathlib.Path) -> dict:
    """sha256 of each feedback file present (a resumed run must train on the same data)."""
    return {name: hashlib.sha256(path.read_bytes()).hexdigest()
            for name, path in feedback_paths(workdir).items() if path.is_file()}


def prompt_key(row: dict) -> tuple[str, str]:
    return row["hub"], str(row["question_id"])


def held_out_prompts(keys, fraction: float, seed: int) -> set:
    """The seeded `fraction` of prompt keys to hold out (0 < fraction: at least one, not all)."""
    keys = sorted(set(keys))
    n_val = int(round(fraction * len(keys)))
    if fraction > 0 and len(keys) >= 2:
        n_val = min(max(n_val, 1), len(keys) - 1)
    rng = np.random.default_rng(zlib.crc32(f"reward-holdout-{seed}".encode()))
    return {keys[i] for i in rng.permutation(len(keys))[:n_val]}


@dataclasses.dataclass
class Sequences:
    """Right-padded token rows ``prompt + response + EOS``."""

    input_ids: np.ndarray  # [N, L] int32
    attention_mask: np.ndarray  # [N, L] int32
    n_truncated: int  # rows cut at max_len

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(axis=1)

    def take(self, idx) -> dict:
        return {"input_ids": self.input_ids[idx], "attention_mask": self.attention_mask[idx]}


def encode_texts(prompts: list[str], responses: list[str], tokenizer, max_len: int) -> Sequences:
    """Token rows of ``prompt + response + EOS``, encoded by `sft_data.encode_texts`."""
    enc = sft_data.encode_texts(prompts, responses, tokenizer, max_len)
    return Sequences(enc.input_ids, enc.attention_mask, enc.n_truncated)


@dataclasses.dataclass
class HeldOut:
    """The held-out prompts' distinct sequences, and which of them form pairs and labels."""

    sequences: Sequences  # sorted by length, so evaluation batches carry little padding
    pair_index: np.ndarray  # [P, 2] rows of `sequences`: (chosen, rejected)
    label_index: np.ndarray  # [N] rows of `sequences` of the labelled candidates
    acceptable: np.ndarray  # [N] bool


@dataclasses.dataclass
class RewardData:
    loss: str
    train_pairs: tuple[Sequences, Sequences] | None  # (chosen, rejected), pairwise loss
    train_candidates: Sequences | None  # pointwise loss
    train_labels: np.ndarray | None  # [N] float32 0/1, pointwise loss
    held_out: HeldOut
    counts: dict

    def train_lengths(self) -> np.ndarray:
        if self.loss == "pairwise":
            chosen, rejected = self.train_pairs
            return np.maximum(chosen.lengths, rejected.lengths)
        return self.train_candidates.lengths

    def batch(self, idx: np.ndarray, bucket: int) -> dict:
        """Host arrays of one training batch (pairwise: ``[2B, T]``, chosen rows first)."""
        if self.loss == "pairwise":
            chosen, rejected = (s.take(idx) for s in self.train_pairs)
            out = {k: np.concatenate([chosen[k], rejected[k]]) for k in chosen}
            return sft_data.trim_to_bucket(out, bucket)
        out = sft_data.trim_to_bucket(self.train_candidates.take(idx), bucket)
        out["labels"] = self.train_labels[idx]
        return out


def batch_schedule(lengths: np.ndarray, batch_size: int, seed: int, group_by_length: bool):
    """``(rows, schedule)``: the batch of step s is ``rows[schedule.indices(s)]``.

    `rows` lists the training rows once, or repeated as often as needed to fill one batch when
    there are fewer rows than `batch_size` (tiny runs), so every step has the same shape.
    """
    reps = -(-batch_size // len(lengths))
    rows = np.tile(np.arange(len(lengths)), reps)
    return rows, sft_data.BatchSchedule(lengths[rows], batch_size, seed, group_by_length)


def _held_out(labels: list[dict], pairs: list[dict], tokenizer, max_len: int) -> HeldOut:
    texts: dict[tuple[str, str], int] = {}

    def index(prompt, response):
        return texts.setdefault((prompt, response), len(texts))

    pair_index = np.array([(index(p["prompt"], p["chosen"]), index(p["prompt"], p["rejected"]))
                           for p in pairs], np.int64).reshape(-1, 2)
    label_index = np.array([index(r["prompt"], r["text"]) for r in labels], np.int64)
    seqs = encode_texts([p for p, _ in texts], [r for _, r in texts], tokenizer, max_len)
    order = np.argsort(-seqs.lengths, kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(len(order))
    seqs = Sequences(seqs.input_ids[order], seqs.attention_mask[order], seqs.n_truncated)
    return HeldOut(seqs, where[pair_index], where[label_index],
                   np.array([r["acceptable"] for r in labels], bool))


def build(workdir: pathlib.Path, reward_cfg, data_cfg, seed: int, tokenizer) -> RewardData:
    """Reads the feedback files, holds out prompts and encodes both parts."""
    loss = reward_cfg.loss
    labels, pairs = load_feedback(workdir, loss)
    paths = feedback_paths(workdir)
    if loss == "pairwise" and not pairs:
        raise ValueError(
            f"{paths['pairs']} holds no preference pairs (every prompt's candidates tied, or one "
            "candidate per prompt): use --config.reward.loss=pointwise, or sample more candidates "
            "per prompt (sample.num_samples) / lower feedback.pair_min_margin")
    if loss == "pointwise" and not labels:
        raise ValueError(f"{paths['labels']} holds no labelled candidates")
    pairs = pairs or []
    val_keys = held_out_prompts([prompt_key(r) for r in labels + pairs],
                                reward_cfg.validation_fraction, seed)
    train_l = [r for r in labels if prompt_key(r) not in val_keys]
    val_l = [r for r in labels if prompt_key(r) in val_keys]
    train_p = [p for p in pairs if prompt_key(p) not in val_keys]
    val_p = [p for p in pairs if prompt_key(p) in val_keys]

    max_len = int(data_cfg.max_len)
    train_pairs = train_candidates = train_labels = None
    if loss == "pairwise":
        prompts = [p["prompt"] for p in train_p]
        train_pairs = (encode_texts(prompts, [p["chosen"] for p in train_p], tokenizer, max_len),
                       encode_texts(prompts, [p["rejected"] for p in train_p], tokenizer, max_len))
        n_train, truncated = len(train_p), sum(s.n_truncated for s in train_pairs)
    else:
        train_candidates = encode_texts([r["prompt"] for r in train_l],
                                        [r["text"] for r in train_l], tokenizer, max_len)
        train_labels = np.array([r["acceptable"] for r in train_l], np.float32)
        n_train, truncated = len(train_l), train_candidates.n_truncated
    if not n_train:
        what = "pairs" if loss == "pairwise" else "candidates"
        raise ValueError(
            f"no training {what} left after holding out {len(val_keys)} of the prompts "
            f"(config.reward.validation_fraction={reward_cfg.validation_fraction}): lower the "
            "fraction or label more prompts")

    held_out = _held_out(val_l, val_p, tokenizer, max_len)
    all_keys = {prompt_key(r) for r in labels + pairs}
    counts = {"train_prompts": len(all_keys - val_keys), "val_prompts": len(val_keys),
              "train_pairs": len(train_p), "val_pairs": len(val_p),
              "train_candidates": len(train_l), "val_candidates": len(val_l),
              "train_acceptable_fraction": float(np.mean([r["acceptable"] for r in train_l]))
              if train_l else float("nan"),
              "truncated_train_sequences": truncated,
              "truncated_val_sequences": held_out.sequences.n_truncated}
    return RewardData(loss, train_pairs, train_candidates, train_labels, held_out, counts)
