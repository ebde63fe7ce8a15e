"""`rlaif-jax label` against an OpenAI-compatible server over real HTTP: kill, resume, rerun.

The server is tests/openai_server.py in its own process; the judge is the real `openai` client
inside the real CLI. Checks: soft scores from logprobs reach the labels; a SIGKILL mid-run loses
no answered question and the resumed run asks only what was never answered (at most the
requests in flight at the kill); a rerun makes zero calls; the API key reaches the server but
no file or log of the run.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import ROOT, cli, load_config
from rlaif_jax.data import gorilla
from rlaif_jax.data.splits import build_splits

SMOKE = "--config=configs/smoke.py"
KEY = "sk-test-DO-NOT-LEAK-4f1d2c"
CONCURRENCY = 2


@pytest.fixture
def server(tmp_path):
    log = tmp_path / "calls.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "openai_server.py"), "--port", "0", "--print-port",
         "--delay", "0.25", "--call-log", str(log), "--require-key", KEY],
        stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    yield f"http://127.0.0.1:{port}/v1", log
    proc.terminate()
    proc.wait(timeout=10)


def _calls(log):
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _write_candidates(w, n_prompts=12):
    records = list(build_splits(load_config("smoke").data)["train"])[:n_prompts]
    rows = []
    for rec in records:
        gold = gorilla.format_target(rec)
        for k, text in enumerate([gold, gold.replace("<<<code>>>", "<<<notes>>>")]):
            rows.append({"question_id": int(rec["question_id"]), "text": text, "hub": rec["hub"],
                         "source": rec["source"], "split": "train", "sample_index": k,
                         "instruction": rec["instruction"], "finished": True})
    (w / "samples").mkdir(parents=True)
    (w / "samples" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def _args(w, url):
    return ["label", SMOKE, "--config.sample.split=train", "--config.feedback.backend=openai",
            f"--config.feedback.base_url={url}", "--config.feedback.model=judge-test",
            f"--config.feedback.max_concurrency={CONCURRENCY}",
            "--config.feedback.api_key_env=RLAIF_TEST_KEY", "--workdir", str(w)]


def _cached(w):
    db = sqlite3.connect(w / "feedback" / "cache.sqlite")
    n = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    db.close()
    return n


def test_kill_resume_rerun_and_no_key_leak(tmp_path, server):
    url, log = server
    w = tmp_path / "w"
    rows = _write_candidates(w)
    env = dict(os.environ, RLAIF_TEST_KEY=KEY)

    # Start, let some answers arrive, then SIGKILL: no chance to clean up.
    proc = subprocess.Popen([sys.executable, "-m", "rlaif_jax.cli", *_args(w, url)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(_calls(log)) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    asked_before = {c["sha256"] for c in _calls(log)}
    cached_at_kill = _cached(w)
    assert 0 < cached_at_kill < len(rows), (out, err[-2000:])
    assert not (w / "feedback" / "labels.jsonl").exists()

    # Resume: asks only what was not answered; nothing answered is asked again.
    first = cli(*_args(w, url), env_extra={"RLAIF_TEST_KEY": KEY})
    calls = _calls(log)
    repeated = len(calls) - len({c["sha256"] for c in calls})
    assert len({c["sha256"] for c in calls}) == len(rows)  # every distinct prompt, once answered
    assert repeated <= len(asked_before) - cached_at_kill <= CONCURRENCY
    summary = json.loads((w / "feedback" / "summary.json").read_text())
    assert summary["judged_now"] == len(rows) - cached_at_kill
    labels = [json.loads(x) for x in (w / "feedback" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == len(rows)
    assert all(r["soft_score"] is not None and r["judge"] == "openai:judge-test" for r in labels)
    assert all(0 <= r["soft_score"] <= 8 and r["score"] == r["soft_score"] for r in labels)

    # Rerun: zero calls.
    n_calls = len(calls)
    again = cli(*_args(w, url), env_extra={"RLAIF_TEST_KEY": KEY})
    assert len(_calls(log)) == n_calls
    assert json.loads((w / "feedback" / "summary.json").read_text())["judged_now"] == 0

    # The key went to the server (require_key would 401 otherwise) and nowhere else.
    for path in w.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for text in (out, err, first.stdout, first.stderr, again.stdout, again.stderr):
        assert KEY not in text


def test_dry_run_estimates_and_calls_nothing(tmp_path, server):
    url, log = server
    w = tmp_path / "w"
    rows = _write_candidates(w, n_prompts=4)
    proc = cli(*_args(w, url), "--config.feedback.dry_run=true",
               env_extra={"RLAIF_TEST_KEY": KEY})
    assert _calls(log) == []
    assert "dry run" in proc.stdout and f"{len(rows)} to judge" in proc.stdout
    assert not (w / "feedback" / "labels.jsonl").exists()


def test_refused_key_fails_clearly_without_retries(tmp_path, server):
    url, log = server
    w = tmp_path / "w"
    _write_candidates(w, n_prompts=2)
    proc = cli(*_args(w, url), env_extra={"RLAIF_TEST_KEY": "sk-wrong"}, check=False)
    assert proc.returncode != 0
    assert "RLAIF_TEST_KEY" in proc.stderr + proc.stdout
    assert len(_calls(log)) <= CONCURRENCY  # no retry storm on 401
