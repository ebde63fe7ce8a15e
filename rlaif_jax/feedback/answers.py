"""Reading a judge's yes/no answers out of its reply, and P(yes) out of its token logprobs.

    >>> parse_answers('```json\\n{"imports": "Yes", "syntax": false}\\n```', ["imports", "syntax"])
    {'imports': 'yes', 'syntax': 'no'}

Parsing (`parse_answers`, `locate_answers`)
-------------------------------------------
Judges asked for a JSON object do not always return exactly one. The reply is read in three
passes; a question answered by an earlier pass is not looked at again:

1. **JSON**: the whole reply, the body of a ```json fence, or the span from the first ``{`` to
   the last ``}`` is decoded. Keys match question ids ignoring case and ``-``/space vs ``_``;
   an object wrapping the answers (``{"answers": {...}}``), per-question objects
   (``{"imports": {"answer": "yes", "reason": ...}}``) and lists of
   ``{"id": ..., "answer": ...}`` are understood. Values: ``"yes"``/``"no"`` in any case with
   trailing punctuation or an explanation (``"Yes, because"``), booleans, 1/0.
2. **Key: value** anywhere in the text: ``imports: no``, ``"imports": "yes"``,
   ``**imports** - Yes``, ``imports = true``. A quoted value must have its closing quote, so a
   reply cut off inside a value (``{"imports": "yes", "syntax": "n``) keeps only the complete
   answers: this is how truncated JSON is read.
3. **Position**: numbered lines (``1. yes``, ``2) Imports present? No``, ``Q3: yes``) answer the
   question with that number; a reply made only of yes/no words, exactly one per question
   (``yes, no, yes``), answers them in order.

A question with no answer is None: the caller decides whether to ask again.

P(yes) (`p_yes_from_logprobs`)
------------------------------
With ``logprobs=True, top_logprobs=k`` the server returns, for each generated token, its text
and the k most likely alternatives at that position. The character offset of each answer word
found by `locate_answers` is mapped to the generated token covering it; at that position

    P(yes) = sum p(yes-like tokens) / (sum p(yes-like) + sum p(no-like))

over the top alternatives (plus the chosen token if the server left it out). Yes-like tokens
are "yes", "y", "ye", "true" after stripping spaces, quotes and punctuation, in any case
("Yes", ' "yes'); no-like are "no", "n", "false". When the server gives no alternatives (k=0),
only the chosen token's probability p is known and P(yes) is p for a yes, 1 - p for a no (as if
all other mass were on the opposite answer). None when the answer word was not found, the
tokens do not spell the text, or no yes/no-like token is at that position.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence

YES_WORDS = {"yes", "y", "ye", "true"}
NO_WORDS = {"no", "n", "false"}
_ANSWER_WORD = r"(yes|no|true|false)"


def _normalise_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def normalise_value(value) -> str | None:
    """'yes' / 'no' / None for a JSON value of an answer."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and value in (0, 1):
        return "yes" if value == 1 else "no"
    if isinstance(value, dict):
        for k in ("answer", "value", "verdict", "result"):
            if k in value:
                return normalise_value(value[k])
        return None
    if not isinstance(value, str):
        return None
    m = re.match(r"\s*[\"'*]*\s*(yes|no|true|false|y|n)(?![a-z])", value, re.IGNORECASE)
    if m is None:
        return None
    return "yes" if m.group(1).lower() in YES_WORDS else "no"


# --- pass 1: JSON -----------------------------------------------------------------------

def _json_candidates(text: str) -> Iterable[str]:
    yield text
    for m in re.finditer(r"```(?:json|JSON)?\s*\n?(.*?)```", text, re.DOTALL):
        yield m.group(1)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        yield text[start:end + 1]


def _answers_from_object(obj, ids: dict[str, str]) -> dict[str, str]:
    """qid -> answer from a decoded JSON value (ids maps normalised key -> qid)."""
    found = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            qid = ids.get(_normalise_key(key))
            answer = normalise_value(value) if qid else None
            if answer is not None:
                found[qid] = answer
        if not found:  # a wrapper such as {"answers": {...}}
            for value in obj.values():
                if isinstance(value, (dict, list)):
                    found.update(_answers_from_object(value, ids))
    elif isinstance(obj, list):
        for item in obj:
            if not isinstance(item, dict):
                continue
            name = next((item[k] for k in ("id", "qid", "question_id", "question", "key")
                         if isinstance(item.get(k), str)), None)
            qid = ids.get(_normalise_key(name)) if name is not None else None
            answer = normalise_value(item) if qid else None
            if answer is not None:
                found[qid] = answer
    return found


def _json_pass(text: str, question_ids: Sequence[str]) -> dict[str, str]:
    ids = {_normalise_key(q): q for q in question_ids}
    for candidate in _json_candidates(text):
        try:
            obj = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        found = _answers_from_object(obj, ids)
        if found:
            return found
    return {}


# --- pass 2: key: value -------------------------------------------------------------------

def _key_pattern(qid: str) -> re.Pattern:
    key = re.escape(qid).replace("_", "[_ -]")
    return re.compile(
        r"(?<![\w])[\"'*]*" + key + r"[\"'*]*\s*[:=\-\u2013]+\s*"
        r"(?:\{\s*[\"']?(?:answer|value)[\"']?\s*:\s*)?"  # {"imports": {"answer": "yes"}}
        r"(?P<q>[\"']?)" r"(?P<word>" + _ANSWER_WORD[1:-1] + r")(?![\w])[.!]?(?P=q)",
        re.IGNORECASE)


def _word_answer(word: str) -> str:
    return "yes" if word.lower() in YES_WORDS else "no"


# --- pass 3: numbered lines and bare lists -------------------------------------------------

_NUMBERED = re.compile(
    r"^[ \t>*-]*(?:Q(?:uestion)?\s*)?(?P<n>\d{1,3})\s*[.):\]]"  # "1." "2)" "Q3:" "Question 4:"
    r"(?:[^\n]*?[:?\-\u2013]\**)?[ \t]*[\"'*]*"                   # optional label "Imports?**"
    r"(?P<word>yes|no|true|false)(?![\w])", re.IGNORECASE | re.MULTILINE)


def locate_answers(text: str, question_ids: Sequence[str]) -> dict[str, tuple[str, int | None]]:
    """qid -> (answer, character offset of the answer word in `text` or None if unknown).

    Questions without an answer are absent. See the module docstring for the passes.
    """
    found: dict[str, tuple[str, int | None]] = {}
    keyed = {qid: [(_word_answer(m.group("word")), m.start("word"))
                   for m in _key_pattern(qid).finditer(text)] for qid in question_ids}
    for qid, answer in _json_pass(text, question_ids).items():
        offsets = [offset for word, offset in keyed[qid] if word == answer]
        found[qid] = (answer, offsets[-1] if offsets else None)
    for qid, matches in keyed.items():
        if matches:
            found.setdefault(qid, matches[0])
    if len(found) < len(question_ids):
        for m in _NUMBERED.finditer(text):
            n = int(m.group("n"))
            if 1 <= n <= len(question_ids) and question_ids[n - 1] not in found:
                found[question_ids[n - 1]] = (_word_answer(m.group("word")), m.start("word"))
    if not found:
        words = list(re.finditer(r"[A-Za-z]+", text))
        if (len(words) == len(question_ids)
                and all(w.group().lower() in ("yes", "no", "true", "false") for w in words)):
            for qid, w in zip(question_ids, words):
                found[qid] = (_word_answer(w.group()), w.start())
    return found


def parse_answers(text: str, question_ids: Sequence[str]) -> dict[str, str | None]:
    """qid -> "yes" / "no" / None (not answered) for every question id, in order."""
    found = locate_answers(text or "", list(question_ids))
    return {qid: found[qid][0] if qid in found else None for qid in question_ids}


# --- P(yes) from logprobs --------------------------------------------------------------------

def _field(obj, name, default=None):
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _token_kind(token: str) -> str | None:
    word = re.sub(r"[\s\"'`*.,:;!?{}\[\]()]+", "", token or "").lower()
    if word in YES_WORDS:
        return "yes"
    if word in NO_WORDS:
        return "no"
    return None


def p_yes_at(entry) -> float | None:
    """P(yes) at one generated position (a logprobs.content entry), or None."""
    mass = {"yes": 0.0, "no": 0.0}
    alternatives = list(_field(entry, "top_logprobs") or [])
    chosen = _field(entry, "token")
    if alternatives:
        if all(_field(a, "token") != chosen for a in alternatives):
            alternatives.append(entry)
        for alt in alternatives:
            kind = _token_kind(_field(alt, "token"))
            if kind is not None:
                mass[kind] += math.exp(float(_field(alt, "logprob")))
    else:
        kind = _token_kind(chosen)
        if kind is None:
            return None
        p = math.exp(float(_field(entry, "logprob")))
        mass[kind], mass["no" if kind == "yes" else "yes"] = p, 1.0 - p
    total = mass["yes"] + mass["no"]
    return mass["yes"] / total if total > 0 else None


def p_yes_from_logprobs(choice_logprobs, text: str,
                        question_ids: Sequence[str]) -> dict[str, float | None]:
    """qid -> P(yes) at the question's answer token (None where it cannot be computed).

    `choice_logprobs` is a choice's ``logprobs`` (object or dict with ``content``) or directly
    its ``content`` list of {token, logprob, top_logprobs}; `text` the choice's message text.
    """
    content = choice_logprobs
    if content is not None and not isinstance(content, list):
        content = _field(content, "content")
    result: dict[str, float | None] = {qid: None for qid in question_ids}
    if not content:
        return result
    starts, pos = [], 0
    for entry in content:
        starts.append(pos)
        pos += len(_field(entry, "token") or "")
    spelled = "".join(_field(e, "token") or "" for e in content)
    if spelled != text[:len(spelled)]:  # tokens do not spell the text: offsets mean nothing
        return result
    for qid, (_, offset) in locate_answers(text, list(question_ids)).items():
        if offset is None or offset >= pos:
            continue
        i = _token_index(starts, offset)
        result[qid] = p_yes_at(content[i])
    return result


def _token_index(starts: list[int], offset: int) -> int:
    lo, hi = 0, len(starts) - 1
    while lo < hi:  # last token starting at or before offset
        mid = (lo + hi + 1) // 2
        if starts[mid] <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo
