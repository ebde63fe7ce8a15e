"""`rlaif-jax import --hf DIR --workdir W`: a Hugging Face causal LM becomes the workdir's SFT policy.

Writes what a finished `rlaif-jax sft` leaves for the later stages, so `sample`, `eval`, `reward`
(`reward.init=sft`) and `ppo` start from the imported model:

* `W/tokenizer/`: the directory's tokenizer (`AutoTokenizer`, pad falls back to EOS), re-saved;
* `W/model/config.json`: the architecture (`build.save_model_config`; its `model_type` picks the
  family for every later stage);
* `W/checkpoints/sft/0/`: an orbax checkpoint whose `params` item holds the LM params in float32
  (`checkpoint.StageCheckpoints`, meta `{"step": 0, "imported_from": DIR}`);
* `W/summaries/import.json`.

Nothing is overwritten: a workdir that already has a tokenizer, model config or SFT checkpoint is
refused. To fine-tune a HF model instead, run `rlaif-jax sft --config.model.hf_path=DIR`.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import jax

from rlaif_jax.checkpoint import StageCheckpoints
from rlaif_jax.data.tokenizer import load_tokenizer
from rlaif_jax.models import hf_import
from rlaif_jax.models.build import save_model_config
from rlaif_jax.models.hf_export import model_type
from rlaif_jax.models.gpt2 import count_params

STAGE = "sft"


def _check_empty(workdir: pathlib.Path) -> None:
    taken = [p for p in (workdir / "tokenizer", workdir / "model" / "config.json",
                         workdir / "checkpoints" / STAGE) if p.exists()]
    if taken:
        raise FileExistsError(f"{workdir} already holds {', '.join(map(str, taken))}; "
                              "import into a new --workdir")


def run(hf_dir: str | pathlib.Path, workdir: str | pathlib.Path) -> dict:
    """Imports the causal LM in `hf_dir` into `workdir`; returns the summary."""
    start = time.time()
    hf_dir, workdir = pathlib.Path(hf_dir).absolute(), pathlib.Path(workdir)
    _check_empty(workdir)
    if hf_import.is_reward_model(hf_dir):
        raise ValueError(f"{hf_dir} is a sequence-classification model; import takes a causal LM")
    cfg, params = hf_import.load_lm(hf_dir, param_dtype="float32")
    tokenizer = load_tokenizer(hf_dir)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"{hf_dir}: the tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{cfg.vocab_size} embeddings")

    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(workdir / "tokenizer"))
    save_model_config(cfg, workdir, tokenizer)
    ckpts = StageCheckpoints(workdir / "checkpoints" / STAGE, keep=1, async_save=False)
    ckpts.save(0, {"params": jax.tree.map(jax.numpy.asarray, params)},
               {"step": 0, "imported_from": str(hf_dir)})
    ckpts.wait()
    ckpts.close()

    family = model_type(cfg)
    summary = {"stage": "import", "from": str(hf_dir), "model_type": family,
               "params": count_params(params), "vocab_size": cfg.vocab_size,
               "tokenizer_size": len(tokenizer), "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
               "checkpoint": str(workdir / "checkpoints" / STAGE / "0"),
               "wall_time_s": round(time.time() - start, 1)}
    (workdir / "summaries").mkdir(parents=True, exist_ok=True)
    (workdir / "summaries" / "import.json").write_text(json.dumps(summary, indent=2) + "\n")
    logging.info("Imported %s (%s, %s parameters) into %s", hf_dir, family,
                 f"{summary['params']:,}", workdir)
    return summary
