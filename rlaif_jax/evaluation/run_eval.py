"""`rlaif-jax eval`: responses for a split from a stage's checkpoint, scored like eval-responses.

Writes into `<workdir>/eval/<checkpoint>/`: `responses_<split>.jsonl` (every response), and per
apibench source file: `<split>_<hub>_<source>.jsonl` (Gorilla's format) and
`report_<hub>_<source>.json` (the full evaluator report with per-response records); then
`report.json` with the headline numbers per provider and over all responses. In a multi-host
run every host samples (a collective), and process 0 alone scores and writes.
"""

from __future__ import annotations

import json
import pathlib

from rlaif_jax import distributed, sample_responses
from rlaif_jax.data.splits import source_path
from rlaif_jax.evaluation import evaluator

HEADLINE = ("n", "malformed", "ast_accuracy", "hallucination", "ast_error", "strict_accuracy",
            "rougeL", "codebleu", "executability", "executable_ast_accuracy", "distinct_code",
            "exec_failures")


def _apibench_files(data_cfg) -> dict[str, pathlib.Path]:
    """Source file name -> path, for the sources of the config (question ids are their lines)."""
    out = {}
    for spec in data_cfg.sources:
        path = source_path(spec.hub, spec.path, spec.role)
        out[path.name] = path
    return out


def _overall(reports: list[dict]) -> dict:
    """Response-weighted means of the headline rates over several providers."""
    total = sum(r["n"] for r in reports)
    out = {"n": total}
    for key in HEADLINE:
        if key in ("n", "exec_failures"):
            continue
        if all(key in r for r in reports):
            out[key] = sum(r[key] * r["n"] for r in reports) / max(total, 1)
    return out


def run(config, workdir: pathlib.Path) -> dict:
    ec = config.eval
    out_dir = workdir / "eval" / ec.checkpoint
    responses = out_dir / f"responses_{ec.split}.jsonl"
    sample_responses.run(config, workdir, split=ec.split, checkpoint=ec.checkpoint,
                         greedy=ec.greedy, num_samples=1, max_prompts=ec.max_prompts,
                         out=str(responses))
    if not distributed.is_writer():  # scoring needs no devices: process 0 does it
        return {"checkpoint": ec.checkpoint, "split": ec.split,
                "out": str(out_dir / "report.json"), "scored_by": "process 0"}

    by_source: dict[tuple[str, str], list[str]] = {}
    for line in responses.read_text().splitlines():
        rec = json.loads(line)
        by_source.setdefault((rec["hub"], rec["source"]), []).append(line)
    files = _apibench_files(config.data)
    summary = {"checkpoint": ec.checkpoint, "split": ec.split, "greedy": ec.greedy,
               "providers": {}}
    reports = []
    for (hub, source), lines in sorted(by_source.items()):
        gorilla_file = out_dir / f"{ec.split}_{hub}_{pathlib.Path(source).stem}.jsonl"
        gorilla_file.write_text("\n".join(lines) + "\n")
        report = evaluator.evaluate(hub, gorilla_file, apibench=files[source],
                                    metrics=tuple(ec.metrics), exec_timeout=ec.exec_timeout,
                                    workers=ec.exec_workers or None, progress=config.progress)
        evaluator.print_report(report)
        (out_dir / f"report_{hub}_{pathlib.Path(source).stem}.json").write_text(
            json.dumps(report, indent=1) + "\n")
        reports.append(report)
        summary["providers"][f"{hub}/{source}"] = {k: report[k] for k in HEADLINE if k in report}
    summary["overall"] = _overall(reports)
    summary["out"] = str(out_dir / "report.json")
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
