"""AST matching of API calls: Gorilla-compatible scores (quirks included) and the strict variant."""

import json
import pathlib
import re

import pytest

from rlaif_jax.data import gorilla
from rlaif_jax.evaluation.ast_match import (HUB_OF_PROVIDER, APIDatabase, AstResult,
                                            extract_api_call, match_response, score)

QUIRKS_DB = pathlib.Path(__file__).resolve().parent / "fixtures" / "ast" / "quirks_api.jsonl"


@pytest.fixture(scope="module")
def dbs():
    return {hub: APIDatabase.load(hub) for hub in gorilla.HUBS}


@pytest.fixture(scope="module")
def records():
    return {hub: gorilla.load_apibench(gorilla.apibench_path(hub, "eval"), hub)[0]
            for hub in ("huggingface", "torchhub")}


def _response(api_call: str, domain: str = "Some domain", provider: str = "Some provider") -> str:
    """A Gorilla-format answer whose api_call section is `api_call`."""
    return (f"<<<domain>>>: {domain}\n<<<api_call>>>: {api_call}\n<<<api_provider>>>: {provider}\n"
            f"<<<explanation>>>: Load it.\n<<<code>>>: model = {api_call}")


def _gold(entry: dict) -> dict:
    """A gold record for an API database entry, as the brief of a TF Hub question would be."""
    return {"domain": entry["domain"], "api_data": entry}


def _index(db: APIDatabase, api_call: str) -> int:
    return next(i for i, e in enumerate(db.entries) if e.get("api_call") == api_call)


# --- gold answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("hub, compat_min, strict_min", [
    # Measured: compat 0.931 / strict 0.928 on the 911 Hugging Face answers. The 63 compat misses
    # are Gorilla's own: 18 `joblib.load(...)` regression answers match the first joblib API of the
    # database, a classification one (first match wins); 9 `pipeline('question-answering',
    # model=X)` match the earlier `pipeline('question-answering')` of Document QA (substring test);
    # 17 gold APIs cannot be matched (no arguments, as `S2THubInterface()`, not a call, as
    # `./run.sh ...`, or absent from the database); the other 19 answers name another API than
    # their gold `api_data` (typos such as `tiny-roberta`), repeat an API listed twice under two
    # domains, or fall through: `Swin2SRForConditionalGeneration.from_pretrained('conde/...')`
    # matches `pipeline('ner')`, as 'ner' is in 'Generation'. Strict misses are answers naming
    # another API plus gold calls that are themselves broken (`pipeline(sentiment-analysis, ...)`).
    ("huggingface", 0.92, 0.92),
    # Measured: compat 0.995 / strict 0.957 on the 186 TorchHub answers. Compat misses one answer
    # (`torch.hub.load('mit-han-lab/ProxylessNAS', platform_type, ...)`, whose model is a
    # variable); strict also misses MEAL-V2 answers with three positional arguments where the gold
    # call says `model='mealv2_...'`, and one answer naming another model than its gold record.
    ("torchhub", 0.98, 0.94),
])
def test_gold_answers_score_high(records, dbs, hub, compat_min, strict_min):
    results = [match_response(gorilla.format_target(r), r, dbs[hub]) for r in records[hub]]
    scores = score(results)
    assert scores["n"] == len(records[hub])
    assert scores["ast_accuracy"] >= compat_min
    assert scores["strict_accuracy"] >= strict_min
    assert scores["hallucination"] <= 0.04 and scores["strict_hallucination"] <= 0.04
    assert sum(r.parsed for r in results) / len(results) >= 0.98
    for key in ("ast_accuracy", "hallucination", "ast_error"):
        assert 0.0 <= scores[key] <= 1.0
    total = scores["ast_accuracy"] + scores["hallucination"] + scores["ast_error"]
    assert total == pytest.approx(1)


# --- hallucinations and errors -----------------------------------------------------------------


def test_invented_model_ids_are_hallucinations(records, dbs):
    cases = []
    for rec in records["huggingface"]:
        call = json.loads(rec["api_data"])["api_call"]
        if re.fullmatch(r"AutoModel\w*\.from_pretrained\('[^']+'\)", call):
            invented = re.sub(r"'[^']+'", "'acme-labs/imaginary-model-7b'", call)
            cases.append((rec, invented, "huggingface"))
    for rec in records["torchhub"][:40]:
        call = "torch.hub.load('acme-labs/imaginary-repo', 'imaginary_net', pretrained=True)"
        cases.append((rec, call, "torchhub"))
    assert len(cases) > 60
    for rec, call, hub in cases:
        result = match_response(_response(call), rec, dbs[hub])
        assert result.hallucination and result.strict_hallucination, call
        assert not result.correct and not result.error and result.matched_index is None


def test_real_api_of_another_domain_is_an_error(records, dbs):
    db = dbs["huggingface"]
    gold = records["huggingface"][0]
    other = _index(db, "pipeline('fill-mask', model='bert-base-uncased')")
    assert db.entries[other]["domain"] != json.loads(gold["api_data"])["domain"]
    result = match_response(_response(db.entries[other]["api_call"]), gold, db)
    assert result.matched_index == other
    assert result.error and not result.correct and not result.hallucination
    assert not result.strict_correct and not result.strict_hallucination


def test_any_api_of_the_gold_domain_is_correct_in_compat_mode_only(dbs):
    db = dbs["huggingface"]
    gold = _gold(db.entries[_index(db, "pipeline('fill-mask', model='bert-base-uncased')")])
    text = _response("pipeline('fill-mask', model='distilroberta-base')")
    result = match_response(text, gold, db)
    assert result.correct  # the right task with another model
    assert not result.strict_correct and not result.strict_hallucination


# --- extraction --------------------------------------------------------------------------------


def test_extraction_of_well_formed_answers():
    call = "pipeline('fill-mask', model='bert-base-uncased')"
    assert extract_api_call(_response(call)) == call
    one_line = f"<<<domain>>>: NLP, <<<api_call>>>: {call}, <<<api_provider>>>: Hugging Face"
    assert extract_api_call(one_line) == call  # what follows the last ')' goes
    assert extract_api_call(f"{{'domain': 'x', 'api_call': \"{call}\", 'api_provider': 'y'}}") \
        == '"' + call  # dict-style answers keep their opening quote


def test_extraction_edge_cases():
    assert extract_api_call("I am not sure which model would fit.") is None
    assert extract_api_call("") is None
    # No ')': the section's last character is dropped instead.
    unclosed = "<<<api_call>>>: AutoModel.from_pretrained('bert-base\n<<<api_provider>>>: HF"
    assert extract_api_call(unclosed) == "AutoModel.from_pretrained('bert-base\n<<"
    # The character after ':' is assumed to be a space; without ':' the first two go.
    assert extract_api_call("<<<api_call>>>:pipeline('ner')\n") == "ipeline('ner')"
    assert extract_api_call("api_call = pipeline('ner')") == " pipeline('ner')"
    # Only the text up to the next "api_call" or "api_provider" is used.
    assert extract_api_call("api_call: f(1) api_call: g(2)") == "f(1)"
    multi = "pipeline(\n    'fill-mask',\n    model='bert-base-uncased',\n)"
    assert extract_api_call(_response(multi)) == multi


def test_multi_line_call_matches(dbs):
    db = dbs["huggingface"]
    gold = _gold(db.entries[_index(db, "pipeline('fill-mask', model='bert-base-uncased')")])
    text = _response("pipeline(\n    'fill-mask',\n    model='bert-base-uncased',\n)")
    result = match_response(text, gold, db)
    assert result.parsed and result.correct and result.strict_correct


def test_missing_parenthesis(dbs):
    db = dbs["huggingface"]
    gold = _gold(db.entries[0])
    text = _response("AutoModel.from_pretrained('YituTech/conv-bert-base'")
    result = match_response(text, gold, db)
    assert not result.parsed
    assert result.correct  # tree-sitter recovers the call and the substring test passes
    assert not result.strict_correct and result.strict_hallucination  # not valid Python


def test_free_text_without_api_call(dbs):
    text = "You could load AutoModel.from_pretrained('YituTech/conv-bert-base') for this."
    hf = dbs["huggingface"]
    result = match_response(text, _gold(hf.entries[0]), hf)
    assert result.api_call is None and not result.parsed
    assert result.correct  # Hugging Face and TF Hub match the whole response
    assert result.strict_hallucination and not result.strict_correct
    th = dbs["torchhub"]
    text = "torch.hub.load('pytorch/vision', 'resnet18')"
    result = match_response(text, _gold(th.entries[0]), th)
    assert result.error and not result.hallucination  # TorchHub: neither correct nor hallucination
    assert result.strict_hallucination


# --- quirks kept in compat mode, fixed in strict mode -----------------------------------------


def test_callee_fallthrough_quirk(dbs):
    db = dbs["huggingface"]
    assert db.entries[0]["api_call"] == "AutoModel.from_pretrained('YituTech/conv-bert-base')"
    gold = _gold(db.entries[0])
    # No sub-tree is headed by `AutoModel.from_pretrained`, so Gorilla looks for the arguments in
    # the last sub-tree of its traversal, here the string argument: a made-up function matches.
    made_up = match_response(_response("load_model('YituTech/conv-bert-base')"), gold, db)
    assert made_up.matched_index == 0 and made_up.correct
    assert not made_up.strict_correct and made_up.strict_hallucination
    real = match_response(_response(db.entries[0]["api_call"]), gold, db)
    assert real.correct and real.strict_correct


def test_substring_and_first_match_quirks(dbs):
    db = dbs["huggingface"]
    bert = _index(db, "pipeline('fill-mask', model='bert-base-uncased')")
    distil = _index(db, "pipeline('fill-mask', model='distilbert-base-uncased')")
    assert bert < distil
    text = _response("pipeline('fill-mask', model='distilbert-base-uncased')")
    result = match_response(text, _gold(db.entries[distil]), db)
    assert result.matched_index == bert  # 'bert-base-uncased' is in 'distilbert-base-uncased'
    assert result.strict_correct
    assert not match_response(text, _gold(db.entries[bert]), db).strict_correct


def test_quirks_on_a_small_database():
    db = APIDatabase.load("hf", QUIRKS_DB)  # unusable entries must not break loading
    assert db.hub == "huggingface" and len(db.entries) == 9
    short, long_, quoted, shell = (_gold(db.entries[i]) for i in range(4))
    # First match wins with substring tests: the long name is scored as the short one, an error.
    result = match_response(_response("pipeline('x', model='org/bert-base-uncased')"), long_, db)
    assert result.matched_index == 0 and result.error
    assert result.strict_correct
    result = match_response(_response("pipeline('x', model='org/bert-base')"), short, db)
    assert result.correct and result.strict_correct
    # Only single quotes are stripped from the database's values.
    result = match_response(_response("AutoModel.from_pretrained('org/double-quoted')"), quoted, db)
    assert result.hallucination and result.strict_correct
    result = match_response(_response('AutoModel.from_pretrained("org/double-quoted")'), quoted, db)
    assert result.correct and result.strict_correct
    # An API that is not a call is never matched in compat mode; strict compares the text.
    result = match_response(_response("./run.sh --download_model org/shell"), shell, db)
    assert result.hallucination and result.strict_correct
    # No-argument APIs are never matched in compat mode either.
    result = match_response(_response("SentimentModel()"), _gold(db.entries[8]), db)
    assert result.hallucination and result.strict_correct


def test_keyword_and_positional_forms_are_the_same_parameter_in_strict_mode(dbs):
    th = dbs["torchhub"]
    entry = th.entries[0]
    assert entry["api_call"] == ("torch.hub.load(repo_or_dir='facebookresearch/pytorchvideo', "
                                 "model='slow_r50', pretrained=True)")
    for call in ["torch.hub.load('facebookresearch/pytorchvideo', 'slow_r50', pretrained=True)",
                 'torch.hub.load("facebookresearch/pytorchvideo", model="slow_r50")',
                 "model = torch.hub.load(repo_or_dir='facebookresearch/pytorchvideo', "
                 "model='slow_r50')"]:
        assert match_response(_response(call), _gold(entry), th).strict_correct, call
    wrong = "torch.hub.load('facebookresearch/pytorchvideo', 'slow_r50_extra')"
    result = match_response(_response(wrong), _gold(entry), th)
    assert result.correct  # compat: substring of the arguments
    assert not result.strict_correct and result.strict_hallucination


# --- TensorFlow Hub ----------------------------------------------------------------------------


def test_tensorflowhub_correct_hallucination_error(dbs):
    db = dbs["tensorflowhub"]
    interpolation = _index(db, "hub.load('https://tfhub.dev/google/two-frame-vgg/1')")
    pose = _index(db, "hub.load('https://tfhub.dev/google/movenet/singlepose/lightning/4')")
    gold = _gold(db.entries[interpolation])
    assert db.entries[pose]["domain"] != gold["domain"]

    text = _response("model = hub.load('https://tfhub.dev/google/two-frame-vgg/1')",
                     provider="TensorFlow Hub")
    correct = match_response(text, gold, db)
    assert correct.matched_index == interpolation and correct.correct and correct.strict_correct

    invented = match_response(_response("hub.load('https://tfhub.dev/acme/imaginary-model/1')"),
                              gold, db)
    assert invented.hallucination and invented.strict_hallucination

    other = match_response(_response(db.entries[pose]["api_call"]), gold, db)
    assert other.matched_index == pose and other.error
    assert not other.strict_correct and not other.strict_hallucination


def test_tensorflowhub_strict_reference_is_the_hub_call(dbs):
    db = dbs["tensorflowhub"]
    handle = "https://tfhub.dev/google/imagenet/mobilenet_v2_130_224/classification/4"
    gold = _gold(db.entries[_index(db, f"tf.keras.Sequential([hub.KerasLayer('{handle}')])")])
    for call in [f"hub.KerasLayer('{handle}')",
                 f'hub.KerasLayer(handle="{handle}", trainable=False)',
                 f"tf.keras.Sequential([hub.KerasLayer('{handle}'), tf.keras.layers.Dense(3)])"]:
        result = match_response(_response(call), gold, db)
        assert result.correct and result.strict_correct, call
    result = match_response(_response(f"hub.load('{handle}')"), gold, db)
    assert not result.strict_correct and not result.strict_hallucination  # another hub.* API


# --- API ---------------------------------------------------------------------------------------


def test_providers_and_score():
    assert {HUB_OF_PROVIDER[h] for h in gorilla.HUBS} == set(gorilla.HUBS)
    assert HUB_OF_PROVIDER["th"] == "torchhub"
    with pytest.raises(ValueError, match="unknown provider"):
        APIDatabase.load("pypi")
    assert score([])["n"] == 0 and score([])["ast_accuracy"] == 0.0
    results = [AstResult("f()", True, 0, True, False, False, True, False),
               AstResult(None, False, None, False, True, False, False, True),
               AstResult("g()", True, 3, False, False, True, False, False),
               AstResult("h()", True, 4, True, False, False, False, False)]
    assert score(results) == {"ast_accuracy": 0.5, "hallucination": 0.25, "ast_error": 0.25,
                              "strict_accuracy": 0.25, "strict_hallucination": 0.25, "n": 4}


def test_gold_record_without_api_data_and_odd_texts(dbs):
    db = dbs["huggingface"]
    for text in ["", "api_call", "<<<api_call>>>: )))(((", "<<<api_call>>>: " + "f(" * 300,
                 "<<<api_call>>>: pipeline(model=pipeline(model=pipeline()))"]:
        result = match_response(text, {}, db)
        assert not result.correct and not result.strict_correct


# --- Gorilla's released responses -------------------------------------------------------------

RELEASED = pathlib.Path(__file__).resolve().parent / "data" / "gorilla_responses"


def _outcomes(hub: str, path: pathlib.Path, db: APIDatabase, records) -> str:
    gold = {int(r["question_id"]): r for r in records}
    out = []
    for line in path.read_text().splitlines():
        response = json.loads(line)
        result = match_response(response["text"], gold[response["question_id"]], db)
        out.append("C" if result.correct else "H" if result.hallucination else "E")
    return "".join(out)


def test_released_responses_score_as_gorilla_scripts_do(records, dbs):
    """Expected counts: Gorilla's own ast_eval_th.py / ast_eval_hf.py re-run on these lines with
    the 2023 parser stack (see tests/data/gorilla_responses/ORIGIN.md). The paper's TorchHub
    BM25 number (37.63 %) is matched by the Hugging Face script's argument rule (every argument:
    38.17 %, one response apart), not by the released TorchHub script (44.62 %)."""
    th = _outcomes("torchhub", RELEASED / "torchhub_Gorilla_FT_bm25.api_call.jsonl",
                   dbs["torchhub"], records["torchhub"])
    assert len(th) == 186
    assert (th.count("C"), th.count("H"), th.count("E")) == (83, 32, 71)
    every_argument = APIDatabase.load("torchhub", rule="huggingface")
    assert every_argument.rule == "huggingface" and dbs["torchhub"].rule == "torchhub"
    th_hf = _outcomes("torchhub", RELEASED / "torchhub_Gorilla_FT_bm25.api_call.jsonl",
                      every_argument, records["torchhub"])
    assert (th_hf.count("C"), th_hf.count("H"), th_hf.count("E")) == (71, 58, 57)
    hf_file = RELEASED / "huggingface_Gorilla_RT_gpt_index.first12.api_call.jsonl"
    hf = _outcomes("huggingface", hf_file, dbs["huggingface"], records["huggingface"])
    # Gorilla's script, per line: Q1-Q8 name real APIs of other domains (errors), Q9-Q11 the
    # gold text-to-video domain, Q12 pipeline('question-answering', ...) of another domain.
    assert hf == "EEEEEEEECCCE", hf


def test_released_zero_shot_responses_score_as_measured(records, dbs):
    """Gorilla's released zero-shot responses of the retriever-aware (RT) models (ORIGIN.md).
    TorchHub: no response has an api_call, so the released TorchHub script scores every one as
    an error and the Hugging Face script (whole response matched) as a hallucination, the
    paper's 0 % accuracy / ~100 % hallucination for this model without documents. Hugging Face:
    904 responses (ids 117, 150, 204, 339, 414, 425, 800 absent), hallucination 58/904 = 6.42 %."""
    th_file = RELEASED / "torchhub_Gorilla_RT_0_shot.jsonl"
    assert _outcomes("torchhub", th_file, dbs["torchhub"], records["torchhub"]) == "E" * 186
    every_argument = APIDatabase.load("torchhub", rule="huggingface")
    assert _outcomes("torchhub", th_file, every_argument, records["torchhub"]) == "H" * 186
    hf = _outcomes("huggingface", RELEASED / "huggingface_Gorilla_RT_0_shot.api_call.jsonl",
                   dbs["huggingface"], records["huggingface"])
    assert (len(hf), hf.count("C"), hf.count("H"), hf.count("E")) == (904, 809, 58, 37)
