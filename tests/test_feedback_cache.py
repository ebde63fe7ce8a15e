"""The feedback cache: round trip, corrupt rows never trusted, nothing committed lost to SIGKILL."""

import concurrent.futures
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from rlaif_jax.feedback.cache import CacheError, FeedbackCache, make_key


def answer(i):
    return {"answers": {"imports": "yes" if i % 2 else "no", "syntax": None},
            "p_yes": {"imports": 0.25 * (i % 4), "syntax": None}, "raw": f"reply {i} é",
            "usage": {"prompt_tokens": 100 + i, "completion_tokens": 7}, "model": "m"}


def test_make_key_is_stable_and_separates_its_parts():
    k = make_key("openai:gpt-3.5-turbo", "gorilla8-v1", "prompt")
    assert k == make_key("openai:gpt-3.5-turbo", "gorilla8-v1", "prompt")
    assert len(k) == 64 and int(k, 16) >= 0
    others = {make_key("openai:gpt-4o", "gorilla8-v1", "prompt"),
              make_key("openai:gpt-3.5-turbo", "gorilla8-v2", "prompt"),
              make_key("openai:gpt-3.5-turbo", "gorilla8-v1", "prompt "),
              make_key("openai:gpt-3.5-turbo", "gorilla8-v1p", "rompt")}
    assert k not in others and len(others) == 4


def test_round_trip_and_reopen(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    with FeedbackCache(path) as cache:
        assert len(cache) == 0 and cache.get("k0") is None
        for i in range(5):
            cache.put(f"k{i}", answer(i))
        cache.put("k4", answer(40))  # overwrite
        assert len(cache) == 5 and cache.get("k2") == answer(2) and "k3" in cache
        assert cache.get_many(["k1", "k4", "missing"]) == {"k1": answer(1), "k4": answer(40)}
        with pytest.raises(TypeError):
            cache.put("k9", ["not", "a", "dict"])
    with FeedbackCache(path, synchronous="NORMAL") as cache:
        assert len(cache) == 5 and cache.get("k4") == answer(40) and cache.corrupt == 0


def _tamper(path, sql, *args):
    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


def test_corrupt_rows_are_reported_and_treated_as_misses(tmp_path, caplog):
    path = tmp_path / "cache.sqlite"
    with FeedbackCache(path) as cache:
        for i in range(4):
            cache.put(f"k{i}", answer(i))
    # 1: the value edited (checksum no longer matches)
    _tamper(path, "UPDATE answers SET value = replace(value, '\"no\"', '\"yes\"') WHERE key = ?",
            "k0")
    # 2: invalid JSON with a matching checksum (as if written by a buggy writer)
    from rlaif_jax.feedback.cache import checksum
    _tamper(path, "UPDATE answers SET value = ?, checksum = ? WHERE key = ?",
            '{"answers": {"imp', checksum("k1", '{"answers": {"imp'), "k1")
    # 3: a value moved to another key
    _tamper(path, "UPDATE answers SET value = (SELECT value FROM answers WHERE key = 'k3') "
            "WHERE key = ?", "k2")
    caplog.set_level(logging.WARNING)
    with FeedbackCache(path) as cache:
        assert cache.get("k0") is None and cache.get("k1") is None and cache.get("k2") is None
        assert cache.get("k0") is None  # asked again: still a miss, counted once
        assert cache.get("k3") == answer(3)
        assert cache.get_many(["k0", "k1", "k2", "k3"]) == {"k3": answer(3)}
        assert cache.corrupt == 3
        assert caplog.text.count("is corrupt") == 3 and "checksum mismatch" in caplog.text
        assert "invalid JSON" in caplog.text
        cache.put("k0", answer(0))  # the judge's new answer repairs the row
        assert cache.get("k0") == answer(0) and cache.corrupt == 3


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path):
    path = tmp_path / "cache.sqlite"
    junk = b"this is not sqlite " * 100
    path.write_bytes(junk)
    with pytest.raises(CacheError, match=f"{path}.*not a usable SQLite database"):
        FeedbackCache(path)
    assert path.read_bytes() == junk


CHILD = textwrap.dedent("""
    import sys
    from rlaif_jax.feedback.cache import FeedbackCache
    cache = FeedbackCache(sys.argv[1])
    i = 0
    while True:
        cache.put(f"k{i}", {"i": i, "text": "x" * 200})
        print(i, flush=True)  # printed only after put() returned
        i += 1
""")


def test_sigkill_loses_nothing_committed(tmp_path):
    path = tmp_path / "cache.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    committed = []
    try:
        for line in proc.stdout:
            committed.append(int(line))
            if len(committed) >= 40:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, most likely
        proc.wait(timeout=30)
        committed += [int(line) for line in proc.stdout.read().split()]
    assert proc.returncode == -signal.SIGKILL and len(committed) >= 40
    with FeedbackCache(path) as cache:
        for i in committed:
            assert cache.get(f"k{i}") == {"i": i, "text": "x" * 200}
        assert cache.corrupt == 0 and len(cache) >= len(committed)
        assert len(cache) <= len(committed) + 1  # at most the put being printed when killed


def test_puts_from_many_threads(tmp_path):
    with FeedbackCache(tmp_path / "cache.sqlite", synchronous="NORMAL") as cache:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: cache.put(f"k{i}", answer(i)), range(200)))
        assert len(cache) == 200
        assert all(cache.get(f"k{i}") == answer(i) for i in range(0, 200, 7))
    raw = sqlite3.connect(tmp_path / "cache.sqlite").execute(
        "SELECT value FROM answers WHERE key = 'k5'").fetchone()[0]
    assert json.loads(raw) == answer(5)
