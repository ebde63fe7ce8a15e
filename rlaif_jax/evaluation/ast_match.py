"""AST accuracy and hallucination of API calls: Gorilla-compatible scoring plus a strict variant.

Compat mode re-implements the scoring of Gorilla's ``eval/eval-scripts/ast_eval_{hf,th,tf}.py``
(ShishirPatil/gorilla) so that its numbers can be compared with the published ones:

1. The call is cut out of the response (`extract_api_call`): the text after the first
   ``api_call`` up to the next ``api_call`` or ``api_provider``, from two characters after its
   first ``:`` to its last ``)``.
2. Every API of the provider's database is parsed with tree-sitter's Python grammar. Its callee is
   the first child of the first statement's first node (``AutoModel.from_pretrained``,
   ``pipeline``, ``torch.hub.load``, ``hub.KerasLayer``...), and its reference arguments depend on
   the hub: Hugging Face, every argument (the value of a keyword argument); TorchHub, the values of
   the arguments whose text contains ``repo_or_dir`` or ``model``; TF Hub, every argument, except
   that a ``model=`` keyword argument gives its value. Single quotes are stripped off the ends.
3. The candidate's sub-trees are listed depth first (a stack: children pushed left to right, so
   visited right to left), leaves left out. Going through the database in file order, an API
   matches when the first sub-tree whose first child's text equals the API's callee contains
   every reference argument as a substring; the first API that matches is the answer.
4. No API matched: hallucination. Otherwise correct when that API's domain equals the gold domain,
   ``api_data["domain"]`` of the question's apibench line, else an error (``ast_error``, which the
   scripts do not print: it is 1 - accuracy - hallucination). All three are fractions of all
   responses.

Quirks of the original, kept in compat mode and fixed in strict mode:

* Extraction. The character after the ``:`` is always dropped, assumed to be a space
  (``<<<api_call>>>:pipeline(`` gives ``ipeline(``); with no ``:`` the first two characters go;
  everything after the last ``)`` goes, and with no ``)`` the last character goes; in dict-style
  answers (``'api_call': '...'``) the opening quote is kept. Strict mode takes the api_call section
  with `rlaif_jax.data.gorilla.parse_response` (markers or dict keys) and cuts it after its last
  ``)``.
* No ``api_call`` in the response. Hugging Face and TF Hub match the whole response instead, so an
  API named anywhere (explanation, code) can match; TorchHub scores the response as neither
  correct nor a hallucination, i.e. as an error. Strict mode has nothing to match: a strict
  hallucination.
* Callee fallthrough. When no sub-tree has the API's callee, the loop variable of the search is
  left on the last sub-tree of the traversal and the arguments are looked up there: the callee
  check is skipped. When the response's callee is a bare name the last sub-tree is its first
  argument, so the response ``load_model('YituTech/conv-bert-base')`` matches the API
  ``AutoModel.from_pretrained('YituTech/conv-bert-base')``; when it is dotted it is the callee
  itself, so ``Swin2SRForConditionalGeneration.from_pretrained(...)`` matches the API
  ``pipeline('ner')`` ('ner' is in 'Generation').
  Strict mode needs a call with exactly the callee.
* Any node counts as "having the callee" when its first child's text equals it, not only calls.
  Strict mode looks at call nodes only.
* Arguments are substring tests on the sub-tree's text: ``bert-base`` is found in
  ``bert-base-uncased``, and an argument can be satisfied by another argument or a comment. Only
  single quotes are stripped, so a double-quoted database value only matches the same quotes.
  Strict mode compares values: string literals by value (either quotes), other expressions token
  by token; keywords by name, positions by index, positions and keywords being the same parameter
  for callees whose signature is known (`_POSITIONAL_PARAMETERS`).
* First match wins: with substring tests an earlier API of the database can shadow the intended
  one and decide correct vs error. Strict mode looks for the gold API itself, and a strict
  hallucination means that no API of the database (nor the gold one) matches, in any order.
* Correct means "some API of the gold domain", not the gold API: the right task with the wrong
  model counts as correct. Strict mode requires the gold API: the callee and reference arguments
  of the gold record's ``api_data["api_call"]``.
* Degenerate reference arguments. TorchHub: ``model_name=`` and the like also contain ``model``.
  Hugging Face: a positional string containing ``=`` gives its closing quote, which the stripping
  empties, and an empty argument is in every text. Database APIs that are not a call as the first
  statement (``./run.sh --download_model mio/amadeus``) or have no reference argument are never
  matched; the scripts would crash on a database API whose tree does not have the expected shape,
  here it is skipped. Strict mode: Hugging Face, every argument; TorchHub, ``repo_or_dir`` and
  ``model``; TF Hub, the model handle of the first ``hub.*`` call (so ``tf.keras.Sequential(
  [hub.KerasLayer(h)])`` is the API ``hub.KerasLayer(h)``). A database API without any call
  matches a response whose api_call section is the same text up to whitespace.
* Syntax. Compat mode matches whatever tree-sitter recovers from a broken call; strict mode needs
  an api_call section that parses without errors (`AstResult.parsed` reports the compat
  extraction).

Matching one response against the ~936 Hugging Face APIs costs one parse and a dictionary lookup
plus a few substring tests per API: the database is parsed once, in `APIDatabase.from_entries`.

Agreement with Gorilla's scripts and published numbers
------------------------------------------------------
Per response, compat mode gives the outcome (correct / hallucination / error) of the released
scripts, re-typed and run with the 2023 parser stack (py-tree-sitter 0.20.1, tree-sitter-python
0.19.0 to 0.20.4): no difference on 3,489 responses (the 911 Hugging Face and 186 TorchHub gold
answers, two mutated copies of each (quotes, parentheses, truncation, dict style, invented ids,
lost markers), Gorilla's released TorchHub BM25 file and the first 12 lines of its Hugging Face
GPT-Index file, both kept in ``tests/data/gorilla_responses``). Parser versions 0.19.0, 0.20.1,
0.20.4 and the installed 0.21 give the same counts on all of these.

Against the paper's tables (Gorilla's response files name their run in ``model_id``: ``FT`` is
the model fine-tuned without retriever, ``RT`` with retriever-aware training, then the retriever
used at inference):

* TF Hub, ``response_tensorflowhub_Gorilla_FT_0_shot`` (Gorilla zero-shot, Table 1):
  hallucination 5.26 % (36 of 685) against 5.40 % published; the response apart parses
  differently with tree-sitter-python 0.20.1 (5.40 % exactly). Accuracy not computed (no TF Hub
  apibench file here).
* TorchHub, ``response_torchhub_Gorilla_FT_bm25`` (``bm25-FT-th-may10``: the model trained
  without retriever, queried with BM25 documents; the paper's ablation of retrievers, 37.63 %
  accuracy): the released ``ast_eval_th.py`` gives 44.62 % (83/186) and 17.20 % hallucination,
  and so does compat mode. Applying the Hugging Face script's argument rule (every argument, so
  ``pretrained=True`` must be there too) gives 38.17 % (71/186), one response from the paper: the
  published TorchHub numbers look computed with that rule, not with the released TorchHub script.
  ``APIDatabase.load(hub, rule="huggingface")`` (``evaluate(..., ast_rule=...)``) applies it;
  the default stays the provider's own released script.
* Hugging Face: the released response files are 1.0-1.3 M characters each and were not compared
  as a whole; the first 12 lines of ``response_huggingface_Gorilla_RT_gpt_index`` (Table 1,
  GPT-Index) score as the script scores them (3 correct, 9 errors).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
import warnings

import tree_sitter_python
from tree_sitter import Language, Node, Parser

from rlaif_jax.data import gorilla

# Names of a provider, as the project's CLI, Gorilla's scripts and its paper spell them -> hub.
HUB_OF_PROVIDER = {
    "huggingface": "huggingface", "hf": "huggingface",
    "torchhub": "torchhub", "th": "torchhub",
    "tensorflowhub": "tensorflowhub", "tf": "tensorflowhub", "tensorhub": "tensorflowhub",
}

# Parameter names of the leading positional arguments of well-known loaders, so that strict mode
# treats `torch.hub.load('a', 'b')` and `torch.hub.load(repo_or_dir='a', model='b')` alike.
_POSITIONAL_PARAMETERS = {
    "torch.hub.load": ("repo_or_dir", "model"),
    "hub.load": ("handle",),
    "hub.KerasLayer": ("handle",),
    "pipeline": ("task", "model"),
}
_FROM_PRETRAINED = ("pretrained_model_name_or_path",)  # any `X.from_pretrained`
# The arguments that identify the API in strict mode; None = all of them.
_STRICT_KEYS = {"huggingface": None, "torchhub": ("repo_or_dir", "model"),
                "tensorflowhub": ("handle",)}
_STRING_TYPES = ("string", "concatenated_string")
_WHITESPACE = re.compile(r"\s+")


@functools.cache
def _parser() -> Parser:
    return Parser(Language(tree_sitter_python.language()))


def _parse(text: str) -> Node:
    """The root node of `text` parsed as Python (tree-sitter never fails, it marks errors)."""
    return _parser().parse(text.encode("utf-8")).root_node


def _hub(name: str) -> str:
    """The hub of a provider name; ValueError for an unknown one."""
    try:
        return HUB_OF_PROVIDER[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}; expected one of "
                         f"{sorted(HUB_OF_PROVIDER)}") from None


def extract_api_call(text: str) -> str | None:
    """The API call of a response, cut out as Gorilla's scripts do; None without ``api_call``.

    The section runs from the first ``api_call`` to the next ``api_call`` or ``api_provider``; the
    call starts two characters after the section's first ``:`` (or at its third character) and
    ends at its last ``)`` (or one character before the section's end).
    """
    _, found, rest = text.partition("api_call")
    if not found:
        return None
    section = rest.split("api_call", 1)[0].split("api_provider", 1)[0]
    start = max(section.find(":"), 0) + 2
    close = section.rfind(")")
    return section[start:close + 1] if close >= 0 else section[start:-1]


# ---------------------------------------------------------------------------------------------
# Compat mode


def _gorilla_argument(child: Node, hub: str) -> bytes | None:
    """The reference argument Gorilla's ``get_args`` of `hub` takes from a child of a database
    call's argument list, None for none; IndexError where the scripts would crash."""
    text = child.text.decode("utf-8", "replace")
    if hub == "torchhub":
        return child.children[2].text if "repo_or_dir" in text or "model" in text else None
    if hub == "huggingface":
        keyword = "=" in text
    else:
        keyword = "model=" in text or "model =" in text
    if keyword:
        return child.children[2].text
    return None if text in ("(", ")", ",") else child.text


def _compat_reference(root: Node, hub: str) -> tuple[bytes, tuple[bytes, ...]] | None:
    """(callee, reference arguments) of a database API as Gorilla's scripts read it, None when
    they never match it (no call at the expected place, no reference argument)."""
    try:
        head = root.children[0].children[0]
        if head.child_count == 0:
            return None
        callee = head.children[0].text
        args = [arg for child in head.children[1].children
                if (arg := _gorilla_argument(child, hub)) is not None]
    except IndexError:  # a tree of another shape: the scripts would crash on it
        return None
    if not args:
        return None
    return callee, tuple(arg.lstrip(b"'").rstrip(b"'") for arg in args)


def _compat_match(candidate: str, references: list[tuple[int, bytes, tuple[bytes, ...]]]):
    """Index of the first database API that Gorilla's `ast_check` matches in `candidate`."""
    source = candidate.encode("utf-8")
    root = _parser().parse(source).root_node
    first_with_head: dict[bytes, Node] = {}
    last = root
    stack = [root]
    while stack:  # Gorilla's get_all_sub_trees order
        node = stack.pop()
        if node.child_count:
            first_with_head.setdefault(node.children[0].text, node)
        last = node
        stack.extend(child for child in node.children if child.child_count)
    for index, callee, args in references:
        node = first_with_head.get(callee, last)  # the fallthrough quirk
        text = source[node.start_byte:node.end_byte]
        if all(arg in text for arg in args):
            return index
    return None


# ---------------------------------------------------------------------------------------------
# Strict mode


def _string_value(node: Node) -> str | bytes | None:
    """The value of a (non-formatted) string literal node, None when it is not one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes
            value = ast.literal_eval(node.text.decode("utf-8", "replace"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, (str, bytes)) else None


def _canonical(node: Node) -> str:
    """An expression's tokens joined by spaces, string literals replaced by the repr of their
    value and comments dropped: equal for the same value written with other quotes or spacing."""
    tokens, stack = [], [node]
    while stack:
        current = stack.pop()
        if current.type == "comment":
            continue
        if current.type in _STRING_TYPES:
            value = _string_value(current)
            if value is not None:
                tokens.append(repr(value))
                continue
        if current.child_count == 0:
            tokens.append(current.text.decode("utf-8", "replace"))
        else:
            stack.extend(reversed(current.children))
    return " ".join(tokens)


def _callee_text(node: Node) -> str:
    return _WHITESPACE.sub("", node.text.decode("utf-8", "replace"))


def _call_arguments(call: Node, callee: str) -> dict[str, str]:
    """{parameter: canonical value} of a call. Keyword arguments go by name; a positional argument
    takes the name of the callee's known parameter at its place unless a keyword argument already
    names that parameter, else ``#<index>``."""
    known = _POSITIONAL_PARAMETERS.get(callee)
    if known is None and callee.endswith(".from_pretrained"):
        known = _FROM_PRETRAINED
    known = known or ()
    args_node = call.child_by_field_name("arguments")
    children = [c for c in (args_node.named_children if args_node is not None else ())
                if c.type != "comment"]
    arguments: dict[str, str] = {}
    for child in children:
        if child.type == "keyword_argument":
            name, value = child.child_by_field_name("name"), child.child_by_field_name("value")
            if name is not None and value is not None:
                arguments.setdefault(name.text.decode("utf-8", "replace"), _canonical(value))
    positional = [c for c in children if c.type != "keyword_argument"]
    for index, child in enumerate(positional):
        key = known[index] if index < len(known) and known[index] not in arguments else f"#{index}"
        arguments.setdefault(key, _canonical(child))
    return arguments


def _calls(root: Node):
    """(callee text without whitespace, call node) of every call under `root`, outermost and
    leftmost first."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "call":
            function = node.child_by_field_name("function")
            if function is not None:
                callee = _callee_text(function)
                yield callee, node
        stack.extend(reversed(node.children))


@dataclasses.dataclass(frozen=True)
class _StrictAPI:
    """What strict mode requires of a response: a call to `callee` with `arguments` (a subset of
    its arguments), or, for an API that is not a call, the same text (`text`)."""

    callee: str | None
    arguments: tuple[tuple[str, str], ...]
    text: str

    def matches(self, callee: str, arguments: dict[str, str]) -> bool:
        """Whether a call (callee, `_call_arguments`) is this API."""
        return callee == self.callee and all(arguments.get(k) == v for k, v in self.arguments)


@functools.lru_cache(maxsize=4096)
def _strict_reference(api_call: str, hub: str) -> _StrictAPI:
    """The strict-mode reference of an API's call text (cached: gold records repeat)."""
    text = _WHITESPACE.sub(" ", api_call).strip()
    calls = list(_calls(_parse(api_call)))
    if hub == "tensorflowhub":  # the hub.* call is the API, a Sequential around it is not
        calls = [c for c in calls if c[0].startswith("hub.")] or calls
    if not calls:
        return _StrictAPI(None, (), text)
    callee, node = calls[0]
    arguments = _call_arguments(node, callee)
    keys = _STRICT_KEYS[hub]
    if keys is not None and any(k in arguments for k in keys):
        arguments = {k: v for k, v in arguments.items() if k in keys}
    return _StrictAPI(callee, tuple(sorted(arguments.items())), text)


def _strict_call_text(response: str) -> str | None:
    """The api_call section of a response (markers or dict keys), cut after its last ``)``."""
    section = gorilla.parse_response(response).get("api_call")
    if not section:
        return None
    close = section.rfind(")")
    return section[:close + 1] if close >= 0 else section


# ---------------------------------------------------------------------------------------------
# Public API


@dataclasses.dataclass
class APIDatabase:
    """A provider's Gorilla API database, parsed once for both modes.

    `entries` are the raw API records; `matched_index` of an `AstResult` indexes them.
    """

    hub: str
    entries: list[dict]
    # Whose script's rules compat mode follows (argument rule, response without api_call): the
    # provider's own by default; see the module docstring ("Agreement with the published numbers").
    rule: str
    # Compat: (index, callee, reference arguments) of the APIs Gorilla can match, in file order.
    _compat: list[tuple[int, bytes, tuple[bytes, ...]]] = dataclasses.field(repr=False)
    # Strict: callee -> the APIs calling it; API text -> APIs that are not a call.
    _strict_by_callee: dict[str, list[_StrictAPI]] = dataclasses.field(repr=False)
    _strict_texts: frozenset[str] = dataclasses.field(repr=False)

    @classmethod
    def load(cls, hub: str, path=None, rule: str | None = None) -> "APIDatabase":
        """The database at `path` (JSONL), by default the vendored one of `hub` (a hub or any
        name of `HUB_OF_PROVIDER`); `rule`: see `from_entries`."""
        hub = _hub(hub)
        return cls.from_entries(hub, gorilla.load_api_db(path or gorilla.api_db_path(hub)), rule)

    @classmethod
    def from_entries(cls, hub: str, entries: list[dict], rule: str | None = None
                     ) -> "APIDatabase":
        """A database of API records (dicts with ``api_call`` and ``domain``); records whose
        ``api_call`` is missing or not a string are kept in `entries` but never matched.
        `rule` (a provider name, default `hub`): compat mode applies that provider's script."""
        hub = _hub(hub)
        rule = _hub(rule) if rule else hub
        compat, by_callee, texts = [], {}, set()
        for index, entry in enumerate(entries):
            api_call = entry.get("api_call")
            if not isinstance(api_call, str):
                continue
            reference = _compat_reference(_parse(api_call), rule)
            if reference is not None:
                compat.append((index, *reference))
            strict = _strict_reference(api_call, hub)
            if strict.callee is None:
                texts.add(strict.text)
            else:
                by_callee.setdefault(strict.callee, []).append(strict)
        return cls(hub, list(entries), rule, compat, by_callee, frozenset(texts))

    def compat_match(self, candidate: str) -> int | None:
        """Index into `entries` of the API Gorilla's matcher finds in `candidate`, if any."""
        return _compat_match(candidate, self._compat)

    def strict_match(self, calls: list[tuple[str, dict[str, str]]], text: str) -> bool:
        """Whether some API of the database strictly matches a response's calls or text."""
        return text in self._strict_texts or any(
            api.matches(callee, arguments)
            for callee, arguments in calls for api in self._strict_by_callee.get(callee, ()))


@dataclasses.dataclass
class AstResult:
    """The scores of one response; see the module docstring for both modes."""

    api_call: str | None       # extract_api_call of the response (None: no api_call in it)
    parsed: bool               # api_call parses without errors
    matched_index: int | None  # compat: index into APIDatabase.entries of the matched API
    correct: bool              # compat: matched an API of the gold domain
    hallucination: bool        # compat: no API matched
    error: bool                # compat: neither (another domain; TorchHub: no api_call)
    strict_correct: bool       # strict: the gold API's callee and reference arguments, exactly
    strict_hallucination: bool  # strict: no API of the database nor the gold API matches


def _api_data(gold: dict) -> dict:
    data = gold.get("api_data") or {}
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            return {}
    return data if isinstance(data, dict) else {}


def match_response(text: str, gold: dict, db: APIDatabase) -> AstResult:
    """Scores a response `text` to the question of `gold` against `db`, in both modes.

    `gold` is a record of `load_apibench` or any dict with ``api_data`` (a dict or its JSON)
    holding the gold ``domain`` and ``api_call``; a top-level ``domain`` / ``gold_api_call`` is
    used when ``api_data`` lacks them.
    """
    api_data = _api_data(gold)
    api_call = extract_api_call(text)
    parsed = api_call is not None and not _parse(api_call).has_error

    if api_call is None and db.rule == "torchhub":
        matched = None
        correct, hallucination = False, False
    else:
        matched = db.compat_match(text if api_call is None else api_call)
        gold_domain = api_data.get("domain", gold.get("domain"))
        correct = matched is not None and db.entries[matched].get("domain") == gold_domain
        hallucination = matched is None

    gold_call = api_data.get("api_call") or gold.get("gold_api_call") or ""
    reference = _strict_reference(gold_call, db.hub)
    strict_text = _strict_call_text(text)
    strict_correct = strict_hallucination = False
    if strict_text is None:
        strict_hallucination = True
    else:
        root = _parse(strict_text)
        calls = [] if root.has_error else [(c, _call_arguments(n, c)) for c, n in _calls(root)]
        normalized = _WHITESPACE.sub(" ", strict_text).strip()
        strict_correct = (any(reference.matches(*call) for call in calls)
                          if reference.callee is not None else normalized == reference.text)
        strict_hallucination = not strict_correct and not db.strict_match(calls, normalized)
    return AstResult(api_call=api_call, parsed=parsed, matched_index=matched, correct=correct,
                     hallucination=hallucination, error=not correct and not hallucination,
                     strict_correct=strict_correct, strict_hallucination=strict_hallucination)


def score(results: list[AstResult]) -> dict:
    """Fractions of all responses: compat accuracy, hallucination and error, strict accuracy and
    hallucination; ``n`` responses (0 gives zeros)."""
    n = len(results)

    def rate(flag: str) -> float:
        return sum(getattr(r, flag) for r in results) / n if n else 0.0

    return {"ast_accuracy": rate("correct"), "hallucination": rate("hallucination"),
            "ast_error": rate("error"), "strict_accuracy": rate("strict_correct"),
            "strict_hallucination": rate("strict_hallucination"), "n": n}
