"""The judge's questions: versioned rubrics and the prompt that asks them.

A rubric is a fixed, ordered set of yes/no questions about one candidate response. Each question
has a short id (used as the JSON key of the answer, in the labels file and in reports) and the
question text the judge reads. A "yes" is always the good answer, so the hard score of a
candidate is its number of yes answers.

Rubrics are versioned by name (`config.feedback.rubric`): the name is part of every cache key,
so changing a question means adding a new rubric (``gorilla8-v2``), never editing one in place;
old cached answers then simply stop matching.

The default, ``gorilla8-v1``, asks the eight themes of the study (imports, syntax, completeness,
undefined names, logic, a real API for the task, right arguments, a consistent explanation).
``gorilla4-v1`` is a cheaper subset for quick runs.

The prompt shows the instruction, the candidate (as the model wrote it) and, when
`config.feedback.include_api_doc` is on, the API documentation record of the gold API (the
APIBench ``api_data``: name, call, arguments, description), so the judge can tell a real API and
right arguments from invented ones. It asks for one JSON object ``{"<id>": "yes"|"no", ...}``.
"""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    text: str


@dataclasses.dataclass(frozen=True)
class Rubric:
    name: str  # versioned, e.g. "gorilla8-v1"; part of every cache key
    questions: tuple[Question, ...]

    @property
    def ids(self) -> list[str]:
        return [q.id for q in self.questions]


_GORILLA8 = (
    Question("imports", "Does the code import every module and name it uses?"),
    Question("syntax", "Is the code free of syntax errors (is it valid Python)?"),
    Question("complete", "Is the response complete for the task: all of domain, api_call, "
                         "api_provider, explanation and code given, and nothing cut off?"),
    Question("no_undefined", "Is the code free of undefined variables and names (inputs the "
                             "task provides, such as an image path, may be assumed)?"),
    Question("logic", "Is the code logically correct: would it do what the instruction asks "
                      "when run?"),
    Question("real_api", "Does the code call an API (model, repository or function) that really "
                         "exists and suits this task?"),
    Question("arguments", "Are the arguments of the API call right (the right model or "
                          "repository name and parameters)?"),
    Question("explanation", "Is the explanation consistent with the code and the API call?"),
)

RUBRICS: dict[str, Rubric] = {
    "gorilla8-v1": Rubric("gorilla8-v1", _GORILLA8),
    "gorilla4-v1": Rubric("gorilla4-v1", tuple(q for q in _GORILLA8 if q.id in (
        "syntax", "no_undefined", "real_api", "arguments"))),
}

SYSTEM_PROMPT = (
    "You review Python code written by a small model that was asked to call a machine-learning "
    "API for a task. Answer each question about the candidate with \"yes\" or \"no\" only. "
    "Reply with one JSON object mapping each question id to \"yes\" or \"no\", and nothing else.")


def get_rubric(name: str) -> Rubric:
    if name not in RUBRICS:
        raise ValueError(f"unknown rubric {name!r} (known: {', '.join(sorted(RUBRICS))})")
    return RUBRICS[name]


def api_doc(api_data: str | dict | None) -> dict | None:
    """The parts of an APIBench ``api_data`` record a judge needs (None when there is none)."""
    if isinstance(api_data, str):
        try:
            api_data = json.loads(api_data) if api_data else None
        except json.JSONDecodeError:
            return None
    if not isinstance(api_data, dict):
        return None
    keep = ("domain", "framework", "functionality", "api_name", "api_call", "api_arguments",
            "description")
    return {k: api_data[k] for k in keep if api_data.get(k) not in (None, "", [], {})}


def build_messages(rubric: Rubric, instruction: str, candidate: str,
                   doc: dict | None = None) -> list[dict]:
    """The chat messages asking `rubric`'s questions about `candidate` (deterministic text)."""
    parts = [f"## Task\n{instruction.strip()}"]
    if doc:
        parts.append("## Documentation of the API that solves the task\n"
                     + json.dumps(doc, ensure_ascii=False, indent=1))
    parts.append(f"## Candidate response\n{candidate.strip() or '(empty)'}")
    parts.append("## Questions\n" + "\n".join(f"- {q.id}: {q.text}" for q in rubric.questions))
    example = json.dumps({q.id: "yes" for q in rubric.questions[:2]})[:-1] + ", ...}"
    parts.append(f"Answer with one JSON object with the keys {', '.join(rubric.ids)}, "
                 f"each \"yes\" or \"no\", for example {example}")
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "\n\n".join(parts)}]


def prompt_text(messages: list[dict]) -> str:
    """One canonical string of the messages (what the cache key hashes)."""
    return "\n".join(f"<{m['role']}>\n{m['content']}" for m in messages)
