"""Scores a file of responses against APIBench: AST match, hallucination, ROUGE-L, CodeBLEU, exec.

Input is Gorilla's response format, one JSON object per line: `{"question_id": N, "text": ...}`
where N is the 1-based line of the question in the provider's apibench file (extra fields are
kept). Several responses per question are allowed (K samples); every line is one response.

A line that cannot be used (invalid JSON, no `question_id`/`text`, an id with no question) is
reported in `malformed` and counted as a failure in every measure, so `n` is always the number of
lines. All measures are fractions of `n`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import time

from rlaif_jax.data import gorilla
from rlaif_jax.evaluation import ast_match, sandbox, text_metrics

METRICS = ("ast", "rouge", "codebleu", "exec")


@dataclasses.dataclass
class Response:
    line: int  # 1-based line in the responses file
    question_id: int | None
    text: str
    extra: dict
    error: str | None = None  # why the line is malformed


def load_responses(path: str | pathlib.Path, questions: dict[int, dict]) -> list[Response]:
    """Reads a responses JSONL file; malformed lines become Responses with `error` set."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                out.append(Response(lineno, None, "", {}, f"invalid JSON: {e.msg}"))
                continue
            if not isinstance(obj, dict):
                out.append(Response(lineno, None, "", {}, "not a JSON object"))
                continue
            qid, text = obj.get("question_id"), obj.get("text")
            extra = {k: v for k, v in obj.items() if k not in ("question_id", "text")}
            try:
                qid = int(qid)
            except (TypeError, ValueError):
                out.append(Response(lineno, None, "", extra, f"bad question_id {qid!r}"))
                continue
            if not isinstance(text, str):
                out.append(Response(lineno, qid, "", extra, "missing or non-string 'text'"))
            elif qid not in questions:
                out.append(Response(lineno, qid, text, extra,
                                    f"question_id {qid} is not a line of the apibench file"))
            else:
                out.append(Response(lineno, qid, text, extra))
    return out


def _rate(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0


def evaluate(hub: str, responses_path, *, apibench=None, api_db=None, metrics=METRICS,
             exec_timeout: float = 10.0, workers: int | None = None,
             progress: bool = False, ast_rule: str | None = None) -> dict:
    """The report dict (see module docstring); `apibench`/`api_db` default to the vendored files;
    `ast_rule`: whose Gorilla script compat mode applies (`ast_match.APIDatabase.from_entries`)."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {', '.join(METRICS)}")
    start = time.time()
    apibench = pathlib.Path(apibench) if apibench else gorilla.apibench_path(hub, "eval")
    records, skipped = gorilla.load_apibench(apibench, hub, on_error="skip")
    questions = {int(r["question_id"]): r for r in records}
    responses = load_responses(responses_path, questions)
    good = [r for r in responses if r.error is None]
    gold = [questions[r.question_id] for r in good]
    parsed = [gorilla.parse_response(r.text) for r in good]
    codes = [sandbox.executable_code(r.text) for r in good]
    per = [{"line": r.line, "question_id": r.question_id, "domain": g["domain"],
            "api_call": p.get("api_call", ""), **r.extra} for r, g, p in zip(good, gold, parsed)]
    report: dict = {"provider": hub, "apibench": str(apibench), "responses": str(responses_path),
                    "n": len(responses), "malformed": len(responses) - len(good),
                    "malformed_lines": [{"line": r.line, "reason": r.error}
                                        for r in responses if r.error],
                    "apibench_lines_skipped": skipped}
    n = max(len(responses), 1)
    # Answer diversity: distinct programs (whitespace-normalised code sections) per response. A
    # policy that writes one program for every question (a reward-hacking collapse that both
    # Gorilla's domain-level AST match and executability can reward) scores 1/n here.
    report["distinct_code"] = len({" ".join(c.split()) for c in codes}) / n

    if "ast" in metrics:
        db = ast_match.APIDatabase.load(hub, api_db, rule=ast_rule)
        report["ast_rule"] = db.rule
        results = [ast_match.match_response(r.text, g, db) for r, g in zip(good, gold)]
        for rec, res in zip(per, results):
            rec.update(ast_correct=res.correct, hallucination=res.hallucination,
                       ast_error=res.error, strict_correct=res.strict_correct,
                       matched_api=(db.entries[res.matched_index]["api_call"]
                                    if res.matched_index is not None else None))
        report.update(
            ast_accuracy=sum(r.correct for r in results) / n,
            hallucination=(sum(r.hallucination for r in results) + report["malformed"]) / n,
            ast_error=sum(r.error for r in results) / n,
            strict_accuracy=sum(r.strict_correct for r in results) / n,
            strict_hallucination=(sum(r.strict_hallucination for r in results)
                                  + report["malformed"]) / n)
    if "rouge" in metrics:
        for rec, code, g, p in zip(per, codes, gold, parsed):
            rec["rougeL"] = text_metrics.rouge_l(code, g["code"])
            rec["rougeL_api_call"] = text_metrics.rouge_l(p.get("api_call", ""), g["api_call"])
        report["rougeL"] = sum(r["rougeL"] for r in per) / n
        report["rougeL_api_call"] = sum(r["rougeL_api_call"] for r in per) / n
    if "codebleu" in metrics:
        corpus = text_metrics.codebleu(codes + [""] * report["malformed"],
                                       [g["code"] for g in gold] + [""] * report["malformed"])
        report["codebleu"] = corpus["codebleu"]
        report["codebleu_components"] = {k: v for k, v in corpus.items() if k != "codebleu"}
        for rec, code, g in zip(per, codes, gold):
            rec["codebleu"] = text_metrics.codebleu_one(code, g["code"])
    if "exec" in metrics:
        t0 = time.time()
        results = sandbox.run_many(codes, [hub] * len(codes), workers=workers,
                                   timeout=exec_timeout, progress=progress)
        for rec, res in zip(per, results):
            rec.update(exec_status=res.status, exec_detail=res.detail)
        causes = collections.Counter(r.status for r in results)
        if report["malformed"]:
            causes["malformed_response"] += report["malformed"]
        report["executability"] = sum(r.ok for r in results) / n
        report["exec_failures"] = {k: v for k, v in sorted(causes.items()) if k != "ok"}
        report["exec_seconds"] = round(time.time() - t0, 2)
    if "ast" in metrics and "exec" in metrics:
        # Runs AND calls the right API: code that executes but is the wrong API (a policy can
        # learn one template that always runs) counts in executability, not here.
        report["executable_ast_accuracy"] = sum(_runs_and_matches(r) for r in per) / n

    report["per_domain"] = _per_domain(per, metrics)
    report["records"] = per
    report["seconds"] = round(time.time() - start, 2)
    return report


def _runs_and_matches(rec: dict) -> bool:
    return bool(rec["ast_correct"]) and rec["exec_status"] == "ok"


def _per_domain(per: list[dict], metrics) -> dict:
    by = collections.defaultdict(list)
    for rec in per:
        by[rec["domain"]].append(rec)
    out = {}
    for domain, recs in sorted(by.items()):
        row = {"n": len(recs)}
        if "ast" in metrics:
            row["ast_accuracy"] = _rate(r["ast_correct"] for r in recs)
            row["hallucination"] = _rate(r["hallucination"] for r in recs)
        if "rouge" in metrics:
            row["rougeL"] = sum(r["rougeL"] for r in recs) / len(recs)
        if "exec" in metrics:
            row["executability"] = _rate(r["exec_status"] == "ok" for r in recs)
        if "ast" in metrics and "exec" in metrics:
            row["executable_ast_accuracy"] = _rate(_runs_and_matches(r) for r in recs)
        out[domain] = row
    return out


SUMMARY_KEYS = ("n", "malformed", "ast_accuracy", "hallucination", "ast_error", "strict_accuracy",
                "rougeL", "codebleu", "executability", "executable_ast_accuracy", "distinct_code")


def print_report(report: dict, console=None) -> None:
    """A rich table of the headline numbers, the per-domain breakdown and exec failure causes."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    head = Table(title=f"{report['provider']}: {report['responses']}")
    head.add_column("measure")
    head.add_column("value", justify="right")
    for key in SUMMARY_KEYS:
        if key in report:
            value = report[key]
            head.add_row(key, f"{value:.2%}" if isinstance(value, float) else str(value))
    console.print(head)
    if report.get("per_domain"):
        cols = [k for k in ("n", "ast_accuracy", "hallucination", "rougeL", "executability")
                if k in next(iter(report["per_domain"].values()))]
        table = Table(title="per domain")
        table.add_column("domain")
        for c in cols:
            table.add_column(c, justify="right")
        for domain, row in report["per_domain"].items():
            table.add_row(domain, *[f"{row[c]:.1%}" if isinstance(row[c], float) else str(row[c])
                                    for c in cols])
        console.print(table)
    if report.get("exec_failures"):
        console.print("exec failures: " + ", ".join(f"{k} {v}"
                                                     for k, v in report["exec_failures"].items()))
