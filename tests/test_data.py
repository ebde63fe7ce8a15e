"""Tests of the Gorilla APIBench data layer: parsing, loading, formatting and splits."""

import json
import logging
import pathlib

import pytest
from ml_collections import ConfigDict

from rlaif_jax.data import gorilla
from rlaif_jax.data.splits import build_splits, split_summary

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
REAL_FILES = {  # (hub, split): lines
    ("huggingface", "eval"): 911,
    ("torchhub", "train"): 837,
    ("torchhub", "eval"): 186,
}


@pytest.fixture(scope="module")
def real_records():
    """{(hub, split): records} of the three vendored APIBench files, loaded once."""
    loaded = {}
    for hub, split in REAL_FILES:
        records, skipped = gorilla.load_apibench(gorilla.apibench_path(hub, split), hub)
        assert skipped == 0
        loaded[hub, split] = records
    return loaded


def _write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _hf_line(instruction="Find a model.", api_call="pipeline('x', model='m')", **overrides):
    """A JSON line in the Hugging Face format."""
    obj = {
        "code": (f"###Instruction: {instruction}\n###Output: <<<domain>>>: NLP\n"
                 f"<<<api_call>>>: {api_call}\n<<<api_provider>>>: Hugging Face Transformers\n"
                 f"<<<explanation>>>: Load it.\n<<<code>>>: from transformers import pipeline"),
        "api_call": api_call,
        "provider": "Hugging Face Transformers",
        "api_data": {"domain": "NLP", "api_call": api_call},
    }
    obj.update(overrides)
    return json.dumps(obj)


# --- the three real formats ------------------------------------------------------------------


def test_huggingface_line_1(real_records):
    rec = real_records["huggingface", "eval"][0]
    assert rec["question_id"] == "1"
    assert rec["hub"] == "huggingface" and rec["source"] == "huggingface_eval.json"
    assert rec["instruction"] == (
        "Design a feature for a social media website to recommend articles to users based on how "
        "similar the articles are to their previously liked articles.")
    assert rec["domain"] == "Natural Language Processing Sentence Similarity"
    assert rec["api_call"] == "AutoModel.from_pretrained('princeton-nlp/unsup-simcse-roberta-base')"
    assert rec["provider"] == "Hugging Face Transformers"
    assert rec["explanation"].startswith("1. We first import the necessary classes")
    assert rec["explanation"].endswith("the new article is recommended to the user.")
    assert rec["code"] == (
        "from transformers import AutoTokenizer, AutoModel\n"
        "tokenizer = AutoTokenizer.from_pretrained('princeton-nlp/unsup-simcse-roberta-base')\n"
        "model = AutoModel.from_pretrained('princeton-nlp/unsup-simcse-roberta-base')")
    assert rec["gold_api_call"] == rec["api_call"]
    assert json.loads(rec["api_data"])["api_name"] == "princeton-nlp/unsup-simcse-roberta-base"


def test_torchhub_train_line_1(real_records):
    rec = real_records["torchhub", "train"][0]
    assert rec["question_id"] == "1" and rec["source"] == "torchhub_train.json"
    assert rec["instruction"] == (
        "I need an API that can estimate the relative depth of objects from a single image. "
        "The output should be an inverse depth map.")
    assert rec["domain"] == "Classification"
    assert rec["api_call"] == (
        "model = torch.hub.load('intel-isl/MiDaS', 'DPT_Hybrid', pretrained=True)")
    assert rec["provider"] == "PyTorch"
    assert rec["explanation"] == (
        "Load the pretrained MiDaS model for estimating relative depth from a single image, which "
        "outputs an inverse depth map.")
    assert rec["code"] == (
        'import torch\nmodel = torch.hub.load("intel-isl/MiDaS", "DPT_Hybrid", pretrained=True)')
    assert rec["gold_api_call"] == (
        "torch.hub.load(repo_or_dir='intel-isl/MiDaS', model='DPT_Hybrid', pretrained=True)")


def test_torchhub_eval_line_1_nested_quotes(real_records):
    rec = real_records["torchhub", "eval"][0]
    assert rec["question_id"] == "1" and rec["source"] == "torchhub_eval.json"
    assert rec["instruction"] == (
        "What is an API that can be used to classify sports activities in videos?")
    assert rec["domain"] == "Video Classification"
    assert rec["api_call"] == (
        "model = torch.hub.load('facebookresearch/pytorchvideo', 'slow_r50', pretrained=True)")
    assert rec["provider"] == "PyTorch"
    assert rec["explanation"] == (
        "Load the pretrained 3D ResNet model from PyTorch for video classification, suitable for "
        "classifying sports activities in videos.")
    assert rec["code"] == ("import torch\nmodel = torch.hub.load('facebookresearch/pytorchvideo', "
                           "'slow_r50', pretrained=True)")


def test_tensorflowhub_fixture():
    records, skipped = gorilla.load_apibench(FIXTURES / "tensorflowhub_sample.json",
                                             "tensorflowhub")
    assert skipped == 0 and len(records) == 1
    rec = records[0]
    url = "https://tfhub.dev/google/tf2-preview/gnews-swivel-20dim/1"
    assert rec["hub"] == "tensorflowhub" and rec["question_id"] == "1"
    assert rec["instruction"].startswith("I need to turn short news headlines")
    assert rec["domain"] == "Text language model"
    assert rec["api_call"] == rec["gold_api_call"] == f"hub.load('{url}')"
    assert rec["provider"] == "TensorFlow Hub"
    assert rec["explanation"].startswith("1. Import tensorflow_hub.\n2.")
    assert rec["code"].startswith("import tensorflow_hub as hub\nembed = hub.load(")
    api_db = gorilla.load_api_db(gorilla.api_db_path("tensorflowhub"))
    assert json.loads(rec["api_data"]) == api_db[0]


@pytest.mark.parametrize("hub,split", list(REAL_FILES))
def test_every_real_line_parses(real_records, hub, split):
    records = real_records[hub, split]
    assert len(records) == REAL_FILES[hub, split]
    assert [r["question_id"] for r in records] == [str(i) for i in range(1, len(records) + 1)]
    for rec in records:
        assert tuple(rec) == gorilla.RECORD_FIELDS
        assert all(isinstance(v, str) for v in rec.values())
        for key in ("instruction", "domain", "api_call", "code", "provider", "gold_api_call"):
            assert rec[key] and rec[key] == rec[key].strip(), (rec["question_id"], key)
        assert "###Output" not in rec["instruction"]


@pytest.mark.parametrize("hub,split,line,field,expected", [
    # No ###Output at all: the sections come from the gold metadata.
    ("huggingface", "eval", 800, "api_call",
     "SentenceTransformer('sentence-transformers/multi-qa-mpnet-base-dot-v1')"),
    ("huggingface", "eval", 800, "explanation", ""),
    # "### Instruction:" with a space.
    ("huggingface", "eval", 117, "api_call",
     "VideoMAEForPreTraining.from_pretrained('MCG-NJU/videomae-base')"),
    # "<<<<<<<code>>>>:" marker.
    ("huggingface", "eval", 327, "code", "from huggingface_hub import hf_hub_download\n\n"
     "repo_id = \"JorisCos/ConvTasNet_Libri2Mix_sepclean_8k\"\n"
     "model_files = hf_hub_download(repo_id=repo_id)\n\n# Load the model and use it to process the "
     "podcast audio file to separate speech and noise. Save the clean audio as a new file."),
    # Free-text answer: code from its fenced block.
    ("huggingface", "eval", 617, "code", "from transformers import AutoModelForAudioToAudio\n\n"
     "audio_enhancer_model = AutoModelForAudioToAudio.from_pretrained("
     "'JorisCos/DCCRNet_Libri1Mix_enhsingle_16k')\n\n"
     "# Enhance the audio quality of the podcast_file_path\n"
     "enhanced_audio = audio_enhancer_model.enhance_audio('podcast_file_path')\n\n"
     "# Save the enhanced audio to a new file\n"
     "enhanced_audio.export('enhanced_podcast_file_path', format='mp3')"),
    # The instruction keeps its ###Input part.
    ("torchhub", "train", 357, "instruction",
     "Detect if a given pair of sentences about artificial intelligence has any contradiction.\n"
     "###Input: Roberta is a heavily optimized version of BERT. Roberta is not very optimized."),
    # Record cut off in the middle of the code string.
    ("torchhub", "train", 397, "code", "import torch\nmodel = torch.h"),
    # Sections nested in {'solution': {...}}.
    ("torchhub", "train", 222, "api_call",
     "torch.hub.load('huawei-noah/Efficient-AI-Backbones', 'snnmlp_t', pretrained=True)"),
    # api_call opened with " and closed with '.
    ("torchhub", "eval", 9, "api_call",
     "torch.hub.load(repo_or_dir='pytorch/vision', model='resnet34', pretrained=True)"),
    # An unknown key after 'code'.
    ("torchhub", "eval", 7, "code", "import torch\nmodel = torch.hub.load("
     "'PingoLH/Pytorch-HarDNet', 'hardnet68ds', pretrained=True)"),
])
def test_data_quirks(real_records, hub, split, line, field, expected):
    assert real_records[hub, split][line - 1][field] == expected


def test_answer_after_code_is_cut(real_records):
    rec = real_records["huggingface", "eval"][49]  # line 50 repeats ###Input/###Output after code
    assert rec["code"].endswith("res = nlp(QA_input)")


# --- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize("bad_line,reason", [
    ('{"code": "###Instruction: x", "api_call": ', "invalid JSON"),
    (json.dumps({"code": "Find a model for me.", "api_call": "f()", "provider": "P",
                 "api_data": {}}), "###Instruction"),
    (_hf_line(instruction=" "), "empty instruction"),
    (json.dumps({k: v for k, v in json.loads(_hf_line()).items() if k != "api_call"}),
     "missing key(s) api_call"),
    (_hf_line(api_data="not a dict"), "'api_data' must be an object"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, reason):
    path = _write_jsonl(tmp_path / "bad.json", [_hf_line(), _hf_line(), bad_line, _hf_line()])
    with pytest.raises(gorilla.MalformedRecordError) as info:
        gorilla.load_apibench(path, "huggingface")
    assert "bad.json:3: " in str(info.value) and reason in str(info.value)
    assert info.value.lineno == 3 and isinstance(info.value, ValueError)


def test_skip_mode_counts_and_warns(tmp_path, caplog):
    path = _write_jsonl(tmp_path / "mixed.json", [
        _hf_line(instruction="one"), "{not json", "", _hf_line(instruction="two"),
        json.dumps({"code": "###Instruction: x"}), "   ", _hf_line(instruction="three")])
    with caplog.at_level(logging.WARNING, logger="rlaif_jax.data.gorilla"):
        records, skipped = gorilla.load_apibench(path, "huggingface", on_error="skip")
    assert skipped == 2
    assert [(r["question_id"], r["instruction"]) for r in records] == [
        ("1", "one"), ("4", "two"), ("7", "three")]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "mixed.json:2:" in warned and "mixed.json:5:" in warned


def test_blank_lines_and_missing_output_are_not_malformed(tmp_path):
    instruction_only = json.dumps({"code": "###Instruction: Transcribe my meeting.",
                                   "api_call": "pipeline('asr')", "provider": "Transformers",
                                   "api_data": {"domain": "Audio"}})
    path = _write_jsonl(tmp_path / "ok.json", ["", instruction_only, ""])
    (rec,), skipped = gorilla.load_apibench(path, "huggingface")
    assert skipped == 0 and rec["question_id"] == "2"
    assert (rec["instruction"], rec["domain"], rec["api_call"], rec["code"]) == (
        "Transcribe my meeting.", "Audio", "pipeline('asr')", "pipeline('asr')")


def test_parse_record_raises_value_error():
    with pytest.raises(ValueError, match="empty api_call"):
        gorilla.parse_record({"code": "###Instruction: x\n###Output: text", "api_call": " ",
                              "provider": "P", "api_data": {}}, "torchhub")
    with pytest.raises(ValueError, match="unknown hub"):
        gorilla.parse_record(json.loads(_hf_line()), "pypi")


def test_on_error_is_checked(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        gorilla.load_apibench(_write_jsonl(tmp_path / "a.json", [_hf_line()]), "huggingface",
                              on_error="ignore")


# --- paths and API databases -----------------------------------------------------------------


def test_paths():
    assert gorilla.apibench_path("torchhub", "train").name == "torchhub_train.json"
    assert gorilla.apibench_path("huggingface", "eval").parent == gorilla.DATA_DIR / "apibench"
    for hub, split in [("huggingface", "train"), ("tensorflowhub", "eval")]:
        with pytest.raises(FileNotFoundError, match=f"{hub} {split} file is not shipped"):
            gorilla.apibench_path(hub, split)
    with pytest.raises(ValueError):
        gorilla.apibench_path("torchhub", "test")
    with pytest.raises(ValueError):
        gorilla.api_db_path("pypi")


@pytest.mark.parametrize("hub,n", [("huggingface", 936), ("torchhub", 94), ("tensorflowhub", 696)])
def test_load_api_db(hub, n):
    entries = gorilla.load_api_db(gorilla.api_db_path(hub))
    assert len(entries) == n
    assert all(isinstance(e, dict) and e["api_call"] for e in entries)


def test_load_api_db_malformed(tmp_path):
    path = _write_jsonl(tmp_path / "db.jsonl", ['{"api_call": "a()"}', "", "[1, 2]"])
    with pytest.raises(gorilla.MalformedRecordError, match=r"db\.jsonl:3: expected a JSON object"):
        gorilla.load_api_db(path)


# --- prompt / target formatting --------------------------------------------------------------


def test_format_prompt_and_target():
    rec = {"domain": "D", "api_call": "f(x)", "provider": "P", "explanation": "E\nmore",
           "code": "import f\nf(x)"}
    assert gorilla.format_prompt("Do it.") == "###Instruction: Do it.\n###Output: "
    assert gorilla.format_prompt("Do it.", "Q: {instruction}\nA:") == "Q: Do it.\nA:"
    assert gorilla.format_target(rec) == (
        "<<<domain>>>: D\n<<<api_call>>>: f(x)\n<<<api_provider>>>: P\n"
        "<<<explanation>>>: E\nmore\n<<<code>>>: import f\nf(x)")
    assert gorilla.format_target(rec, ("code", "api_call")) == (
        "<<<api_call>>>: f(x)\n<<<code>>>: import f\nf(x)")
    with pytest.raises(ValueError, match="unknown section"):
        gorilla.format_target(rec, ("api",))


def test_round_trip_all_real_records(real_records):
    for records in real_records.values():
        for rec in records:
            expected = {k: rec["provider" if k == "api_provider" else k] for k in gorilla.SECTIONS}
            assert gorilla.parse_response(gorilla.format_target(rec)) == expected
    rec = real_records["huggingface", "eval"][0]
    assert gorilla.parse_response(gorilla.format_target(rec, ("api_call", "code"))) == {
        "api_call": rec["api_call"], "code": rec["code"]}


def test_parse_response_is_tolerant():
    text = ("  <<<domain>>>:Vision\n\n<<< api_call >>> :  load('m')  \n<<explanation>>> why\n"
            "<<<code>>>: import m\nm.load('m')\n\n###Instruction: the next example\n"
            "<<<code>>>: not this")
    assert gorilla.parse_response(text) == {
        "domain": "Vision", "api_call": "load('m')", "explanation": "why",
        "code": "import m\nm.load('m')"}
    assert gorilla.parse_response("no sections here") == {}
    assert gorilla.parse_response("{'domain': 'D', 'api_call': 'torch.hub.load('a', 'b')'}") == {
        "domain": "D", "api_call": "torch.hub.load('a', 'b')"}


# --- splits ----------------------------------------------------------------------------------


def _data_cfg(seed=0, sources=None, **overrides):
    cfg = ConfigDict({
        "sources": sources or [{"hub": "huggingface", "path": "", "role": "split"},
                               {"hub": "torchhub", "path": "", "role": "train"},
                               {"hub": "torchhub", "path": "", "role": "test"}],
        "split_seed": seed, "validation_fraction": 0.1, "test_fraction": 0.1,
        "on_malformed": "raise", "max_records_per_source": 0})
    cfg.update(overrides)
    return cfg


def _ids(dd):
    return {split: list(zip(dd[split]["source"], dd[split]["question_id"])) for split in dd}


@pytest.fixture(scope="module")
def default_splits():
    return build_splits(_data_cfg())


def test_default_split_counts(default_splits):
    assert split_summary(default_splits) == {
        "train": {"huggingface": 729, "torchhub": 753},
        "validation": {"huggingface": 91, "torchhub": 84},
        "test": {"huggingface": 91, "torchhub": 186},
    }
    for split in ("train", "validation", "test"):
        assert tuple(default_splits[split].column_names) == gorilla.RECORD_FIELDS


def test_project_default_config_matches(default_splits):
    from rlaif_jax.config import base_config
    assert _ids(build_splits(base_config().data)) == _ids(default_splits)


def test_splits_disjoint_cover_and_ordered(default_splits, real_records):
    ids = _ids(default_splits)
    everything = [key for split_ids in ids.values() for key in split_ids]
    assert len(everything) == len(set(everything)) == sum(REAL_FILES.values())
    expected = {(r["source"], r["question_id"]) for records in real_records.values()
                for r in records}
    assert set(everything) == expected
    assert {source for source, _ in ids["test"] if source.startswith("torch")} == {
        "torchhub_eval.json"}
    for split_ids in ids.values():
        order = {"huggingface_eval.json": 0, "torchhub_train.json": 1, "torchhub_eval.json": 2}
        keys = [(order[s], int(q)) for s, q in split_ids]
        assert keys == sorted(keys)


def test_splits_deterministic_and_seeded(default_splits):
    assert _ids(build_splits(_data_cfg())) == _ids(default_splits)
    other = _ids(build_splits(_data_cfg(seed=1)))
    assert other["train"] != _ids(default_splits)["train"]
    assert {k: len(v) for k, v in other.items()} == {
        k: len(v) for k, v in _ids(default_splits).items()}


def test_splits_do_not_depend_on_source_order(default_splits):
    sources = list(reversed(_data_cfg().sources))
    reordered = _ids(build_splits(_data_cfg(sources=sources)))
    assert {k: sorted(v) for k, v in reordered.items()} == {
        k: sorted(v) for k, v in _ids(default_splits).items()}


def test_max_records_and_explicit_path():
    path = FIXTURES / "tensorflowhub_sample.json"
    cfg = _data_cfg(max_records_per_source=20, sources=[
        {"hub": "huggingface", "path": "", "role": "split"},
        {"hub": "tensorflowhub", "path": str(path), "role": "train"}])
    dd = build_splits(cfg)
    assert split_summary(dd) == {"train": {"huggingface": 16, "tensorflowhub": 1},
                                 "validation": {"huggingface": 2}, "test": {"huggingface": 2}}
    hf_ids = sorted(int(q) for split in dd.values() for q, h in zip(split["question_id"],
                                                                    split["hub"])
                    if h == "huggingface")
    assert hf_ids == list(range(1, 21))


def test_skip_mode_in_splits(tmp_path, caplog):
    path = _write_jsonl(tmp_path / "torchhub_custom.json",
                        [_hf_line(instruction=f"q{i}") for i in range(5)] + ["{broken"])
    sources = [{"hub": "torchhub", "path": str(path), "role": "test"}]
    with pytest.raises(gorilla.MalformedRecordError, match="torchhub_custom.json:6"):
        build_splits(_data_cfg(sources=sources))
    with caplog.at_level(logging.WARNING):
        dd = build_splits(_data_cfg(sources=sources, on_malformed="skip"))
    assert (dd["train"].num_rows, dd["validation"].num_rows, dd["test"].num_rows) == (0, 0, 5)
    assert tuple(dd["train"].column_names) == gorilla.RECORD_FIELDS
    assert "1 malformed" in caplog.text


def test_split_config_errors():
    with pytest.raises(ValueError, match="role"):
        build_splits(_data_cfg(sources=[{"hub": "torchhub", "path": "", "role": "eval"}]))
    with pytest.raises(ValueError, match="listed twice"):
        build_splits(_data_cfg(sources=[{"hub": "torchhub", "path": "", "role": "test"}] * 2))
    with pytest.raises(ValueError, match="sum below 1"):
        build_splits(_data_cfg(validation_fraction=0.5, test_fraction=0.5))
