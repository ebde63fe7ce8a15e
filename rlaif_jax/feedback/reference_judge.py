"""The offline judge: answers the rubric's questions from the gold record and our own analyzers.

This is **reference-grounded feedback, not an LLM**. It exists because the embedded default must
run on a machine that reaches no model server, and it is named ``reference-v2`` everywhere (cache
keys, labels, reports). It answers the same questions an LLM judge is asked, deterministically,
from evidence an LLM would have to estimate:

=============  ==================================================================================
question       "yes" when
=============  ==================================================================================
imports        the response has a code section, and running it (sandbox) hits no import failure
               nor an undefined API/module name (``import`` / ``undefined_name`` statuses)
syntax         the code and the api_call both parse as Python
complete       all five sections are present and non-empty, the code makes the api_call's
               call (its callee and every string literal of it appear in the code), and the
               generation ended with EOS (not cut off at the length limit)
no_undefined   running the code raises no NameError for an API or module name
logic          the code runs with no failure attributable to it (sandbox status ``ok``) and
               Gorilla's AST match finds the right API for the task (compat mode, gold domain)
real_api       Gorilla's AST match finds an API of the provider's database (no hallucination)
               and no model id the hub does not know is loaded (``unknown_model``)
arguments      the strict AST match holds (the gold API's callee with its reference
               arguments) and running the code raises no argument error and loads no unknown
               model (``bad_arguments`` / ``unknown_model``): the call the code makes counts,
               not only the api_call line
explanation    the explanation is non-empty and shares a salient word with the api_call (a
               word of a quoted model/repo id, or of the callee's name; generic words such as
               "pretrained", "model" or "hub" do not count)
=============  ==================================================================================

Execution uses `rlaif_jax.evaluation.sandbox` (time/memory limits, no network, stand-in model
hubs) and the AST questions `rlaif_jax.evaluation.ast_match`, so the judge is exactly as strict
as the evaluation measures. P(yes) is not defined for it (``p_yes`` is None): its soft score is
its hard score.
"""

from __future__ import annotations

import ast
import re

from rlaif_jax.data import gorilla
from rlaif_jax.evaluation import ast_match, sandbox

# v2: "complete" and "arguments" also look at the code, not only at the api_call line (v1 gave
# 6-7 of 8 to an answer with a right api_call and code that drops the model argument, which PPO
# learned to produce). The name is part of the cache key, so v1 answers are not reused.
NAME = "reference-v2"
_QUOTED = re.compile(r"""['"]([^'"\n]{2,200})['"]""")


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _callee(api_call: str) -> str | None:
    """The last dotted part of the first call in `api_call` (``from_pretrained``, ``load``)."""
    try:
        tree = ast.parse(api_call.strip())
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                return func.attr
            if isinstance(func, ast.Name):
                return func.id
    return None


def _callee_chain(api_call: str) -> list[str]:
    """Every name of the first call's callee (``AutoModel.from_pretrained`` -> both parts)."""
    try:
        tree = ast.parse(api_call.strip())
    except (SyntaxError, ValueError):
        return []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            names, func = [], node.func
            while isinstance(func, ast.Attribute):
                names.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                names.append(func.id)
            return names
    return []


def _words(text: str) -> set[str]:
    """Lower-case alphanumeric words, also split where letters meet digits (resnext101)."""
    words = set()
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        words.add(word)
        words.update(re.findall(r"[a-z]+|[0-9]+", word))
    return words


_GENERIC = {"pretrained", "true", "false", "model", "models", "torch", "hub", "torchhub", "load",
            "from", "the", "and", "for", "base", "large", "small", "tiny", "v1", "v2", "cased",
            "uncased", "fp16", "fp32", "task", "pipeline", "https", "www", "com", "tfhub", "dev"}


def _salient_terms(api_call: str) -> set[str]:
    """Words of the api_call an explanation of it would name: parts of quoted ids, the callee."""
    terms = set()
    for value in _QUOTED.findall(api_call):
        terms.update(w for w in _words(value) if len(w) >= 3 and not w.isdigit())
    terms.update(w for w in _words(" ".join(_callee_chain(api_call))) if len(w) >= 3)
    return terms - _GENERIC


def _explanation_consistent(explanation: str, api_call: str) -> bool:
    """The explanation names at least one salient word of the api_call."""
    return bool(explanation.strip()) and bool(_salient_terms(api_call) & _words(explanation))


def _code_makes_call(code: str, api_call: str, callee: str | None) -> bool:
    """The code contains the api_call's callee and each of its string literals."""
    if not code or callee is None or callee not in code:
        return False
    return all(literal in code for literal in _QUOTED.findall(api_call))


def answer_one(text: str, gold: dict, finished: bool, ast_result: ast_match.AstResult,
               exec_result: sandbox.ExecResult) -> dict[str, bool]:
    """The gorilla8 answers (True = yes) for one candidate, given its analyses."""
    sections = gorilla.parse_response(text or "")
    code = sandbox.executable_code(text or "")
    api_call = sections.get("api_call", "").strip()
    has_code = bool(sections.get("code", "").strip())
    status = exec_result.status
    callee = _callee(api_call) if api_call else None
    return {
        "imports": has_code and status not in ("import", "undefined_name", "syntax"),
        "syntax": bool(code) and _parses(code) and bool(api_call) and _parses(api_call),
        "complete": (all(sections.get(k, "").strip() for k in gorilla.SECTIONS) and finished
                     and _code_makes_call(sections.get("code", ""), api_call, callee)),
        "no_undefined": bool(code) and status not in ("undefined_name", "syntax"),
        "logic": status == "ok" and ast_result.correct,
        "real_api": (not ast_result.hallucination and ast_result.matched_index is not None
                     and status != "unknown_model"),
        "arguments": (ast_result.strict_correct
                      and status not in ("bad_arguments", "unknown_model")),
        "explanation": _explanation_consistent(sections.get("explanation", ""), api_call),
    }


class ReferenceJudge:
    """Answers rubric questions for candidates; `judge_candidates` is the whole interface."""

    name = NAME

    def __init__(self, exec_timeout: float = 10.0, workers: int | None = None):
        self.exec_timeout = exec_timeout
        self.workers = workers
        self._dbs: dict[str, ast_match.APIDatabase] = {}

    def _db(self, hub: str) -> ast_match.APIDatabase:
        if hub not in self._dbs:
            self._dbs[hub] = ast_match.APIDatabase.load(hub)
        return self._dbs[hub]

    def judge_candidates(self, candidates: list[dict], golds: list[dict],
                         question_ids: list[str]) -> list[dict]:
        """Answer dicts ``{answers, p_yes, raw, usage, model}`` for each (candidate, gold record).

        A candidate is a row of the samples file (``text``, ``hub``, ``finished``); `question_ids`
        must be a subset of the gorilla8 ids.
        """
        texts = [c.get("text") or "" for c in candidates]
        hubs = [c["hub"] for c in candidates]
        asts = [ast_match.match_response(t, g, self._db(h)) for t, g, h in zip(texts, golds, hubs)]
        runs = sandbox.run_many([sandbox.executable_code(t) for t in texts], hubs,
                                workers=self.workers, timeout=self.exec_timeout)
        out = []
        for c, t, g, a, r in zip(candidates, texts, golds, asts, runs):
            full = answer_one(t, g, bool(c.get("finished", True)), a, r)
            unknown = set(question_ids) - set(full)
            if unknown:
                raise ValueError(f"the reference judge cannot answer {sorted(unknown)}")
            answers = {q: "yes" if full[q] else "no" for q in question_ids}
            out.append({"answers": answers, "p_yes": {q: None for q in question_ids},
                        "raw": f"exec={r.status}; ast_correct={a.correct}; "
                               f"hallucination={a.hallucination}; strict={a.strict_correct}",
                        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
                        "model": NAME})
        return out
