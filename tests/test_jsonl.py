"""The shared JSON Lines reader and the readers built on it (candidates, feedback, APIBench)."""

import json

import pytest

from rlaif_jax.data import gorilla, jsonl
from rlaif_jax.feedback.label import read_candidates
from rlaif_jax.train import reward_data


def test_rows_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert jsonl.read_jsonl(path) == [(1, {"a": 1}), (4, {"a": 2})]


@pytest.mark.parametrize("line,reason", [
    ('{"a": ', r"invalid JSON \(Expecting value at column 7\)"),
    ("[1, 2]", "expected a JSON object, got list"),
])
def test_a_bad_line_names_file_and_line(tmp_path, line, reason):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n' + line + "\n")
    with pytest.raises(jsonl.MalformedRecordError, match=rf"x\.jsonl:3: {reason}") as info:
        jsonl.read_jsonl(path)
    assert info.value.lineno == 3 and info.value.path == str(path)


def test_the_readers_share_the_error_and_keep_their_own_checks(tmp_path):
    assert gorilla.MalformedRecordError is jsonl.MalformedRecordError
    candidates = tmp_path / "samples.jsonl"
    candidates.write_text(json.dumps({"question_id": 1, "hub": "torchhub", "text": "t"})
                          + "\n\n{oops\n")
    with pytest.raises(jsonl.MalformedRecordError, match=r"samples\.jsonl:3: invalid JSON"):
        read_candidates(candidates)
    candidates.write_text('\n{"question_id": 1, "hub": "torchhub"}\n')
    with pytest.raises(jsonl.MalformedRecordError, match=r"samples\.jsonl:2: missing text"):
        read_candidates(candidates)
    labels = tmp_path / "labels.jsonl"
    labels.write_text('"just a string"\n')
    with pytest.raises(jsonl.MalformedRecordError, match=r"labels\.jsonl:1: expected a JSON obj"):
        reward_data.read_rows(labels, reward_data.LABEL_FIELDS)
