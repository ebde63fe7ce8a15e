"""eval-responses end to end: gold responses score high, malformed lines are counted, TF Hub works."""

import json
import re

import pytest

from conftest import cli
from rlaif_jax.data import gorilla
from rlaif_jax.evaluation import evaluator


def _gold_lines(hub, split, n):
    records, _ = gorilla.load_apibench(gorilla.apibench_path(hub, split), hub)
    return [json.dumps({"question_id": int(r["question_id"]), "text": gorilla.format_target(r)})
            for r in records[:n]]


MALFORMED = ['{"question_id": 1, "text": ', '{"question_id": 2}', '{"question_id": 99999, "text": "x"}',
             '{"question_id": "abc", "text": "x"}', '[1, 2]']


def test_gold_responses_and_malformed_lines_through_the_cli(tmp_path):
    responses = tmp_path / "responses.jsonl"
    gold = _gold_lines("huggingface", "eval", 30)
    responses.write_text("\n".join(gold[:10] + MALFORMED + gold[10:]) + "\n")
    out = tmp_path / "report.json"
    proc = cli("eval-responses", "--provider", "huggingface", "--responses", responses,
               "--out", out)
    assert "ast_accuracy" in proc.stdout  # the printed table
    report = json.loads(out.read_text())
    n = len(gold) + len(MALFORMED)
    assert report["n"] == n and report["malformed"] == len(MALFORMED)
    assert [m["line"] for m in report["malformed_lines"]] == list(range(11, 16))
    assert len(report["records"]) == len(gold)
    # Gold code scores (nearly) perfectly; malformed lines count as failures in every measure.
    assert report["ast_accuracy"] >= 0.9 * len(gold) / n
    assert report["ast_accuracy"] <= len(gold) / n
    assert report["rougeL"] == pytest.approx(len(gold) / n, abs=1e-6)
    # 7 of these 30 gold snippets are broken as written (invented classes, missing imports).
    assert report["executability"] >= 0.7 * len(gold) / n
    assert report["exec_failures"]["malformed_response"] == len(MALFORMED)
    assert report["codebleu"] > 0.5 * len(gold) / n
    assert sum(d["n"] for d in report["per_domain"].values()) == len(gold)
    for key in ("hallucination", "ast_error", "strict_accuracy", "codebleu_components"):
        assert key in report
    assert report["ast_rule"] == "huggingface"  # the provider's own Gorilla script


def test_invented_model_ids_are_hallucinations(tmp_path):
    records, _ = gorilla.load_apibench(gorilla.apibench_path("torchhub", "eval"), "torchhub")
    lines = []
    for r in records[:20]:
        # Every repo id becomes one nobody published (owner replaced, not prefixed: Gorilla's
        # matcher tests substrings, so a prefixed real id would still match).
        text = re.sub(r"""(torch\.hub\.load\(\s*(?:repo_or_dir\s*=\s*)?['"])[^/'"]+/""",
                      r"\1nobody-real-42/", gorilla.format_target(r))
        assert "nobody-real-42" in text
        lines.append(json.dumps({"question_id": int(r["question_id"]), "text": text}))
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = evaluator.evaluate("torchhub", path, metrics=("ast", "exec"))
    assert report["hallucination"] >= 0.8
    assert report["executability"] <= 0.2


def test_executable_ast_accuracy_needs_both(tmp_path):
    """Right API that fails to run, code that runs but is the wrong API, and both right."""
    records, _ = gorilla.load_apibench(gorilla.apibench_path("torchhub", "eval"), "torchhub")
    right = [r for r in records if "pytorch/vision" in r["api_call"]][:3]
    wrong_api = ("<<<domain>>>: Classification\n<<<api_call>>>: torch.hub.load('nobody-real/x', "
                 "'y')\n<<<api_provider>>>: PyTorch\n<<<code>>>: import torch\nx = 1 + 1")
    texts = [gorilla.format_target(right[0]),
             gorilla.format_target(right[1]).replace("<<<code>>>:", "<<<code>>>: )(", 1),
             wrong_api]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"question_id": int(r["question_id"]), "text": t}) + "\n"
                            for r, t in zip(right, texts)))
    report = evaluator.evaluate("torchhub", path, metrics=("ast", "exec"))
    recs = report["records"]
    assert [r["ast_correct"] for r in recs] == [True, True, False]
    assert [r["exec_status"] == "ok" for r in recs] == [True, False, True]
    assert report["executable_ast_accuracy"] == pytest.approx(1 / 3)
    assert report["ast_accuracy"] == pytest.approx(2 / 3)
    assert report["executability"] == pytest.approx(2 / 3)
    assert report["distinct_code"] == pytest.approx(1.0)


def test_distinct_code_exposes_one_program_for_every_question(tmp_path):
    """A collapsed policy (the same runnable program whatever the question) can score well on
    executability and on Gorilla's domain-level AST match; distinct_code shows the collapse."""
    records, _ = gorilla.load_apibench(gorilla.apibench_path("torchhub", "eval"), "torchhub")
    asked = [r for r in records if "pytorch/vision" in r["api_call"]][:4]
    same = gorilla.format_target(asked[0])
    lines = [{"question_id": int(r["question_id"]), "text": same} for r in asked]
    lines[1]["text"] = same.replace("\n", "\n\n")  # only whitespace differs: the same program
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = evaluator.evaluate("torchhub", path, metrics=("exec",))
    assert report["executability"] == pytest.approx(1.0)
    assert report["distinct_code"] == pytest.approx(1 / 4)
    gold = [{"question_id": int(r["question_id"]), "text": gorilla.format_target(r)} for r in asked]
    path.write_text("".join(json.dumps(x) + "\n" for x in gold))
    assert evaluator.evaluate("torchhub", path, metrics=("exec",))["distinct_code"] > 0.5


def test_tensorflowhub_needs_and_uses_an_apibench_file(tmp_path):
    apis = gorilla.load_api_db(gorilla.api_db_path("tensorflowhub"))[:12]
    bench, responses = [], []
    for i, api in enumerate(apis, start=1):
        output = (f"<<<domain>>>: {api['domain']}\n<<<api_call>>>: {api['api_call']}\n"
                  f"<<<api_provider>>>: TensorFlow Hub\n<<<explanation>>>: Load it.\n"
                  f"<<<code>>>: import tensorflow_hub as hub\nmodel = {api['api_call']}")
        code = f"###Instruction: task {i}\n###Output: {output}"
        bench.append(json.dumps({"code": code, "api_call": api["api_call"],
                                 "provider": "TensorFlow Hub", "api_data": api}))
        responses.append(json.dumps({"question_id": i, "text": output}))
    (tmp_path / "tf.json").write_text("\n".join(bench) + "\n")
    (tmp_path / "r.jsonl").write_text("\n".join(responses) + "\n")
    proc = cli("eval-responses", "--provider", "tensorflowhub", "--responses", tmp_path / "r.jsonl",
               check=False)
    assert proc.returncode != 0 and "apibench" in proc.stderr
    report = evaluator.evaluate("tensorflowhub", tmp_path / "r.jsonl", apibench=tmp_path / "tf.json")
    assert report["n"] == 12 and report["ast_accuracy"] >= 0.9
    assert report["executability"] >= 0.9
