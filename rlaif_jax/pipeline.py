"""`rlaif-jax run`: sft -> sample -> label -> reward -> ppo -> eval in one workdir, then a report.

Each stage is the same function its own command runs. A stage that finished earlier in this
workdir is skipped: its completion is recorded in ``W/pipeline/<stage>.json`` (with its wall
time) only after it returns, so a crashed or killed run redoes only the unfinished stage, and
that stage resumes from its own checkpoints or cache (SFT, reward and PPO checkpoints; the
feedback cache). `config.stages` picks stages (e.g. ``--config.stages=reward,ppo,eval``);
a picked stage still needs the outputs of the ones before it.

The eval stage scores the test split (`config.eval.split`) from the SFT checkpoint and, when
there is one, from the PPO checkpoint, then writes ``W/report.md`` (tables, plots, stage times)
and ``W/report.json``::

    {"sft": {metric: value}, "rlaif": {...}, "per_provider": {...}, "reward_model": {...},
     "ppo": {...}, "stages": {stage: seconds}}

Multi-host runs: every host runs every stage; process 0 alone writes the marks and the report.
Which stages to skip is decided before the first one starts, so all hosts run the same ones.

With ``config.num_seeds = N > 1`` the whole pipeline runs N times with seeds ``seed .. seed+N-1``
in ``W/seed_<k>/`` (same data split: `data.split_seed` is separate) and ``W/report.md`` /
``W/report.json`` give the mean and standard deviation over seeds of each metric.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

from rlaif_jax import distributed
from rlaif_jax.config import STAGES, stage_list


def _with(config, **changes):
    """A copy of `config` with dotted keys changed (``{"eval.checkpoint": "ppo"}``)."""
    c = config.copy_and_resolve_references()
    for dotted, value in changes.items():
        node = c
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c


def _run_stage(stage: str, config, workdir: pathlib.Path) -> dict:
    if stage == "sft":
        from rlaif_jax.train import sft
        return sft.train(config, workdir)
    if stage == "sample":
        from rlaif_jax import sample_responses
        return sample_responses.run(config, workdir)
    if stage == "label":
        from rlaif_jax.feedback import label
        return label.run(config, workdir)
    if stage == "reward":
        from rlaif_jax.train import reward
        return reward.train(config, workdir)
    if stage == "ppo":
        from rlaif_jax.train import ppo
        return ppo.train(config, workdir)
    if stage == "eval":
        from rlaif_jax.evaluation import run_eval
        out = {"sft": run_eval.run(_with(config, **{"eval.checkpoint": "sft"}), workdir)}
        if (workdir / "checkpoints" / "ppo").is_dir():
            out["ppo"] = run_eval.run(_with(config, **{"eval.checkpoint": "ppo"}), workdir)
        return out
    raise ValueError(f"unknown stage {stage!r}")


def run_one(config, workdir: pathlib.Path) -> dict:
    """Runs the picked stages that are not done yet in `workdir`; returns report.json's dict."""
    marks = workdir / "pipeline"
    picked = stage_list(config)
    unknown = [s for s in picked if s not in STAGES]
    if unknown:
        raise ValueError(f"config.stages: unknown {unknown} (stages: {', '.join(STAGES)})")
    todo = []
    for stage in (s for s in STAGES if s in picked):
        if (marks / f"{stage}.json").is_file():
            logging.info("pipeline: %s already done in %s; skipping", stage, workdir)
            print(f"[pipeline] {stage}: done earlier, skipped")
        else:
            todo.append(stage)
    for stage in todo:
        print(f"[pipeline] {stage}: running")
        start = time.time()
        _run_stage(stage, config, workdir)
        seconds = round(time.time() - start, 1)
        if distributed.is_writer():
            marks.mkdir(parents=True, exist_ok=True)
            (marks / f"{stage}.json").write_text(json.dumps(
                {"stage": stage, "seconds": seconds,
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        print(f"[pipeline] {stage}: done in {seconds} s")
    if not distributed.is_writer():
        return {"workdir": str(workdir), "report": "written by process 0"}
    from rlaif_jax import report
    return report.write_run_report(config, workdir)


def run(config, workdir: pathlib.Path) -> dict:
    """One pipeline, or `config.num_seeds` of them with their mean/std report."""
    if config.num_seeds <= 1:
        return run_one(config, workdir)
    from rlaif_jax import report
    per_seed = []
    for k in range(config.num_seeds):
        seed_dir = workdir / f"seed_{k}"
        print(f"[pipeline] seed {config.seed + k} in {seed_dir}")
        per_seed.append(run_one(_with(config, seed=config.seed + k), seed_dir))
    if not distributed.is_writer():
        return {"workdir": str(workdir), "report": "written by process 0"}
    return report.write_seeds_report(config, workdir, per_seed)

