"""The `rlaif-jax label` stage: a judge answers the rubric for every sampled candidate.

    candidates (W/samples/<split>.jsonl) -> prompts -> cache lookup -> judge the misses
      -> W/feedback/labels.jsonl, pairs.jsonl, summary.json, score_histogram.png

Every answer is stored in the feedback cache (SQLite, `rlaif_jax.feedback.cache`) the moment it
arrives, under a key of judge name + rubric name + the full prompt text. Candidates with the
same prompt (identical samples) are asked once. A killed run therefore resumes where it
stopped, and a rerun over the same candidates makes no judge calls at all. The output files
are written to temporary names and renamed when complete.

Backends (`config.feedback.backend`):
* ``reference`` (default, offline): `reference_judge.ReferenceJudge`, reference-grounded
  feedback from the gold record, the AST matcher and the sandbox. Not an LLM.
* ``openai``: `openai_judge.OpenAIJudge`, any OpenAI-compatible endpoint
  (`config.feedback.base_url`, `model`, key from the variable named by `api_key_env`).

`config.feedback.dry_run` counts what would be asked (calls, estimated tokens and cost for the
openai backend) and writes nothing.

Multi-host runs: labelling needs no accelerator, so process 0 alone judges and writes; the other
hosts wait for it at a barrier and return the summary it wrote (the workdir is shared).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time

from rlaif_jax import distributed
from rlaif_jax.data import sft_data
from rlaif_jax.data.jsonl import MalformedRecordError, read_jsonl
from rlaif_jax.data.splits import build_splits
from rlaif_jax.evaluation import ast_match
from rlaif_jax.feedback import labels as labels_lib
from rlaif_jax.feedback import rubric as rubric_lib
from rlaif_jax.feedback.cache import FeedbackCache, make_key
from rlaif_jax.metrics import write_json, write_summary

REFERENCE_CHUNK = 256  # reference answers are computed and cached this many at a time


def candidates_path(config, workdir: pathlib.Path) -> pathlib.Path:
    fc = config.feedback
    return (pathlib.Path(fc.candidates) if fc.candidates
            else workdir / "samples" / f"{config.sample.split}.jsonl")


def read_candidates(path: pathlib.Path) -> list[dict]:
    """Rows of a samples file; a line that is not a candidate raises with ``path:line``."""
    if not path.is_file():
        raise FileNotFoundError(f"no candidates at {path}: run `rlaif-jax sample` with this "
                                "--workdir first (or set config.feedback.candidates)")
    rows = []
    for lineno, row in read_jsonl(path):
        missing = [k for k in ("question_id", "text", "hub") if k not in row]
        if missing:
            raise MalformedRecordError(path, lineno, f"missing {', '.join(missing)}")
        if not isinstance(row["text"], str):
            raise MalformedRecordError(path, lineno, "'text' is not a string")
        row["_line"] = lineno
        rows.append(row)
    return rows


def _gold_records(config, candidates: list[dict], path: pathlib.Path) -> list[dict]:
    """The APIBench record of each candidate (by hub, source file and question_id)."""
    index = {}
    for split in build_splits(config.data).values():
        for rec in split:
            index[(rec["hub"], rec["source"], int(rec["question_id"]))] = rec
    by_hub_qid = {}
    for (hub, source, qid), rec in index.items():
        by_hub_qid.setdefault((hub, qid), []).append(rec)
    golds = []
    for c in candidates:
        rec = index.get((c["hub"], c.get("source", ""), int(c["question_id"])))
        if rec is None:  # rows without `source` (foreign files): unique by hub + id only
            options = by_hub_qid.get((c["hub"], int(c["question_id"])), [])
            rec = options[0] if len(options) == 1 else None
        if rec is None:
            raise MalformedRecordError(
                path, c["_line"], f"question {c['hub']}/{c.get('source', '?')}:"
                f"{c['question_id']} is not a record of config.data's sources")
        golds.append(rec)
    return golds


def _make_judge(config):
    fc = config.feedback
    if fc.backend == "reference":
        from rlaif_jax.feedback.reference_judge import ReferenceJudge
        return ReferenceJudge(exec_timeout=fc.exec_timeout)
    if fc.backend == "openai":
        from rlaif_jax.feedback.openai_judge import OpenAIJudge
        return OpenAIJudge(fc)
    raise ValueError(f"config.feedback.backend: unknown backend {fc.backend!r}")


def _ask(judge, backend: str, todo: list[tuple], cache: FeedbackCache, question_ids,
         progress: bool) -> dict:
    """Judges the (key, messages, candidate, gold) items of `todo`, caching each answer."""
    if backend == "reference":
        start = time.time()
        for i in range(0, len(todo), REFERENCE_CHUNK):
            chunk = todo[i:i + REFERENCE_CHUNK]
            answers = judge.judge_candidates([c for _, _, c, _ in chunk],
                                             [g for _, _, _, g in chunk], question_ids)
            for (key, _, _, _), answer in zip(chunk, answers):
                cache.put(key, answer)
            logging.info("reference judge: %d/%d candidates", i + len(chunk), len(todo))
        return {"calls": 0, "judged": len(todo), "seconds": round(time.time() - start, 1),
                "cost_usd": 0.0, "prompt_tokens": 0, "completion_tokens": 0}
    from rlaif_jax.feedback.openai_judge import JudgeRequest

    requests = [JudgeRequest(key=key, messages=messages, question_ids=list(question_ids))
                for key, messages, _, _ in todo]
    report = judge.judge_many(
        requests, lambda req, ans: cache.put(req.key, dataclasses.asdict(ans)), progress=progress)
    usage = report if isinstance(report, dict) else dataclasses.asdict(report)
    return {"judged": len(todo), **usage}


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def run(config, workdir: pathlib.Path) -> dict:
    """Labels the candidates; returns the summary also written to W/feedback/summary.json."""
    summary = _run(config, workdir) if distributed.is_writer() else None
    distributed.barrier("label: feedback files written")
    if summary is not None:
        return summary
    if config.feedback.dry_run:
        return {"stage": "label", "dry_run": True, "judge": None, "estimate": {},
                "note": "dry run counted by process 0"}
    return json.loads((workdir / "summaries" / "label.json").read_text())


def _run(config, workdir: pathlib.Path) -> dict:
    start = time.time()
    fc = config.feedback
    rubric = rubric_lib.get_rubric(fc.rubric)
    path = candidates_path(config, workdir)
    candidates = read_candidates(path)
    golds = _gold_records(config, candidates, path)
    judge = _make_judge(config)

    prompts, keys, items = [], [], {}
    for c, g in zip(candidates, golds):
        doc = rubric_lib.api_doc(g["api_data"]) if fc.include_api_doc else None
        messages = rubric_lib.build_messages(rubric, g["instruction"], c["text"], doc)
        key = make_key(judge.name, rubric.name, rubric_lib.prompt_text(messages))
        prompts.append(sft_data.prompt_text(g, config.data))
        keys.append(key)
        items.setdefault(key, (key, messages, c, g))

    out_dir = workdir / "feedback"
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_path = pathlib.Path(fc.cache) if fc.cache else out_dir / "cache.sqlite"
    with FeedbackCache(cache_path) as cache:
        todo = [item for key, item in items.items() if cache.get(key) is None]
        corrupt = cache.corrupt  # entries that failed verification (asked again below)
        logging.info("%d candidates, %d distinct prompts, %d cached, %d to judge with %s",
                     len(candidates), len(items), len(items) - len(todo), len(todo), judge.name)
        if fc.dry_run:
            estimate = (judge.estimate([_request(t, rubric) for t in todo])
                        if fc.backend == "openai" else {"calls": 0, "judged": len(todo)})
            return {"stage": "label", "dry_run": True, "judge": judge.name,
                    "candidates": len(candidates), "distinct_prompts": len(items),
                    "cached": len(items) - len(todo), "to_judge": len(todo),
                    "estimate": estimate}
        usage = (_ask(judge, fc.backend, todo, cache, rubric.ids, config.progress)
                 if todo else {"calls": 0, "judged": 0})
        answers = [cache.get(key) for key in keys]
    missing = sum(a is None for a in answers)
    if missing:
        from rlaif_jax.feedback.openai_judge import JudgeError
        raise JudgeError(f"{missing} answers are missing from the cache after judging; rerun to "
                         "ask again", "missing_answers")

    rows = [labels_lib.label_row(c, p, a, fc.threshold, judge.name, rubric.name)
            for c, p, a in zip(candidates, prompts, answers)]
    pairs = labels_lib.preference_pairs(rows, fc.pair_min_margin)
    dbs = {hub: ast_match.APIDatabase.load(hub) for hub in {c["hub"] for c in candidates}}
    gold_correct = [ast_match.match_response(c["text"], g, dbs[c["hub"]]).correct
                    for c, g in zip(candidates, golds)]
    stats = labels_lib.statistics(rows, pairs, rubric.ids, gold_correct)

    _write_jsonl(out_dir / "labels.jsonl", rows)
    _write_jsonl(out_dir / "pairs.jsonl", pairs)
    labels_lib.plot_histogram(stats, len(rubric.ids), out_dir / "score_histogram.png")
    summary = {"stage": "label", "judge": judge.name, "rubric": rubric.name,
               "candidates_file": str(path), "distinct_prompts": len(items),
               "cached_before": len(items) - len(todo), "judged_now": len(todo),
               "corrupt_cache_entries": corrupt, "usage": usage, **stats,
               "labels": str(out_dir / "labels.jsonl"), "pairs_file": str(out_dir / "pairs.jsonl"),
               "histogram": str(out_dir / "score_histogram.png"),
               "wall_time_s": round(time.time() - start, 1)}
    write_json(out_dir / "summary.json", summary)
    write_summary(workdir, "label", summary)
    return summary


def _request(item: tuple, rubric: rubric_lib.Rubric):
    from rlaif_jax.feedback.openai_judge import JudgeRequest
    key, messages, _, _ = item
    return JudgeRequest(key=key, messages=messages, question_ids=rubric.ids)


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if summary.get("dry_run"):
        est = summary["estimate"]
        print(f"dry run ({summary['judge']}): {summary['candidates']} candidates, "
              f"{summary['distinct_prompts']} distinct prompts, {summary['cached']} cached, "
              f"{summary['to_judge']} to judge")
        for key in ("calls", "prompt_tokens", "max_completion_tokens", "cost_usd",
                    "token_estimate"):
            if key in est:
                print(f"  {key}: {'unknown (no price for this model)' if est[key] is None else est[key]}")
        return
    table = Table(title=f"labels by {summary['judge']} ({summary['rubric']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("candidates", summary["candidates"]), ("prompts", summary["prompts"]),
            ("judged now / cached", f"{summary['judged_now']} / {summary['cached_before']}"),
            ("acceptable", f"{summary['acceptable']} ({summary['acceptable_fraction']:.1%})"),
            ("mean hard score", f"{summary['mean_hard_score']:.2f}"),
            ("pairs", summary["pairs"]),
            ("hard score histogram", json.dumps(summary["hard_score_histogram"]))]
    if "agreement_with_ast" in summary:
        rows.append(("agreement with AST match", f"{summary['agreement_with_ast']:.1%}"))
    cost = summary["usage"].get("cost_usd")
    rows.append(("judge calls", summary["usage"].get("calls", 0)))
    rows.append(("cost (USD)", "unknown" if cost is None else f"{cost:.4f}"))
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    console.print("yes rate: " + ", ".join(f"{q} {r:.0%}" for q, r in summary["yes_rate"].items()))
    console.print(f"wrote {summary['labels']}, {summary['pairs_file']}, {summary['histogram']}")
