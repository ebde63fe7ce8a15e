"""The `rlaif-jax sample` stage: K completions for every prompt of a split, as Gorilla-format JSONL.

Each output line has Gorilla's response fields (`question_id`: 1-based line of the record in its
apibench file; `text`: the completion) plus ours: `hub`, `split`, `sample_index`, `instruction`,
`num_tokens`, `finished` (ended with EOS) and `logprob` (sum of the sampled tokens' log-probs).
The file is written to a temporary name and renamed when complete; a summary (counts, fraction
well-formed and ended with EOS, wall time) is written beside it as `<name>.summary.json`. In a
multi-host run every host gathers and decodes all completions, and process 0 writes the files.
"""

from __future__ import annotations

import ast
import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from rlaif_jax import distributed, sharding
from rlaif_jax.checkpoint import StageCheckpoints, abstract_with_shardings
from rlaif_jax.data import gorilla, sft_data
from rlaif_jax.data.splits import build_splits
from rlaif_jax.data.tokenizer import load_tokenizer
from rlaif_jax.metrics import write_json
from rlaif_jax.models.build import load_model_config, make_lm
from rlaif_jax.sampling import SamplingParams, left_pad, make_generate_fn


def load_stage_params(workdir: pathlib.Path, stage: str, model, mesh, fsdp_min_size: int):
    """The params of the latest checkpoint of `stage`, placed on `mesh`."""
    ckpts = StageCheckpoints(workdir / "checkpoints" / stage, keep=1, async_save=False)
    step = ckpts.latest_step()
    if step is None:
        raise FileNotFoundError(f"no {stage} checkpoint in {workdir}/checkpoints/{stage}: "
                                f"run `rlaif-jax {stage}` with this --workdir first")
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, 8), jnp.int32))["params"])
    shardings = sharding.state_shardings(abstract, mesh, fsdp_min_size)
    params = ckpts.restore(step, {"params": abstract_with_shardings(abstract, shardings)})["params"]
    ckpts.close()
    return params, step


def well_formed(text: str) -> bool:
    """All five Gorilla sections present and the api_call is valid Python."""
    parsed = gorilla.parse_response(text)
    if not all(parsed.get(k) for k in gorilla.SECTIONS):
        return False
    try:
        ast.parse(parsed["api_call"].strip())
    except SyntaxError:
        return False
    return True


def run(config, workdir: pathlib.Path, **overrides) -> dict:
    """Samples `config.sample` (with `overrides` of its keys, e.g. `greedy=True`) and writes JSONL.

    The summary is returned and written beside the output as `<out stem>.summary.json`.
    """
    start_time = time.time()
    sc = ml_collections.ConfigDict({**config.sample.to_dict(), **overrides})
    mesh = sharding.make_mesh(config.mesh)
    if sc.batch_size % sharding.batch_size_multiple(mesh):
        raise ValueError(f"config.sample.batch_size={sc.batch_size} must be divisible by the "
                         f"{sharding.batch_size_multiple(mesh)} batch shards of the mesh")
    tokenizer = load_tokenizer(workdir / "tokenizer")
    model = make_lm(load_model_config(workdir, config.model))
    params, ckpt_step = load_stage_params(workdir, sc.checkpoint, model, mesh,
                                          config.mesh.fsdp_min_size)

    records = list(build_splits(config.data)[sc.split])
    if sc.max_prompts and sc.max_prompts < len(records):
        # A seeded random subset (in split order), so every source is represented.
        keep = np.random.default_rng([config.seed, len(records)]).choice(
            len(records), sc.max_prompts, replace=False)
        records = [records[i] for i in sorted(keep)]
    prompt_ids = tokenizer([sft_data.prompt_text(r, config.data) for r in records],
                           add_special_tokens=False)["input_ids"]
    rows = [(i, k) for i in range(len(records)) for k in range(sc.num_samples)]

    generate = make_generate_fn(model, SamplingParams(
        max_new_tokens=sc.max_new_tokens, temperature=sc.temperature, top_k=sc.top_k,
        top_p=sc.top_p, greedy=sc.greedy, eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id), prompt_len=sc.max_prompt_len,
        max_segments=sc.cache_segments)
    out_path = pathlib.Path(sc.out) if sc.out else workdir / "samples" / f"{sc.split}.jsonl"
    base_rng = jax.random.PRNGKey(config.seed)
    n_tokens = n_finished = n_well_formed = n_truncated_prompts = 0
    lines = []
    for b, start in enumerate(tqdm(range(0, len(rows), sc.batch_size), desc="sample",
                                   disable=not config.progress)):
        chunk = rows[start:start + sc.batch_size]
        padded = chunk + [chunk[-1]] * (sc.batch_size - len(chunk))  # fixed shape: no retrace
        ids, mask = left_pad([prompt_ids[i] for i, _ in padded], sc.max_prompt_len,
                             tokenizer.pad_token_id)
        n_truncated_prompts += sum(len(prompt_ids[i]) > sc.max_prompt_len for i, _ in chunk)
        batch = sharding.put_batch({"ids": np.asarray(ids), "mask": np.asarray(mask)}, mesh)
        out = distributed.to_host(generate(params, batch["ids"], batch["mask"],
                                           jax.random.fold_in(base_rng, b)))
        for j, (i, k) in enumerate(chunk):
            length = int(out["lengths"][j])
            finished = bool(out["done"][j])
            toks = out["tokens"][j, :length - 1 if finished else length]
            text = tokenizer.decode(toks.tolist(), skip_special_tokens=True)
            rec = records[i]
            good = well_formed(text)
            n_tokens, n_finished, n_well_formed = (n_tokens + length, n_finished + finished,
                                                   n_well_formed + good)
            lines.append(json.dumps({
                "question_id": int(rec["question_id"]), "text": text, "hub": rec["hub"],
                "source": rec["source"],
                "split": sc.split, "sample_index": k, "instruction": rec["instruction"],
                "num_tokens": length, "finished": finished, "well_formed": good,
                "logprob": float(out["logprobs"][j, :length].sum())}) + "\n")
    if distributed.is_writer():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(out_path.suffix + ".tmp")
        tmp.write_text("".join(lines))
        tmp.replace(out_path)
    elapsed = time.time() - start_time
    summary = {"stage": "sample", "out": str(out_path), "checkpoint_step": ckpt_step,
               "prompts": len(records), "samples": len(rows),
               "finished_fraction": n_finished / max(len(rows), 1),
               "well_formed_fraction": n_well_formed / max(len(rows), 1),
               "truncated_prompts": n_truncated_prompts, "generated_tokens": n_tokens,
               "wall_time_s": round(elapsed, 1)}
    if n_truncated_prompts:
        logging.warning("%d prompts were longer than sample.max_prompt_len=%d and kept their end",
                        n_truncated_prompts, sc.max_prompt_len)
    write_json(out_path.with_suffix(".summary.json"), summary)
    return summary
