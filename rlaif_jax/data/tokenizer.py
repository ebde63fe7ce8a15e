"""Tokenizers: any Hugging Face tokenizer from a local directory, or a byte-level BPE trained here.

Whatever the source, the tokenizer used by a run is saved in `<workdir>/tokenizer` in Hugging Face
format, so every later stage (and `transformers.AutoTokenizer`) loads exactly the same one. In a
multi-host run process 0 saves it; the other hosts build the same tokenizer and do not write.
"""

from __future__ import annotations

import logging
import pathlib
import shutil
import tempfile
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rlaif_jax import distributed

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> PreTrainedTokenizerFast:
    """Trains a GPT-2-style byte-level BPE on `texts`; `<|endoftext|>` is BOS/EOS, `<|pad|>` pads."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=None, pad_token=PAD)


def load_tokenizer(path: str | pathlib.Path):
    """Loads a tokenizer from a local directory; a missing pad token falls back to EOS."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer in {path} has no EOS token; generation needs one")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_for_run(config, workdir: pathlib.Path, train_texts: Iterable[str]):
    """The run's tokenizer: reuse `<workdir>/tokenizer`, else load the configured one, else train.

    `train_texts` is only consumed when a BPE is trained.
    """
    out = workdir / "tokenizer"
    if out.is_dir():
        return load_tokenizer(out)
    source = config.tokenizer.path or config.model.hf_path
    if source:
        tok = load_tokenizer(source)
        logging.info("Loaded tokenizer from %s (vocab %d)", source, len(tok))
    else:
        tok = train_bpe(train_texts, config.tokenizer.vocab_size, config.tokenizer.min_frequency)
        logging.info("Trained byte-level BPE on the training split (vocab %d)", len(tok))
    if not distributed.is_writer():  # multi-host: the same tokenizer, saved privately
        with tempfile.TemporaryDirectory() as private:
            tok.save_pretrained(private)
            return load_tokenizer(private)
    # Saved under a temporary name, then renamed: another host never sees a partial directory.
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    tmp.rename(out)
    return load_tokenizer(out)
