"""`rlaif-jax export --workdir W --stage {sft,ppo,reward} --out DIR [--push_to_hub REPO]`.

Turns the latest checkpoint of a stage into a Hugging Face directory (`models/hf_export.py`):
`sft` and `ppo` (the policy) load with `AutoModelForCausalLM.from_pretrained(DIR)`, `reward`
with `AutoModelForSequenceClassification.from_pretrained(DIR)` (one label). The architecture is
`W/model/config.json`, the tokenizer `W/tokenizer`; dtypes and the generation defaults
(`config.sample`) come from the stage's resolved config `W/config.<stage>.json` when it exists
(an imported workdir has none: float32, no sampling defaults).

`--push_to_hub REPO` uploads the directory afterwards (`hf_export.push_to_hub`; needs network
and a Hugging Face login or `HF_TOKEN`).
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
import types

import jax

from rlaif_jax import sharding
from rlaif_jax.config import from_json
from rlaif_jax.data.tokenizer import load_tokenizer
from rlaif_jax.models import hf_export
from rlaif_jax.models.build import load_model_config, make_lm, make_reward_model
from rlaif_jax.sample_responses import load_stage_params

STAGES = ("sft", "ppo", "reward")


def _resolved_config(workdir: pathlib.Path, stage: str):
    """The config the stage ran with, or None (e.g. an imported workdir)."""
    path = workdir / f"config.{stage}.json"
    return from_json(path.read_text()) if path.is_file() else None


def run(workdir: str | pathlib.Path, stage: str, out: str | pathlib.Path,
        push_to_hub: str | None = None) -> dict:
    """Exports `stage`'s latest checkpoint in `workdir` to `out`; returns the summary."""
    start = time.time()
    if stage not in STAGES:
        raise ValueError(f"--stage must be one of {STAGES}, got {stage!r}")
    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; export into a new directory")
    resolved = _resolved_config(workdir, stage)
    cfg = load_model_config(workdir, resolved.model if resolved else None)
    tokenizer = load_tokenizer(workdir / "tokenizer")
    reward = stage == "reward"
    model = make_reward_model(cfg) if reward else make_lm(cfg)
    mesh = sharding.make_mesh(types.SimpleNamespace(data=1, fsdp=1), devices=jax.devices()[:1])
    params, step = load_stage_params(workdir, stage, model, mesh, fsdp_min_size=2**62)
    params = jax.device_get(params)
    readme = (f"# rlaif-jax {stage} model\n\nExported by `rlaif-jax export` from the `{stage}` "
              f"checkpoint at step {step} of `{workdir.name}` ({hf_export.model_type(cfg)}).\n")
    hf_export.save_pretrained(out, cfg, params, tokenizer, reward=reward,
                              sampling=resolved.sample.to_dict() if resolved else None, readme=readme)
    summary = {"stage": "export", "exported_stage": stage, "checkpoint_step": step, "out": str(out),
               "model_type": hf_export.model_type(cfg), "reward_model": reward,
               "files": sorted(p.name for p in out.iterdir())}
    if push_to_hub:
        summary["hub_url"] = hf_export.push_to_hub(out, push_to_hub)
        logging.info("Pushed %s to %s", out, summary["hub_url"])
    summary["wall_time_s"] = round(time.time() - start, 1)
    (workdir / "summaries").mkdir(parents=True, exist_ok=True)
    (workdir / "summaries" / f"export_{stage}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
