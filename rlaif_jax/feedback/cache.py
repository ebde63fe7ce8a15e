"""The feedback cache: every judge answer, stored the moment it arrives, verified when read.

    key = make_key(judge.name, rubric.name, prompt_text)
    with FeedbackCache(workdir / "feedback" / "cache.sqlite") as cache:
        if cache.get(key) is None:
            cache.put(key, {"answers": {...}, "p_yes": {...}, "model": ..., "usage": {...}})

Why SQLite
----------
One file, atomic commits and concurrent readers come with the standard library. The database
runs in WAL mode and each `put` is its own transaction: once `put` returns the row is in the
log, so a process killed at any moment (SIGKILL included) loses nothing that was put, and a
half-written row cannot exist. ``synchronous=FULL`` (the default here) also syncs the log on
every commit, so committed rows survive a power cut too; ``synchronous="NORMAL"`` trades that
for speed (rows then survive a process crash, not an OS crash).

Verification
------------
Each row holds the value as JSON text and a SHA-256 checksum of ``key + NUL + JSON``. `get`
recomputes it and decodes the JSON; a row that fails either (bit rot, a hand edit, a value
stored under another key) is logged, counted in `corrupt` (once per key) and reported as a
miss, so the caller asks the judge again and the next `put` overwrites the row. A file that
is not an SQLite database at all raises `CacheError` naming the path and is left untouched.

What is stored
--------------
Only what the caller puts: the judge's answers, the model name and token usage. Keys are
hashes, so prompts are not stored either. Nothing here knows an API key; the OpenAI judge never
puts one in a value (tests/test_openai_judge.py greps the file for it).

Threads and processes
---------------------
One connection guarded by a lock: any thread may call `get`/`put` (the OpenAI judge calls its
`on_answer` callback, which usually puts, from the thread running its event loop). Several
processes may share the file; SQLite serialises their writers (``busy_timeout`` 30 s).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import sqlite3
import threading
import time

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    checksum TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class CacheError(RuntimeError):
    """The cache file cannot be used (the message names it)."""


def make_key(judge_name: str, rubric_version: str, prompt_text: str) -> str:
    """SHA-256 hex of the three parts (JSON-encoded, so no two triples share a key)."""
    blob = json.dumps([judge_name, rubric_version, prompt_text], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def checksum(key: str, value_json: str) -> str:
    return hashlib.sha256(f"{key}\0{value_json}".encode("utf-8")).hexdigest()


class FeedbackCache:
    """A crash-safe key -> JSON-object store (see the module docstring)."""

    def __init__(self, path, synchronous: str = "FULL"):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._corrupt_keys: set[str] = set()
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise CacheError(f"feedback cache {self.path} is not a usable SQLite database "
                             f"({e}); move it away or set config.feedback.cache to another "
                             "path") from None

    @property
    def corrupt(self) -> int:
        """Number of distinct keys whose stored row failed verification (since opening; a
        later `put` repairs the row but the count stays)."""
        return len(self._corrupt_keys)

    def get(self, key: str) -> dict | None:
        """The stored value, or None for a missing or corrupt row."""
        with self._lock:
            row = self._db.execute("SELECT value, checksum FROM answers WHERE key = ?",
                                   (key,)).fetchone()
        if row is None:
            return None
        return self._verified(key, *row)

    def get_many(self, keys) -> dict[str, dict]:
        """{key: value} of the keys present and verified (one query per 500 keys)."""
        keys, out = list(keys), {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT key, value, checksum FROM answers WHERE key IN ({marks})",
                    chunk).fetchall()
            for key, value, digest in rows:
                verified = self._verified(key, value, digest)
                if verified is not None:
                    out[key] = verified
        return out

    def _verified(self, key: str, value, digest) -> dict | None:
        problem = None
        if not isinstance(value, str) or digest != checksum(key, value):
            problem = "checksum mismatch"
        else:
            try:
                decoded = json.loads(value)
            except json.JSONDecodeError as e:
                decoded, problem = None, f"invalid JSON ({e.msg})"
            if problem is None and not isinstance(decoded, dict):
                problem = "not a JSON object"
        if problem is None:
            return decoded
        if key not in self._corrupt_keys:
            self._corrupt_keys.add(key)
            logger.warning("feedback cache %s: entry %s… is corrupt (%s); ignoring it, the "
                           "judge will be asked again", self.path, key[:12], problem)
        return None

    def put(self, key: str, value: dict) -> None:
        """Stores `value` (a JSON-serialisable dict) under `key`, committed before returning."""
        if not isinstance(value, dict):
            raise TypeError(f"cache values are dicts, not {type(value).__name__}")
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers (key, value, checksum, created) "
                "VALUES (?, ?, ?, ?)", (key, text, checksum(key, text), time.time()))

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "FeedbackCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
