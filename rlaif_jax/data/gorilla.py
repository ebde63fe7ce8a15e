"""Gorilla APIBench records: locating, parsing and formatting them.

An APIBench file is JSON Lines; each line holds `code` (the instruction and a Gorilla-style answer
as one text), `api_call` (the gold call), `provider` and `api_data` (the gold API database entry).
The `code` text comes in three shapes:

* Hugging Face / TensorFlow Hub: ``###Instruction: ...\\n###Output: <<<domain>>>: ...\\n
  <<<api_call>>>: ...`` with ``<<<section>>>:`` markers;
* TorchHub eval: ``###Instruction: ...\\n###Output: {'domain': ..., 'api_call': ..., ...}``;
* TorchHub train: ``{'Instruction': <unquoted text>, 'Output': {'domain': ..., ...}}``.

The dict-shaped answers are Python-like but often not valid Python (unescaped nested quotes, raw
newlines in strings), so `ast.literal_eval` is tried first and a tolerant parser that cuts the
text at the known keys is the fallback. Sections an answer lacks (some answers are free text,
truncated or absent) are filled from the record's gold metadata; see `parse_record`.
"""

from __future__ import annotations

import ast
import json
import logging
import pathlib
import re
import warnings

from rlaif_jax.data import jsonl
from rlaif_jax.data.jsonl import MalformedRecordError

logger = logging.getLogger(__name__)

HUBS = ("huggingface", "torchhub", "tensorflowhub")
DATA_DIR = pathlib.Path(__file__).resolve().parent / "gorilla"
PROMPT_TEMPLATE = "###Instruction: {instruction}\n###Output: "
SECTIONS = ("domain", "api_call", "api_provider", "explanation", "code")
# Columns of a parsed record, in this order; every value is a str.
RECORD_FIELDS = ("question_id", "hub", "source", "instruction", "domain", "api_call", "provider",
                 "explanation", "code", "gold_api_call", "api_data")
_APIBENCH_SPLITS = ("train", "eval")
_RECORD_KEYS = ("code", "api_call", "provider", "api_data")

_INSTRUCTION_HEADER = re.compile(r"###\s*Instruction\s*:", re.IGNORECASE)
_OUTPUT_HEADER = re.compile(r"###\s*Output\s*:", re.IGNORECASE)
# A line starting a new prompt part ends an answer (seen after the code in some records).
_ANY_HEADER = re.compile(r"^[ \t]*###\s*(?:Instruction|Input|Output)\s*:",
                         re.IGNORECASE | re.MULTILINE)
# ``<<<name>>>:``; the data also has two or more brackets a side and a missing colon.
_MARKER = re.compile(r"<{2,}\s*(" + "|".join(SECTIONS) + r")\s*>{2,}[ \t]*:?", re.IGNORECASE)
_DICT_KEY = {name: re.compile(rf"""['"]{name}['"]\s*:""") for name in SECTIONS}
_DICT_RECORD = re.compile(
    r"""\A\s*\{\s*['"]Instruction['"]\s*:(?P<instruction>.*?)"""
    r"""(?:,\s*['"]Input['"]\s*:(?P<input>.*?))?"""
    r""",\s*['"]Output['"]\s*:(?P<output>.*?)\}?\s*\Z""",  # truncated records lack the "}"
    re.DOTALL)
_FENCED_CODE = re.compile(r"```[\w+-]*[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _check_hub(hub: str) -> None:
    """ValueError unless `hub` is one of `HUBS`."""
    if hub not in HUBS:
        raise ValueError(f"unknown hub {hub!r}; expected one of {HUBS}")


def apibench_path(hub: str, split: str) -> pathlib.Path:
    """The vendored APIBench file of `hub` for `split` ("train" or "eval")."""
    _check_hub(hub)
    if split not in _APIBENCH_SPLITS:
        raise ValueError(f"unknown APIBench split {split!r}; expected one of {_APIBENCH_SPLITS}")
    path = DATA_DIR / "apibench" / f"{hub}_{split}.json"
    if not path.is_file():
        shipped = sorted(p.name for p in (DATA_DIR / "apibench").glob("*.json"))
        raise FileNotFoundError(
            f"the APIBench {hub} {split} file is not shipped with rlaif_jax (looked for {path}; "
            f"shipped: {', '.join(shipped)}); give the path of a local copy in the data source")
    return path


def api_db_path(hub: str) -> pathlib.Path:
    """The vendored Gorilla API database (JSONL) of `hub`."""
    _check_hub(hub)
    path = DATA_DIR / "api" / f"{hub}_api.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"the {hub} API database is missing: {path}")
    return path


def _decode_string_body(body: str, quote: str) -> str:
    """The value of a Python string literal's body whose inner quotes may be unescaped."""
    escaped = re.sub(r"(?<!\\)" + quote, "\\" + quote, body).replace("\n", "\\n")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes such as \d in regexes
            value = ast.literal_eval(quote + escaped + quote)
    except (ValueError, SyntaxError):
        return body
    return value if isinstance(value, str) else body


def _clean_value(raw: str) -> str:
    """A dict value cut out of Python-like text: unquote it and drop trailing separators."""
    text = raw.strip()
    quote = text[:1]
    if quote not in ("'", '"'):
        return re.sub(r"[\s,}]*\Z", "", text)
    # The closing quote is the last one followed by a separator, so a value with unescaped quotes
    # inside, or with unknown keys after it, is still cut in the right place.
    closing = list(re.finditer(re.escape(quote) + r"(?=\s*(?:[,}]|\Z))", text[1:]))
    if closing:
        body = text[1:closing[-1].start() + 1]
    else:  # truncated in the file, or closed by the other quote character
        body = re.sub(r"""['"]?[\s,}]*\Z""", "", text[1:])
    return _decode_string_body(body, quote).strip()


def _find_sections(obj) -> dict:
    """The first value of each section key in a (possibly nested) decoded dict."""
    found = {}
    pending = [obj]
    while pending:
        node = pending.pop(0)
        for name in SECTIONS:
            if name in node and name not in found:
                found[name] = str(node[name]).strip()
        pending.extend(v for v in node.values() if isinstance(v, dict))
    return found


def _parse_dict_text(text: str) -> tuple[dict, bool]:
    """Sections of a Python-dict-like answer and whether the tolerant parser was needed.

    Raw newlines are escaped before `ast.literal_eval`, as the files put them inside strings.
    The fallback finds the section keys in `SECTIONS` order and cuts the text between them.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ast.literal_eval(text.strip().replace("\n", "\\n"))
    except (ValueError, SyntaxError, TypeError, RecursionError):
        value = None
    if isinstance(value, dict):
        return _find_sections(value), False
    spans = []
    pos = 0
    for name in SECTIONS:
        match = _DICT_KEY[name].search(text, pos)
        if match:
            spans.append((name, match.start(), match.end()))
            pos = match.end()
    found = {}
    for i, (name, _, value_start) in enumerate(spans):
        value_end = spans[i + 1][1] if i + 1 < len(spans) else len(text)
        found[name] = _clean_value(text[value_start:value_end])
    return found, True


def _parse_marked_text(text: str) -> dict:
    """Sections of a ``<<<section>>>: value`` answer, up to a ``###`` header after the first."""
    markers = list(_MARKER.finditer(text))
    if not markers:
        return {}
    header = _ANY_HEADER.search(text, markers[0].end())
    answer_end = header.start() if header else len(text)
    markers = [m for m in markers if m.start() < answer_end]
    found = {}
    for i, match in enumerate(markers):
        end = markers[i + 1].start() if i + 1 < len(markers) else answer_end
        found.setdefault(match.group(1).lower(), text[match.end():end].strip())
    return found


def _answer_sections(answer: str) -> tuple[dict, bool]:
    """Sections of a record's answer text and whether the tolerant dict parser was needed."""
    if answer.lstrip().startswith("{"):
        return _parse_dict_text(answer)
    return _parse_marked_text(answer), False


def parse_response(text: str) -> dict:
    """The Gorilla sections present in an answer text (keys from `SECTIONS`).

    Accepts the ``<<<section>>>:`` format written by `format_target` (tolerant of missing
    sections, extra whitespace, odd bracket counts, and text after a ``###Instruction:``/``Input:``/
    ``Output:`` line that follows the sections) and the dict format of the TorchHub files. Absent
    sections are absent from the result.
    """
    return _answer_sections(text)[0]


def _split_code(code: str) -> tuple[str, str]:
    """(instruction, answer text) of a record's `code`; an ``Input`` part stays in the instruction.

    The answer is "" when the text has no output part.
    """
    match = _DICT_RECORD.match(code)
    if match:
        instruction = _clean_value(match["instruction"])
        if match["input"] is not None:
            instruction += "\n###Input: " + _clean_value(match["input"])
        return instruction, match["output"]
    start = _INSTRUCTION_HEADER.search(code)
    if not start:
        raise ValueError("code text has neither an '###Instruction:' header nor an "
                         "{'Instruction': ...} dict")
    end = _OUTPUT_HEADER.search(code, start.end())
    if not end:
        return code[start.end():].strip(), ""
    return code[start.end():end.start()].strip(), code[end.end():]


def _parse(obj: dict, hub: str, question_id: int, source: str) -> tuple[dict, bool]:
    """`parse_record`, also telling whether the tolerant dict parser was needed."""
    _check_hub(hub)
    if not isinstance(obj, dict):
        raise ValueError(f"a record must be a JSON object, got {type(obj).__name__}")
    missing = [key for key in _RECORD_KEYS if key not in obj]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    for key in ("code", "api_call", "provider"):
        if not isinstance(obj[key], str):
            raise ValueError(f"{key!r} must be a string, got {type(obj[key]).__name__}")
    if not isinstance(obj["api_data"], dict):
        raise ValueError(f"'api_data' must be an object, got {type(obj['api_data']).__name__}")
    instruction, answer = _split_code(obj["code"])
    if not instruction:
        raise ValueError("empty instruction")
    sections, tolerant = _answer_sections(answer)
    api_call = sections.get("api_call") or obj["api_call"].strip()
    if not api_call:
        raise ValueError("empty api_call (neither the answer nor the record has one)")
    fenced = _FENCED_CODE.search(answer)
    record = {
        "question_id": str(question_id),
        "hub": hub,
        "source": source,
        "instruction": instruction,
        "domain": sections.get("domain") or str(obj["api_data"].get("domain") or "").strip(),
        "api_call": api_call,
        "provider": sections.get("api_provider") or obj["provider"].strip(),
        "explanation": sections.get("explanation", ""),
        "code": sections.get("code") or (fenced[1].strip() if fenced else "") or api_call,
        "gold_api_call": obj["api_call"].strip(),
        "api_data": json.dumps(obj["api_data"], ensure_ascii=False, separators=(",", ":")),
    }
    return record, tolerant


def parse_record(obj: dict, hub: str, *, question_id: int = 0, source: str = "") -> dict:
    """One decoded APIBench line as a record with the `RECORD_FIELDS` columns (all str).

    Sections come from the answer in `code`; those it lacks are filled from the record: domain
    from ``api_data["domain"]``, api_call from the gold ``api_call``, provider from ``provider``,
    code from a fenced code block in the answer or else the api_call; explanation stays "".
    Raises ValueError naming the reason for a record without the APIBench keys, without an
    instruction, or without any api_call.
    """
    return _parse(obj, hub, question_id, source)[0]


def load_apibench(path, hub: str, on_error: str = "raise") -> tuple[list[dict], int]:
    """Parsed records of an APIBench JSONL file, and how many malformed lines were skipped.

    `question_id` is the 1-based line number and `source` the file name. With on_error="raise" the
    first malformed line raises `MalformedRecordError`; with "skip" each one is logged as a warning
    and counted. Blank lines are ignored.
    """
    _check_hub(hub)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = pathlib.Path(path)
    records, skipped, tolerant = [], 0, 0
    for lineno, line in jsonl.nonblank_lines(path):
        try:
            record, used_tolerant = _parse(jsonl.decode_line(path, lineno, line), hub, lineno,
                                           path.name)
        except ValueError as e:
            error = e if isinstance(e, MalformedRecordError) else MalformedRecordError(
                path, lineno, str(e))
            if on_error == "raise":
                raise error from e
            logger.warning("skipping malformed record %s", error)
            skipped += 1
            continue
        records.append(record)
        tolerant += used_tolerant
    logger.debug("%s: %d records (%d via the tolerant dict parser), %d skipped",
                 path, len(records), tolerant, skipped)
    return records, skipped


def load_api_db(path) -> list[dict]:
    """The entries of a Gorilla API database (JSONL, one JSON object a line)."""
    return [entry for _, entry in jsonl.read_jsonl(path)]


def format_prompt(instruction: str, template: str = PROMPT_TEMPLATE) -> str:
    """The model prompt for an instruction."""
    return template.format(instruction=instruction)


def format_target(rec: dict, sections=SECTIONS) -> str:
    """The Gorilla answer ``<<<section>>>: value`` lines of `rec` for `sections`, in `SECTIONS`
    order; api_provider is taken from ``rec["provider"]``."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {sorted(unknown)}; expected some of {SECTIONS}")
    return "\n".join(f"<<<{name}>>>: {rec['provider' if name == 'api_provider' else name]}"
                     for name in SECTIONS if name in sections)
