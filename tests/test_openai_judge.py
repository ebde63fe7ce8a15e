"""The openai judge against a real HTTP server (tests/openai_server.py) through the openai client.

No client mocks: every request crosses a socket to a ThreadingHTTPServer on 127.0.0.1 that answers
in OpenAI's JSON and injects the faults a real provider produces.
"""

import asyncio
import dataclasses
import email.utils
import hashlib
import json
import logging
import math
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import ROOT
from openai_server import FakeOpenAIServer, candidate_section, contains_rule, prompt_text

from rlaif_jax.config import base_config
from rlaif_jax.feedback.answers import parse_answers, p_yes_from_logprobs
from rlaif_jax.feedback.cache import FeedbackCache, make_key
from rlaif_jax.feedback.openai_judge import (JudgeError, JudgeRequest, OpenAIJudge,
                                             estimate_tokens, retry_after_seconds)
from rlaif_jax.feedback.ratelimit import RateLimiter

# distinctive, and not shaped like sk-..., so the scrubbing of the exact key is what is tested
SECRET = "judge-key-9f3c7e1b5a2d4c6e8f0a1b3c5d7e9f1a"
KEY_ENV = "RLAIF_JUDGE_TEST_KEY"
QIDS = ["imports", "syntax", "no_undefined", "real_api"]
MARKER = "torch.hub.load"
TESTS = pathlib.Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def feedback_cfg(url, **overrides):
    c = base_config().feedback
    c.base_url = url
    c.api_key_env = KEY_ENV
    c.backoff_base, c.backoff_max = 0.01, 0.05
    c.requests_per_minute = c.tokens_per_minute = 0
    c.max_retries = 3
    c.timeout = 5.0
    c.max_tokens = 100
    for k, v in overrides.items():
        c[k] = v
    return c


def messages(candidate: str) -> list[dict]:
    questions = "\n".join(f"- {q}: Is {q} fine?" for q in QIDS)
    return [{"role": "system", "content": "Answer with one JSON object of yes/no."},
            {"role": "user", "content": f"## Task\nLoad a model\n\n## Candidate response\n"
                                        f"{candidate}\n\n## Questions\n{questions}"}]


def requests_for(judge, candidates) -> list[JudgeRequest]:
    out = []
    for cand in candidates:
        msgs = messages(cand)
        out.append(JudgeRequest(make_key(judge.name, "test-v1", str(msgs)), msgs, list(QIDS)))
    return out


def candidates(n):
    return [f"m = torch.hub.load('repo', 'model{i}')" if i % 2 else f"print({i})"
            for i in range(n)]


def judge_all(judge, reqs, **kwargs):
    got = {}
    report = judge.judge_many(reqs, lambda r, a: got.setdefault(r.key, a), **kwargs)
    return got, report


# --- answers, scores, logprobs ----------------------------------------------------------------


@pytest.mark.parametrize("style,json_mode", [("auto", True), ("lines", False),
                                             ("numbered", False), ("fenced", False)])
def test_answers_and_p_yes_from_the_server(style, json_mode):
    with FakeOpenAIServer(contains_rule(MARKER, p_yes=0.8), style=style) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, json_mode=json_mode, max_concurrency=3,
                                         model="gpt-4o-mini"))
        reqs = requests_for(judge, candidates(6))
        got, report = judge_all(judge, reqs)
        body = server.bodies[0]
    assert report.calls == 6 and report.answers == 6 and report.retries == 0
    for req in reqs:
        good = MARKER in req.messages[1]["content"]
        ans = got[req.key]
        assert ans.answers == {q: "yes" if good else "no" for q in QIDS}, ans.raw
        assert ans.p_yes == pytest.approx({q: 0.8 if good else 0.2 for q in QIDS})
        assert ans.usage["prompt_tokens"] > 0 and ans.usage["completion_tokens"] > 0
        assert ans.model == "gpt-4o-mini"
    # the request asked for what the config says
    assert body["logprobs"] is True and body["top_logprobs"] == 5 and body["max_tokens"] == 100
    assert ("response_format" in body) == json_mode
    assert report.prompt_tokens == sum(a.usage["prompt_tokens"] for a in got.values())
    price_in, price_out = 0.15, 0.6  # gpt-4o-mini in the config's price table
    assert report.cost_usd == pytest.approx(
        (report.prompt_tokens * price_in + report.completion_tokens * price_out) / 1e6)


def test_p_yes_without_alternatives_uses_the_chosen_token():
    """top_logprobs=0: only the chosen token's probability is known."""
    with FakeOpenAIServer(contains_rule(MARKER, p_yes=0.8)) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, top_logprobs=0))
        got, _ = judge_all(judge, requests_for(judge, candidates(2)))
    chosen_yes = 0.8 * 0.98 * 0.9  # the fake's share of the lowercase "yes" token
    chosen_no = 0.8 * 0.98 * 0.9  # "no" after a no-candidate (p_yes 0.2): same share of 0.8
    p = sorted(a.p_yes["imports"] for a in got.values())
    assert p == pytest.approx([1 - chosen_no, chosen_yes])


def test_logprobs_off_gives_no_p_yes():
    with FakeOpenAIServer(contains_rule(MARKER)) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, logprobs=False))
        got, _ = judge_all(judge, requests_for(judge, candidates(1)))
        assert "logprobs" not in server.bodies[0]
    (ans,) = got.values()
    assert ans.p_yes == {q: None for q in QIDS} and ans.answers["imports"] == "no"


def test_p_yes_merges_variants_and_finds_the_answer_token():
    text = '{"imports": "yes", "syntax": "no"}'
    tokens = ['{"', "imports", '": "', "yes", '", "', "syntax", '": "', "no", '"}']

    def entry(tok, alts):
        return {"token": tok, "logprob": 0.0,
                "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in alts]}
    content = [entry(t, [(t, 1.0)]) for t in tokens]
    content[3] = entry("yes", [("yes", 0.5), (" Yes", 0.2), ("no", 0.1), ("NO", 0.1),
                               ("maybe", 0.1)])
    content[7] = entry("no", [("no", 0.6), ("true", 0.3)])
    p = p_yes_from_logprobs({"content": content}, text, ["imports", "syntax", "real_api"])
    assert p["imports"] == pytest.approx(0.7 / 0.9)
    assert p["syntax"] == pytest.approx(0.3 / 0.9)
    assert p["real_api"] is None
    # tokens that do not spell the text: no guessing
    assert p_yes_from_logprobs(content[:3] + content[4:], text, ["imports"]) == {"imports": None}


@pytest.mark.parametrize("text,expected", [
    ('{"imports": "yes", "syntax": "no", "no_undefined": true, "real_api": "No."}',
     ["yes", "no", "yes", "no"]),
    ('Review:\n```json\n{"imports": "Yes", "syntax": false, "no_undefined": "yes, all",'
     ' "real_api": "NO"}\n```\nDone.', ["yes", "no", "yes", "no"]),
    ("1. yes\n2) No\n3. Undefined names? yes\nQ4: no", ["yes", "no", "yes", "no"]),
    ("imports: no\n**syntax**: Yes.\nno undefined - yes\nreal_api = false",
     ["no", "yes", "yes", "no"]),
    ('{"imports": "yes", "syntax": "no", "no_undefined": "ye', ["yes", "no", None, None]),
    ('{"answers": {"Imports": "yes", "SYNTAX": "no"}}', ["yes", "no", None, None]),
    ('[{"id": "real_api", "answer": "yes"}, {"id": "imports", "answer": false}]',
     ["no", None, None, "yes"]),
    ("yes, no, no, yes", ["yes", "no", "no", "yes"]),
    ("I cannot judge this code.", [None, None, None, None]),
])
def test_parse_answers(text, expected):
    assert parse_answers(text, QIDS) == dict(zip(QIDS, expected))


# --- retries ------------------------------------------------------------------------------------


def test_every_transient_fault_is_retried_and_counted():
    faults = ["500", "malformed", "truncated", "garbage", "drop", "429ms:10", "slow:1.0"]
    with FakeOpenAIServer(contains_rule(MARKER), faults=faults) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, max_retries=7, max_concurrency=1,
                                         timeout=0.4))
        got, report = judge_all(judge, requests_for(judge, candidates(1)))
        assert server.calls == 8
    assert report.errors == {"server_error": 1, "malformed": 1, "truncated": 1,
                             "unparseable": 1, "connection": 1, "rate_limit": 1, "timeout": 1}
    assert report.calls == 8 and report.retries == 7 and report.answers == 1
    (ans,) = got.values()
    assert ans.answers == {q: "no" for q in QIDS} and ans.usage["attempts"] == 8
    # the billed replies that were not used (truncated, garbage) count too
    assert report.completion_tokens > ans.usage["completion_tokens"]


def test_retry_after_is_honoured():
    with FakeOpenAIServer(contains_rule(MARKER), faults=["429:0.6"]) as server:
        judge = OpenAIJudge(feedback_cfg(server.url))
        _, report = judge_all(judge, requests_for(judge, candidates(1)))
        gap = server.call_times[1] - server.call_times[0]
    assert report.errors == {"rate_limit": 1}
    assert 0.6 <= gap < 0.6 * 1.1 + 0.3  # the server's wait, not the 0.01 s backoff
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({}) is None and retry_after_seconds({"retry-after": "soon"}) is None
    in_3s = email.utils.formatdate(time.time() + 3, usegmt=True)
    assert 1.5 < retry_after_seconds({"retry-after": in_3s}) <= 3.0


def test_final_error_names_the_cause_after_max_retries():
    with FakeOpenAIServer(contains_rule(MARKER), faults=["503"] * 10) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, max_retries=3))
        with pytest.raises(JudgeError) as info:
            judge_all(judge, requests_for(judge, candidates(1)))
        assert server.calls == 4
    e = info.value
    assert "after 4 attempts" in str(e) and "max_retries=3" in str(e)
    assert "server_error" in str(e) and "HTTP 503" in str(e) and server.url in str(e)
    assert e.kind == "server_error" and e.status == 503
    assert e.report.errors == {"server_error": 4} and e.report.calls == 4
    assert SECRET not in str(e)


def test_reply_incomplete_after_all_retries_is_kept_with_none():
    def rule(body, qids):
        return "imports: yes\nsyntax: no\nI am not sure about the rest."
    with FakeOpenAIServer(rule) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, max_retries=2))
        got, report = judge_all(judge, requests_for(judge, candidates(1)))
        assert server.calls == 3
    (ans,) = got.values()
    assert ans.answers == {"imports": "yes", "syntax": "no", "no_undefined": None,
                           "real_api": None}
    assert report.incomplete == 1 and report.errors == {"unparseable": 3}


@pytest.mark.parametrize("status,hint", [("400", "json_mode"), ("401", f"${KEY_ENV} was refused"),
                                         ("403", "denied access"), ("404", "base_url")])
def test_client_errors_fail_at_once_with_a_clear_message(status, hint):
    with FakeOpenAIServer(contains_rule(MARKER), faults=[status] * 5) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, max_retries=4))
        with pytest.raises(JudgeError) as info:
            judge_all(judge, requests_for(judge, candidates(1)))
        assert server.calls == 1  # no retry
    assert f"HTTP {status}" in str(info.value) and hint in str(info.value)
    assert info.value.status == int(status)


def test_api_key_never_in_logs_errors_or_cache(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the openai client's and httpx's included
    with FakeOpenAIServer(contains_rule(MARKER), faults=["429:0.05", "500", "drop"]) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, max_concurrency=2))
        with FeedbackCache(tmp_path / "cache.sqlite") as cache:
            report = judge.judge_many(requests_for(judge, candidates(4)),
                                      lambda r, a: cache.put(r.key, dataclasses.asdict(a)))
            assert len(cache) == 4
        # a refused key: the server echoes it in full in its 401 message
        refusing = FakeOpenAIServer(contains_rule(MARKER), require_key="another-key")
        with refusing, pytest.raises(JudgeError) as info:
            judge2 = OpenAIJudge(feedback_cfg(refusing.url))
            judge_all(judge2, requests_for(judge2, candidates(1)))
        assert refusing.headers[0]["authorization"] == f"Bearer {SECRET}"
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"  # the key was sent...
    assert report.retries == 3 and "retrying" in caplog.text
    assert f"${KEY_ENV} was refused" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)  # ...and never kept
    assert SECRET not in caplog.text and SECRET not in repr(judge) and SECRET not in judge.name
    assert SECRET not in str(dataclasses.asdict(report))
    for f in tmp_path.iterdir():  # the database and any WAL/SHM file
        assert SECRET.encode() not in f.read_bytes(), f
    # what providers echo of other keys is scrubbed too
    scrubbed = judge.redact("Incorrect API key provided: sk-proj-abc1***wxyz; Bearer tok123")
    assert "abc1" not in scrubbed and "tok123" not in scrubbed


def test_missing_key_is_an_error_except_for_local_servers(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(JudgeError, match=f"api_key_env: \\${KEY_ENV} is not set"):
        OpenAIJudge(feedback_cfg("https://api.openai.com/v1"))
    dry = OpenAIJudge(feedback_cfg("https://api.openai.com/v1", dry_run=True))
    assert dry.estimate(requests_for(dry, candidates(2)))["calls"] == 2  # no key needed
    with pytest.raises(JudgeError, match="is not set"):
        judge_all(dry, requests_for(dry, candidates(2)))
    with FakeOpenAIServer(contains_rule(MARKER)) as server:
        judge = OpenAIJudge(feedback_cfg(server.url))
        got, _ = judge_all(judge, requests_for(judge, candidates(1)))
        assert server.headers[0]["authorization"] == "Bearer local-no-key"
    assert len(got) == 1


# --- concurrency, rate limits, failure handling --------------------------------------------------


def test_concurrency_is_bounded_and_on_answer_runs_in_the_calling_thread():
    threads = set()
    with FakeOpenAIServer(contains_rule(MARKER), delay=0.15) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, max_concurrency=3))
        reqs = requests_for(judge, candidates(10))
        report = judge.judge_many(reqs, lambda r, a: threads.add(threading.get_ident()))
    assert 1 < server.max_in_flight <= 3  # concurrent, and never more than the bound
    assert report.answers == 10
    assert threads == {threading.get_ident()}


def test_duplicate_keys_are_asked_once():
    with FakeOpenAIServer(contains_rule(MARKER)) as server:
        judge = OpenAIJudge(feedback_cfg(server.url))
        reqs = requests_for(judge, candidates(3))
        seen = []
        report = judge.judge_many(reqs + reqs[:2], lambda r, a: seen.append(r.key))
        assert server.calls == 3
    assert report.answers == 5 and sorted(seen) == sorted(r.key for r in reqs + reqs[:2])


def test_requests_per_minute_spaces_requests():
    with FakeOpenAIServer(contains_rule(MARKER)) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, requests_per_minute=600,
                                         max_concurrency=6))
        judge_all(judge, requests_for(judge, candidates(6)))
        gaps = [b - a for a, b in zip(server.call_times, server.call_times[1:])]
    assert len(gaps) == 5 and min(gaps) > 0.08  # 60 / 600 = 0.1 s apart (minus clock jitter)


def test_rate_limiter_tokens_refund_and_pause():
    async def scenario():
        limiter = RateLimiter(tokens_per_minute=600)  # a 600-token bucket refilled at 10/s
        t = [time.monotonic()]
        await limiter.acquire(600)
        t.append(time.monotonic())
        await limiter.acquire(5)  # empty bucket: 5 tokens take 0.5 s
        t.append(time.monotonic())
        limiter.refund(600)
        await limiter.acquire(500)  # refunded: no wait
        t.append(time.monotonic())
        limiter.pause(0.3)
        await limiter.acquire(0)
        t.append(time.monotonic())
        return [b - a for a, b in zip(t, t[1:])]
    d = asyncio.run(scenario())
    assert d[0] < 0.2 and 0.45 < d[1] < 1.0 and d[2] < 0.2 and 0.28 < d[3] < 0.8


def test_a_request_failing_for_good_cancels_the_rest():
    def poison(body):
        return "503" if "print(2)" in candidate_section(body) else None
    answered = []
    with FakeOpenAIServer(contains_rule(MARKER), fault_rule=poison, delay=0.1) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, max_concurrency=2, max_retries=1))
        reqs = requests_for(judge, candidates(20))
        with pytest.raises(JudgeError) as info:
            judge.judge_many(reqs, lambda r, a: answered.append(r.key))
        asked = set(server.prompts)
    assert reqs[2].key not in answered and len(answered) >= 2  # the ones before were delivered
    assert len(asked) < 10  # the rest were never asked
    assert info.value.report.answers == len(answered)


def test_on_answer_errors_propagate_and_stop_the_run():
    def on_answer(req, ans):
        raise OSError("disk full")
    with FakeOpenAIServer(contains_rule(MARKER), delay=0.05) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, max_concurrency=2))
        with pytest.raises(OSError, match="disk full"):
            judge.judge_many(requests_for(judge, candidates(20)), on_answer)
        assert server.calls <= 4


def test_should_stop_finishes_in_flight_requests_and_returns():
    answered = []
    with FakeOpenAIServer(contains_rule(MARKER), delay=0.05) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, max_concurrency=2))
        report = judge.judge_many(requests_for(judge, candidates(20)),
                                  lambda r, a: answered.append(r.key),
                                  should_stop=lambda: len(answered) >= 3)
        assert server.calls == len(answered)  # nothing asked was thrown away
    assert report.stopped and 3 <= len(answered) <= 5


# --- dry run, prices, batch API ------------------------------------------------------------------


def test_dry_run_estimate_makes_no_calls():
    with FakeOpenAIServer(contains_rule(MARKER)) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, model="gpt-3.5-turbo", max_tokens=50))
        reqs = requests_for(judge, candidates(5))
        est = judge.estimate(reqs + reqs[:1])  # a repeated prompt is asked once
        assert server.calls == 0
    prompt = sum(sum(math.ceil(len(m["content"]) / 4) + 4 for m in r.messages) for r in reqs)
    assert est["calls"] == 5 and est["prompt_tokens"] == prompt
    assert prompt == sum(estimate_tokens(r.messages) for r in reqs)
    assert est["max_completion_tokens"] == 250
    assert est["cost_usd"] == pytest.approx((prompt * 0.5 + 250 * 1.5) / 1e6)
    dated = OpenAIJudge(feedback_cfg(server.url, model="gpt-4o-mini-2024-07-18"))
    assert dated.price() == (0.15, 0.6)  # longest prefix in the price table, not gpt-4o
    assert OpenAIJudge(feedback_cfg(server.url, model="llama-3-8b")).estimate(reqs)[
        "cost_usd"] is None


def test_batch_api_answers_and_resumes_the_same_batch():
    with FakeOpenAIServer(contains_rule(MARKER, p_yes=0.8), batch_fail_first=1) as server:
        judge = OpenAIJudge(feedback_cfg(server.url, batch_api=True, batch_poll_seconds=0.05))
        reqs = requests_for(judge, candidates(4))
        got, report = judge_all(judge, reqs)
        assert server.batch_requests == 4 and server.calls == 1  # the failed line, asked live
        assert len(got) == 4 and report.batch_id == "batch-1"
        for req in reqs:
            good = MARKER in req.messages[1]["content"]
            assert got[req.key].answers["imports"] == ("yes" if good else "no")
            assert got[req.key].p_yes["imports"] == pytest.approx(0.8 if good else 0.2)
        live = judge.cost(report.prompt_tokens - report.batch_prompt_tokens,
                          report.completion_tokens - report.batch_completion_tokens)
        batch = 0.5 * judge.cost(report.batch_prompt_tokens, report.batch_completion_tokens)
        assert report.batch_prompt_tokens > 0 and report.cost_usd == pytest.approx(live + batch)
        # a rerun (e.g. after a kill while polling) finds its batch instead of paying again
        got2, report2 = judge_all(judge, reqs)
        assert len(server.batches) == 1 and len(server.files) == 3  # input, output, errors
        assert report2.batch_id == "batch-1" and len(got2) == 4


# --- the standalone server, and resuming after a kill ----------------------------------------

RESUMER = textwrap.dedent("""
    import dataclasses, sys
    sys.path.insert(0, sys.argv[1])
    from test_openai_judge import candidates, feedback_cfg, requests_for
    from rlaif_jax.feedback.cache import FeedbackCache
    from rlaif_jax.feedback.openai_judge import OpenAIJudge
    url, cache_path, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
    judge = OpenAIJudge(feedback_cfg(url, max_concurrency=3))
    with FeedbackCache(cache_path) as cache:
        reqs = [r for r in requests_for(judge, candidates(n)) if cache.get(r.key) is None]
        def on_answer(req, ans):
            cache.put(req.key, dataclasses.asdict(ans))
            print(req.key, flush=True)
        judge.judge_many(reqs, on_answer)
""")


def _call_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _resume(url, cache_path, n):
    judge = OpenAIJudge(feedback_cfg(url, max_concurrency=3))
    with FeedbackCache(cache_path) as cache:
        todo = [r for r in requests_for(judge, candidates(n)) if r.key not in cache]
        judge.judge_many(todo, lambda r, a: cache.put(r.key, dataclasses.asdict(a)))


def test_standalone_server_and_resume_after_sigkill(tmp_path):
    log, cache_path, n = tmp_path / "calls.jsonl", tmp_path / "cache.sqlite", 16
    server = subprocess.Popen(
        [sys.executable, str(TESTS / "openai_server.py"), "--port", "0", "--print-port",
         "--delay", "0.1", "--call-log", str(log), "--rule", f"contains:{MARKER}"],
        stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
        env = {**os.environ, KEY_ENV: SECRET}
        run = [sys.executable, "-c", RESUMER, str(TESTS), url, str(cache_path), str(n)]
        first = subprocess.Popen(run, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        answered = [first.stdout.readline().strip() for _ in range(5)]
        os.kill(first.pid, signal.SIGKILL)  # mid-run: more requests are in flight
        first.wait(timeout=30)
        answered += first.stdout.read().split()
        asked_first = [c["sha256"] for c in _call_log(log)]
        with FeedbackCache(cache_path) as cache:
            cached = {r.key for r in requests_for(OpenAIJudge(feedback_cfg(url)), candidates(n))
                      if r.key in cache}
        assert set(answered) <= cached and 5 <= len(cached) < n

        _resume(url, cache_path, n)  # in this process
        calls = _call_log(log)
        asked_second = [c["sha256"] for c in calls[len(asked_first):]]
        _resume(url, cache_path, n)
        assert len(_call_log(log)) == len(calls)  # the rerun: everything cached, zero calls
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0
    reqs = requests_for(OpenAIJudge(feedback_cfg(url)), candidates(n))
    sha = {r.key: hashlib.sha256(prompt_text(r.messages).encode()).hexdigest() for r in reqs}
    with FeedbackCache(cache_path) as cache:
        stored = cache.get_many(sha)
        assert len(cache) == n and cache.corrupt == 0
    assert all(stored[r.key]["answers"]["imports"] == ("yes" if MARKER in c else "no")
               for r, c in zip(reqs, candidates(n)))
    # the kill lost only the requests in flight (at most max_concurrency=3)...
    assert len(set(asked_first) - {sha[k] for k in cached}) <= 3
    # ...and the resume asked each missing prompt once, none answered before the kill
    assert sorted(asked_second) == sorted(sha[r.key] for r in reqs if r.key not in cached)
    assert all(c["auth_sha256"] != SECRET for c in calls) and SECRET not in log.read_text()
