"""`rlaif-jax label` with the offline reference judge: answers, scores, labels, pairs, cache."""

import json
import sqlite3

import datasets
import pytest

from conftest import cli, load_config
from rlaif_jax.data import gorilla
from rlaif_jax.data.splits import build_splits
from rlaif_jax.feedback import labels as labels_lib
from rlaif_jax.feedback import rubric as rubric_lib

SMOKE = "--config=configs/smoke.py"


def _candidate(rec, text, k, finished=True):
    return {"question_id": int(rec["question_id"]), "text": text, "hub": rec["hub"],
            "source": rec["source"], "split": "train", "sample_index": k,
            "instruction": rec["instruction"], "finished": finished}


def _invent(rec):
    """The gold answer with its model/repo id replaced by one no hub has."""
    text = gorilla.format_target(rec)
    for quoted in set(q for q in __import__("re").findall(r"'([^'\n]+)'", rec["api_call"])):
        if "/" in quoted or rec["hub"] == "huggingface":
            text = text.replace(quoted, "acme/imaginary-model-9000")
    return text


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    """Gold, invented-id, code-less and syntax-broken candidates for 12 training prompts."""
    w = tmp_path_factory.mktemp("label")
    records = list(build_splits(load_config("smoke").data)["train"])
    chosen = [r for r in records if r["hub"] == "torchhub"][:6] + \
        [r for r in records if r["hub"] == "huggingface"][:6]
    rows = []
    for rec in chosen:
        gold = gorilla.format_target(rec)
        no_code = gorilla.format_target(rec, sections=("domain", "api_call", "api_provider"))
        rows += [_candidate(rec, gold, 0), _candidate(rec, _invent(rec), 1),
                 _candidate(rec, no_code, 2, finished=False),
                 _candidate(rec, gold.replace("(", "((", 1) + "\n<<<code>>>: def f(:", 3),
                 _candidate(rec, gold, 4)]  # an identical sample: asked once
    (w / "samples").mkdir()
    with (w / "samples" / "train.jsonl").open("w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    proc = cli("label", SMOKE, "--config.sample.split=train", "--workdir", w)
    return w, rows, proc


def _labels(w):
    return [json.loads(line) for line in (w / "feedback" / "labels.jsonl").read_text().splitlines()]


def test_reference_judge_separates_good_from_broken_candidates(labeled):
    w, rows, _ = labeled
    out = _labels(w)
    assert len(out) == len(rows)
    by_kind = {k: [r for r in out if r["sample_index"] == k] for k in range(5)}
    gold = by_kind[0]
    # Gold answers: valid, complete, the right API with the right arguments.
    for r in gold:
        assert r["answers"]["syntax"] == "yes" and r["answers"]["real_api"] == "yes", r
        assert r["answers"]["complete"] == "yes", r
        assert r["judge"] == "reference-v2" and r["rubric"] == "gorilla8-v1"
        assert r["soft_score"] is None and r["score"] == r["hard_score"]
    # Gold code with real bugs (e.g. a pipeline task transformers never had) loses "arguments".
    assert sum(r["answers"]["arguments"] == "yes" for r in gold) >= 10
    assert sum(r["acceptable"] for r in gold) >= 10
    # Invented ids are not real APIs and their arguments are wrong.
    for r in by_kind[1]:
        assert r["answers"]["arguments"] == "no", r
    assert sum(r["answers"]["real_api"] == "no" for r in by_kind[1]) >= 10
    # No code section and cut off: no imports, not complete.
    for r in by_kind[2]:
        assert r["answers"]["imports"] == "no" and r["answers"]["complete"] == "no", r
    for r in by_kind[3]:
        assert r["answers"]["syntax"] == "no", r
    mean = {k: sum(r["hard_score"] for r in v) / len(v) for k, v in by_kind.items()}
    assert mean[0] >= 7 and mean[0] > mean[1] + 1.5 and mean[0] > mean[2] + 2
    assert mean[0] > mean[3] + 2
    # Identical candidates get identical answers.
    for a, b in zip(by_kind[0], by_kind[4]):
        assert a["answers"] == b["answers"]


def test_pairs_summary_and_datasets_loading(labeled):
    w, rows, proc = labeled
    pairs = [json.loads(x) for x in (w / "feedback" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 12
    by_prompt = {(r["hub"], r["question_id"]): r for r in rows if r["sample_index"] == 0}
    for p in pairs:
        assert p["chosen"] == by_prompt[(p["hub"], p["question_id"])]["text"]
        assert p["margin"] == p["chosen_score"] - p["rejected_score"] >= 1
        assert p["prompt"].startswith("###Instruction: ")
    summary = json.loads((w / "feedback" / "summary.json").read_text())
    assert summary["candidates"] == 60 and summary["prompts"] == 12
    assert summary["distinct_prompts"] == 48  # the repeated gold sample is asked once
    assert sum(summary["hard_score_histogram"].values()) == 60
    assert 0 < summary["agreement_with_ast"] <= 1
    assert summary["acceptable_given_ast_correct"] > summary["acceptable_given_ast_wrong"]
    assert (w / "feedback" / "score_histogram.png").stat().st_size > 1000
    assert "acceptable" in proc.stdout and "agreement with AST" in proc.stdout
    ds = datasets.load_dataset("json", data_files=str(w / "feedback" / "labels.jsonl"),
                               split="train")
    assert len(ds) == 60 and ds[0]["answers"]["syntax"] in ("yes", "no")


def test_rerun_uses_the_cache_and_detects_corruption(labeled):
    w, rows, _ = labeled
    before = _labels(w)
    proc = cli("label", SMOKE, "--config.sample.split=train", "--workdir", w)
    summary = json.loads((w / "feedback" / "summary.json").read_text())
    assert summary["judged_now"] == 0 and summary["cached_before"] == 48
    assert _labels(w) == before
    # Corrupt one cached answer: it is detected, not trusted, and asked again.
    db = sqlite3.connect(w / "feedback" / "cache.sqlite")
    table = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchone()[0]
    cols = [c[1] for c in db.execute(f"PRAGMA table_info({table})")]
    value_col = next(c for c in cols if c in ("value", "value_json", "json", "data"))
    db.execute(f"UPDATE {table} SET {value_col} = '{{\"answers\": {{}}}}' WHERE rowid = 1")
    db.commit()
    db.close()
    cli("label", SMOKE, "--config.sample.split=train", "--workdir", w)
    summary = json.loads((w / "feedback" / "summary.json").read_text())
    assert summary["judged_now"] == 1 and summary["corrupt_cache_entries"] >= 1
    assert _labels(w) == before
    del proc


def test_bad_candidates_and_config_fail_clearly(tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "train.jsonl").write_text(
        '{"question_id": 1, "text": "x", "hub": "torchhub"}\nnot json\n')
    proc = cli("label", SMOKE, "--config.sample.split=train", "--workdir", tmp_path, check=False)
    assert proc.returncode != 0 and "train.jsonl:2" in proc.stderr
    proc = cli("label", SMOKE, "--config.feedback.rubric=nope", "--workdir", tmp_path,
               check=False)
    assert proc.returncode != 0 and "config.feedback.rubric" in proc.stderr
    proc = cli("label", SMOKE, "--workdir", tmp_path / "empty", check=False)
    assert proc.returncode != 0 and "rlaif-jax sample" in proc.stderr


def test_scores_labels_and_pairs_by_hand():
    rows = []
    for k, (answers, p_yes) in enumerate([
            ({"a": "yes", "b": "yes", "c": None}, {"a": 0.9, "b": 0.8, "c": 0.1}),
            ({"a": "no", "b": "yes", "c": "no"}, {"a": 0.2, "b": 0.6, "c": None}),
            ({"a": "yes", "b": "no", "c": "no"}, {"a": 0.7, "b": 0.3, "c": 0.3})]):
        cand = {"question_id": 5, "hub": "torchhub", "source": "s", "sample_index": k,
                "text": f"t{k}"}
        rows.append(labels_lib.label_row(cand, "P", {"answers": answers, "p_yes": p_yes},
                                         threshold=2, judge="j", rubric="r"))
    assert [r["hard_score"] for r in rows] == [2, 1, 1]
    assert rows[0]["soft_score"] == pytest.approx(1.8) and rows[1]["soft_score"] is None
    assert [r["score"] for r in rows] == pytest.approx([1.8, 1.0, 1.3])
    assert [r["acceptable"] for r in rows] == [True, False, False]
    pairs = labels_lib.preference_pairs(rows, min_margin=0.5)
    assert len(pairs) == 1 and pairs[0]["chosen"] == "t0" and pairs[0]["rejected"] == "t1"
    assert labels_lib.preference_pairs(rows, min_margin=1.0) == []
    tied = [dict(r, score=1.0) for r in rows]
    assert labels_lib.preference_pairs(tied, min_margin=0.01) == []


def test_prompt_shows_instruction_candidate_doc_and_every_question():
    rubric = rubric_lib.get_rubric("gorilla8-v1")
    doc = rubric_lib.api_doc('{"domain": "Classification", "api_call": "torch.hub.load(x)", '
                             '"api_arguments": [], "description": "A net."}')
    messages = rubric_lib.build_messages(rubric, "Classify cats.", "<<<code>>>: x", doc)
    text = rubric_lib.prompt_text(messages)
    assert "Classify cats." in text and "<<<code>>>: x" in text and "A net." in text
    assert all(q in text for q in rubric.ids) and len(rubric.ids) == 8
    assert "api_arguments" not in text  # empty fields are left out
    no_doc = rubric_lib.prompt_text(rubric_lib.build_messages(rubric, "Classify cats.", "x"))
    assert "Documentation" not in no_doc


def test_reference_judge_reads_the_code_not_only_the_api_call_line():
    """The answer PPO once learned to game: a right api_call over code that drops the model."""
    import re

    from rlaif_jax.feedback.reference_judge import ReferenceJudge

    rec = next(r for r in build_splits(load_config("smoke").data)["train"]
               if r["hub"] == "torchhub" and re.search(r"torch\.hub\.load\('[^']+', '[^']+'",
                                                       r["api_call"]))
    call = re.search(r"torch\.hub\.load\(.*\)", rec["api_call"])[0]
    broken_call = re.sub(r"^torch\.hub\.load\(('[^']+'), '[^']+',?\s*", r"torch.hub.load(\1, ",
                         call)
    head = gorilla.format_target(rec, sections=("domain", "api_call", "api_provider",
                                                "explanation"))
    good = head + f"\n<<<code>>>: import torch\nmodel = {call}"
    bad = head + f"\n<<<code>>>: import torch\nmodel = {broken_call}"
    assert broken_call != call
    ids = rubric_lib.get_rubric("gorilla8-v1").ids
    cands = [{"text": t, "hub": "torchhub", "finished": True} for t in (good, bad)]
    good_a, bad_a = ReferenceJudge().judge_candidates(cands, [rec, rec], ids)
    assert good_a["answers"]["complete"] == good_a["answers"]["arguments"] == "yes", good_a
    for q in ("complete", "arguments", "logic"):
        assert bad_a["answers"][q] == "no", bad_a
    assert (labels_lib.hard_score(bad_a["answers"])
            <= labels_lib.hard_score(good_a["answers"]) - 3)


def test_cli_label_names_a_bad_candidates_line_without_a_traceback(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"question_id": 1, "hub": "torchhub", "text": "t"}) + "\n{x\n")
    proc = cli("label", SMOKE, f"--config.feedback.candidates={samples}", "--workdir",
               tmp_path / "w", check=False)
    assert proc.returncode == 1
    assert f"rlaif-jax label: {samples}:2: invalid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
