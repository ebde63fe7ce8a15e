"""Reading JSON Lines files: one JSON value a line, blank lines skipped, and errors that name the
file and the line (`MalformedRecordError`, message ``path:line: reason``)."""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterator


class MalformedRecordError(ValueError):
    """A line of a JSONL file that cannot be used; the message starts with ``path:line:``."""

    def __init__(self, path, lineno: int, reason: str):
        super().__init__(f"{path}:{lineno}: {reason}")
        self.path = str(path)
        self.lineno = lineno
        self.reason = reason


def nonblank_lines(path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each non-blank line of `path`."""
    with pathlib.Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield lineno, line


def decode_line(path, lineno: int, line: str) -> Any:
    """The JSON value of line `lineno` of `path`; MalformedRecordError when it is not JSON."""
    try:
        return json.loads(line.rstrip("\r\n"))  # columns then count on this line alone
    except json.JSONDecodeError as e:
        raise MalformedRecordError(path, lineno, f"invalid JSON ({e.msg} at column {e.colno})"
                                   ) from None


def read_jsonl(path) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line; a line that is not a JSON object raises
    MalformedRecordError."""
    rows = []
    for lineno, line in nonblank_lines(path):
        row = decode_line(path, lineno, line)
        if not isinstance(row, dict):
            raise MalformedRecordError(path, lineno,
                                       f"expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    return rows
