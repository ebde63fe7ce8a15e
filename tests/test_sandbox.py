"""The executability measure: sandbox containment, stand-ins, classification, gold-code rates."""

import collections
import os
import pathlib
import socket
import time
import uuid

import pytest

from rlaif_jax.data import gorilla
from rlaif_jax.evaluation import sandbox
from rlaif_jax.evaluation.sandbox import STATUSES, ExecResult, executable_code, run_code, run_many
from rlaif_jax.evaluation.standins import hubs

IS_ROOT = os.geteuid() == 0


def _subset(hub, n):
    """A deterministic subset of an APIBench eval file: every k-th record."""
    records, _ = gorilla.load_apibench(gorilla.apibench_path(hub, "eval"), hub)
    return records[::len(records) // n][:n]


@pytest.fixture(scope="module")
def gold():
    """(hub, codes, results) of the gold code of 120 HF + 60 TorchHub eval records."""
    out = {}
    for hub, n in (("huggingface", 120), ("torchhub", 60)):
        codes = [executable_code(gorilla.format_target(r)) for r in _subset(hub, n)]
        out[hub] = (codes, run_many(codes, [hub] * len(codes)))
    return out


# --- API ------------------------------------------------------------------------------------

def test_api_shape():
    assert STATUSES == ("ok", "no_code", "syntax", "import", "undefined_name", "unknown_model",
                        "bad_arguments", "runtime", "timeout", "resource_limit",
                        "sandbox_violation")
    result = run_code("x = 1 + 1", "huggingface")
    assert isinstance(result, ExecResult)
    assert (result.status, result.ok, result.detail) == ("ok", True, "")
    assert 0 < result.seconds < 5
    with pytest.raises(ValueError):
        run_many(["x = 1"], ["nohub"])
    with pytest.raises(ValueError):
        run_many(["x = 1"], [])
    assert run_many([], []) == []


def test_executable_code():
    text = ("<<<domain>>>: NLP\n<<<api_call>>>: AutoModel.from_pretrained('gpt2')\n"
            "<<<api_provider>>>: Hugging Face\n<<<explanation>>>: loads it\n"
            "<<<code>>>: from transformers import AutoModel\nm = AutoModel.from_pretrained('gpt2')")
    assert executable_code(text) == ("from transformers import AutoModel\n"
                                     "m = AutoModel.from_pretrained('gpt2')")
    fenced = "<<<code>>>: ```python\nimport torch\nx = torch.zeros(3)\n```"
    assert executable_code(fenced) == "import torch\nx = torch.zeros(3)"
    bare = "<<<api_call>>>: pipeline('summarization', model='facebook/bart-large-cnn')"
    assert executable_code(bare) == "pipeline('summarization', model='facebook/bart-large-cnn')"
    assert executable_code("no sections at all") == ""


def test_bare_api_calls_run_with_their_implied_imports():
    codes = ["pipeline('summarization', model='facebook/bart-large-cnn')",
             "model = torch.hub.load('pytorch/vision', 'resnet18', pretrained=True)",
             "hub.KerasLayer('https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/"
             "classification/4')",
             "AutoModelForEverything.from_pretrained('gpt2')",     # not a transformers name
             "pipeline('summarization', model='acme/invented')",
             # two statements: a program, whose missing import is the code's fault
             "p = pipeline('summarization', model='facebook/bart-large-cnn')\np('text')"]
    results = run_many(codes, ["huggingface", "torchhub", "tensorflowhub", "huggingface",
                               "huggingface", "huggingface"])
    assert [r.status for r in results] == ["ok", "ok", "ok", "undefined_name", "unknown_model",
                                           "undefined_name"], results


def test_results_keep_input_order():
    codes = [f"import time\ntime.sleep({0.3 if i % 3 == 0 else 0})\nraise ValueError('v{i}')"
             for i in range(9)]
    results = run_many(codes, ["torchhub"] * 9, workers=3)
    assert [r.detail for r in results] == [f"ValueError: v{i}" for i in range(9)]


# --- gold code and invented ids ---------------------------------------------------------------

# Measured on these subsets: 111/120 (92.5%) HF, 57/60 (95%) TorchHub. The full eval files
# score 87.8% (800/911: one gold answer has no code) and 93.0% (173/186), every remaining failure
# but one a bug of the gold code (see the sandbox module's docstring and
# benchmarks/bench_sandbox.py --report).
@pytest.mark.parametrize("hub,threshold", [("huggingface", 0.88), ("torchhub", 0.90)])
def test_gold_code_runs(gold, hub, threshold):
    codes, results = gold[hub]
    rate = sum(r.ok for r in results) / len(results)
    failures = collections.Counter(r.status for r in results if not r.ok)
    assert rate >= threshold, (rate, failures, [r.detail for r in results if not r.ok][:10])
    # what does fail is the code's fault, never the sandbox's
    assert set(failures) <= {"import", "undefined_name", "syntax", "bad_arguments",
                             "unknown_model", "runtime"}
    assert not any("sandbox" in r.detail for r in results)


@pytest.mark.parametrize("hub", ["huggingface", "torchhub"])
def test_invented_model_ids_fail(gold, hub):
    codes, gold_results = gold[hub]
    known = hubs.load_known()
    invented = [hubs.invent_ids(code, known) for code in codes]
    assert sum(a != b for a, b in zip(invented, codes)) >= 0.8 * len(codes)
    results = run_many(invented, [hub] * len(codes))
    assert sum(r.ok for r in results) / len(results) <= 0.10
    swapped_ok = [(a, r) for a, b, r, g in zip(invented, codes, results, gold_results)
                  if a != b and g.ok]
    assert swapped_ok and all(r.status == "unknown_model" for _, r in swapped_ok), \
        [(a, r) for a, r in swapped_ok if r.status != "unknown_model"][:3]


# --- stand-ins ------------------------------------------------------------------------------

STANDIN_CASES = [
    # real names import, invented ones fail like the real library
    ("from transformers import AutoTokenizer, AutoModelForSeq2SeqLM, pipeline, BertModel", "ok"),
    ("from transformers import TFAutoModel, ViTFeatureExtractor", "ok"),   # 4.x names
    ("from transformers import AutoModelForEverything", "import"),
    ("import transformers.no_such_module", "import"),
    ("from torch.nn import functional as F\nimport torch.nn as nn\nx = F.relu(nn.Linear(2, 3)(1))",
     "ok"),
    ("import torch\ntorch.no_such_function()", "runtime"),   # AttributeError, as torch
    ("import tensorflow as tf\nimport tensorflow_hub as hub\n"
     "m = tf.keras.Sequential([hub.KerasLayer("
     "'https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/classification/4')])", "ok"),
    ("import tensorflow_hub as hub\nhub.load('https://tfhub.dev/acme/no-such-model/1')",
     "unknown_model"),
    ("from sentence_transformers import SentenceTransformer\n"
     "m = SentenceTransformer('all-MiniLM-L6-v2')\nv = m.encode(['a', 'b'])", "ok"),
    ("from sentence_transformers import SentenceTransformer\nSentenceTransformer('acme/nope')",
     "unknown_model"),
    ("from transformers import AutoModel\nAutoModel.from_pretrained('./no/such/dir')",
     "unknown_model"),
    ("import jax", "import"),                      # installed, but not a library of the sandbox
    ("import sklearn.linear_model as lm\nm = lm.LogisticRegression().fit([[1]], [1])", "ok"),
    # duck-typed results: unpacking takes as many items as asked, numpy interoperates
    ("import torch\nimport numpy as np\n"
     "model, decoder, utils = torch.hub.load('snakers4/silero-models', 'silero_stt', "
     "language='en')\n(read_batch, split_into_batches, read_audio, prepare_model_input) = utils\n"
     "a = np.array(model(1)).mean() + 1\nw, h = decoder.size\n"
     "print(f'{w:.2f} {h}')\nassert not torch.cuda.is_available()", "ok"),
    ("import torch\nprint(torch.hub.list('pytorch/vision'))\n"
     "assert 'resnet18' in torch.hub.list('pytorch/vision')", "ok"),
    ("import torch\ntorch.hub.load('pytorch/vision', 'resnet_invented')", "unknown_model"),
    ("import torch\ntorch.hub.load('acme/vision', 'resnet18')", "unknown_model"),
    ("import torch\ntorch.hub.load('pytorch/vision', 'resnet18', source='gitlab')",
     "bad_arguments"),
    ("import torch\ntorch.hub.load('pytorch/vision')", "bad_arguments"),   # missing entry point
    ("from transformers import pipeline\npipeline('sentiment-analysis')('good')", "ok"),
    ("from transformers import pipeline\npipeline('translation_en_to_fr', model='t5-small')",
     "ok"),
    ("from transformers import pipeline\npipeline()", "bad_arguments"),
    # the offline web: no connection, an empty 200 answer that PIL accepts
    ("import requests\nfrom PIL import Image\nfrom io import BytesIO\n"
     "r = requests.get('https://example.com/cat.jpg', stream=True)\n"
     "assert r.status_code == 200 and r.content == b''\n"
     "img = Image.open(r.raw).convert('RGB')\nimg2 = Image.open(BytesIO(r.content))", "ok"),
    ("from urllib.request import urlopen\ndata = urlopen('https://example.com/x').read()", "ok"),
    # inputs: free variables and named input files are provided
    ("with open(audio_file_path, 'rb') as f:\n    data = f.read()\n"
     "cfg = __import__('json').load(open('config.json'))\nfeatures = cfg['features']\n"
     "import pandas as pd\ndf = pd.read_csv('data.csv')[features]", "ok"),
    # missing imports are not inputs
    ("model = AutoModel.from_pretrained('gpt2')\nmodel.eval()", "undefined_name"),
    ("x = torch.zeros(3)\ny = x + 1", "undefined_name"),
    ("!pip install transformers\n%matplotlib inline\nimport transformers", "ok"),
]


# Fidelity fixes found by going through every failure of the HF gold code (question ids of
# huggingface_eval.json in brackets): each stand-in behaviour that made correct code fail is
# fixed (first case of a pair), and the real bug next to it still fails (second case).
FIDELITY_CASES = [
    # fairseq's main branch (GitHub), which the unit-vocoder model cards use [154, 429, 901]
    ("from fairseq.models.text_to_speech import CodeHiFiGANVocoder\n"
     "from fairseq.models.text_to_speech.hub_interface import VocoderHubInterface\n"
     "vocoder = CodeHiFiGANVocoder('model.pt', {})\n"
     "wav, sr = VocoderHubInterface({}, vocoder).get_prediction({'code': 1})", "ok"),
    ("from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2Model", "import"),     # [620]
    # libraries installed from GitHub [227, 338, 831]
    ("from parrot import Parrot\np = Parrot(model_tag='prithivida/parrot_paraphraser_on_T5')\n"
     "for phrase in p.augment(input_phrase='How are you?'):\n    print(phrase)", "ok"),
    ("from parrot import Parrot\nParrot(model_tag='acme/parrot')", "unknown_model"),
    ("from vc_models.models.vit import model_utils\nassert model_utils.VC1_BASE_NAME == 'vc1_vitb'"
     "\nmodel, embd_size, transforms, info = model_utils.load_model(model_utils.VC1_BASE_NAME)",
     "ok"),
    ("from vc_models import load_model", "import"),
    ("from tuneavideo.pipelines.pipeline_tuneavideo import TuneAVideoPipeline\n"
     "from tuneavideo.models.unet import UNet3DConditionModel\n"
     "from tuneavideo.util import save_videos_grid\n"
     "unet = UNet3DConditionModel.from_pretrained('Tune-A-Video-library/redshift-man-skiing', "
     "subfolder='unet')\n"
     "pipe = TuneAVideoPipeline.from_pretrained('nitrosocke/redshift-diffusion', unet=unet)\n"
     "save_videos_grid(pipe('a man skiing', video_length=8).videos, './skiing.gif')", "ok"),
    ("from tuneavideo.pipelines.pipeline_tuneavideo import TuneAVideoPipeline\n"
     "TuneAVideoPipeline.from_pretrained('acme/redshift-diffusion')", "unknown_model"),
    # tensors: comparisons give tensors, .item() a number, one id decodes to a str [439, 702]
    ("from tensorflow.keras.models import load_model\nprediction = load_model('m.h5').predict(1)\n"
     "success = (prediction > 0.5).astype(int)\nx = prediction\nwhile x < 10:\n    x = x + 1",
     "ok"),
    ("from transformers import AutoTokenizer, AutoModelForMaskedLM\n"
     "tok = AutoTokenizer.from_pretrained('GroNLP/bert-base-dutch-cased')\n"
     "out = AutoModelForMaskedLM.from_pretrained('GroNLP/bert-base-dutch-cased')(1)\n"
     "word = tok.convert_ids_to_tokens(out.logits.argmax(dim=2)[0].item())\n"
     "print('je ___ mee'.replace('___', word), ['a', 'b'][out.logits.argmax(-1).item()])", "ok"),
    ("from transformers import AutoTokenizer\n"
     "tok = AutoTokenizer.from_pretrained('GroNLP/bert-base-dutch-cased')\n"
     "'x'.replace('x', tok.convert_ids_to_tokens([1, 2]))", "runtime"),
    # MGP-STR's processor decodes to a dict, other processors to a list [454]
    ("from transformers import MgpstrProcessor\n"
     "p = MgpstrProcessor.from_pretrained('alibaba-damo/mgp-str-base')\n"
     "text = p.batch_decode(1)['generated_text']", "ok"),
    ("from transformers import AutoTokenizer\n"
     "AutoTokenizer.from_pretrained('roberta-base').batch_decode(1)['generated_text']", "runtime"),
    # pipeline outputs: text fields are str [798]; a real bug on them still fails [291]
    ("from transformers import pipeline\nunmasker = pipeline('fill-mask', model='roberta-base')\n"
     "text = 'The weather was <mask>.'\nresult = unmasker(text)\n"
     "print(text.replace('<mask>', result[0]['token_str']), round(result[0]['score'], 2))", "ok"),
    ("from transformers import pipeline\n"
     "clf = pipeline('sentiment-analysis', "
     "model='nlptown/bert-base-multilingual-uncased-sentiment')\nif int(clf('great')[0]['label'][-1]) < 3:\n    print('low')", "runtime"),
    # hf_hub_download needs a file name, as the real one [327, 427, 532, 762]
    ("from huggingface_hub import hf_hub_download\n"
     "path = hf_hub_download(repo_id='JorisCos/ConvTasNet_Libri2Mix_sepclean_8k', "
     "filename='model.pth')", "ok"),
    ("from huggingface_hub import hf_hub_download\n"
     "path = hf_hub_download(repo_id='JorisCos/ConvTasNet_Libri2Mix_sepclean_8k')",
     "bad_arguments"),
    # files inside a placeholder directory are inputs too [535]
    ("import json, os\nfrom fairseq import hub_utils\n"
     "x = hub_utils.from_pretrained('.', 'model.pt')\nwith open(os.path.join(x['args']['data'], 'config.json')) as f:\n"
     "    cfg = json.load(f)\nprint(cfg['num_speakers'])", "ok"),
    ("import os\nopen('notes.txt', 'w').write('x')\n"
     "open(os.path.join('notes.txt', 'config.json'))", "runtime"),
    # IPython's automagic runs `pip install` (%pip), not other shell commands [637, 527]
    ("pip install diffusers transformers\nimport diffusers", "ok"),
    ("cd espnet\ngit checkout d5b5ec7b2e77bd3e10707141818b7e6c57ac6b3f\nimport espnet2", "syntax"),
    # a model the API database names without its owner [241]; a class that is no API [810]
    ("from asteroid.models import ConvTasNet\n"
     "model = ConvTasNet.from_pretrained('JorisCos/ConvTasNet_Libri3Mix_sepclean_8k')", "ok"),
    ("from asteroid.models import ConvTasNet\n"
     "ConvTasNet.from_pretrained('acme/ConvTasNet_Libri3Mix_sepclean_8k')", "unknown_model"),
    ("from asteroid.models import ConvTasNet_Libri3Mix_sepclean_8k", "import"),
    # checks that catch invented ids the negative control swaps in [628, 908]
    ("from pyannote.audio.core.inference import Inference\n"
     "vad = Inference('pyannote/voice-activity-detection', device='cuda')\n"
     "result = vad({'audio': 'audio_file.wav'})", "ok"),
    ("from pyannote.audio.core.inference import Inference\nInference('acme/vad')",
     "unknown_model"),
    ("import joblib\nmodel = joblib.load('model.joblib')\nmodel.predict([[1, 2]])", "ok"),
    ("import joblib\nmodel = joblib.load('invented-org/sklearn_model.joblib-x9')",
     "unknown_model"),
    # torch.load reads a file: a hub id given to it fails (a policy's reward-hacked shortcut)
    ("import torch\nmodel = torch.load('model.pth')\nmodel.eval()", "ok"),
    ("import torch\nmodel = torch.load('pytorch/vision', pretrained=True)", "unknown_model"),
    # rl_zoo3.load_from_hub is a module (a script), huggingface_sb3's is the function [171]
    ("from huggingface_sb3 import load_from_hub\n"
     "path = load_from_hub(repo_id='sb3/ppo-CartPole-v1', filename='ppo-CartPole-v1.zip')", "ok"),
    ("from rl_zoo3 import load_from_hub\n"
     "path = load_from_hub(repo_id='sb3/ppo-CartPole-v1', filename='ppo-CartPole-v1.zip')",
     "runtime"),
]


def test_fidelity_fixes_and_the_real_bugs_beside_them():
    codes = [code for code, _ in FIDELITY_CASES]
    results = run_many(codes, ["huggingface"] * len(codes))
    wrong = [(code, r) for (code, want), r in zip(FIDELITY_CASES, results) if r.status != want]
    assert not wrong, "\n\n".join(f"{code}\n-> {r}" for code, r in wrong)


def test_standins():
    codes = [code for code, _ in STANDIN_CASES]
    results = run_many(codes, ["huggingface"] * len(codes))
    wrong = [(code, r) for (code, want), r in zip(STANDIN_CASES, results) if r.status != want]
    assert not wrong, "\n\n".join(f"{code}\n-> {r}" for code, r in wrong)


def test_generated_names():
    from rlaif_jax.evaluation.standins import _apis, runtime
    runtime.load()
    assert {"transformers", "torch", "tensorflow", "tensorflow_hub", "PIL", "requests",
            "diffusers", "sentence_transformers", "torchvision"} <= set(_apis.SOURCES)
    assert {"AutoModel", "pipeline", "BertForMaskedLM"} <= runtime.MODULES["transformers"]
    assert {"load", "list", "help"} <= runtime.MODULES["torch.hub"]
    assert {"load", "KerasLayer"} <= runtime.MODULES["tensorflow_hub"]
    assert "Dense" in runtime.MODULES["tensorflow.keras.layers"]
    assert {"summarization", "text-generation", "conversational"} <= runtime.TASKS


def test_static_parser(tmp_path):
    from rlaif_jax.evaluation.standins.generate import Tree
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .a import *\n_import_structure = {'b': ['Lazy']}\n"
        "if TYPE_CHECKING:\n    from .b import Lazy\ntry:\n    from .a import helper as h\n"
        "except ImportError:\n    pass\n")
    (pkg / "a.py").write_text("__all__ = ['Public']\nclass Public: pass\ndef helper(): pass\n")
    (pkg / "b.py").write_text("class Lazy: pass\n")
    (pkg / "sub" / "__init__.py").write_text("X = 1\n")
    tree = Tree()
    tree.add_root(pkg, "pkg")
    assert tree.modules() == {"pkg", "pkg.a", "pkg.b", "pkg.sub"}
    names, all_names = tree.names("pkg")
    assert {"Public", "Lazy", "h", "TYPE_CHECKING"} <= names and "helper" not in names
    assert tree.star("pkg.a") == {"Public"}


def test_known_ids():
    known = hubs.load_known()
    assert "princeton-nlp/unsup-simcse-roberta-base" in known["huggingface"]
    assert "resnet18" in known["torchhub"]["pytorch/vision"]
    assert hubs.tf_key("https://tfhub.dev/google/universal-sentence-encoder/4/") in \
        known["tensorflowhub"]
    swapped = hubs.invent_ids("m = AutoModel.from_pretrained('gpt2')", known)
    assert "gpt2" not in swapped.replace("gpt2-x9", "")


# --- hostile code ---------------------------------------------------------------------------

def test_hostile_code_is_contained(tmp_path, monkeypatch):
    secret = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    sandbox.shutdown()  # new workers, started from this environment
    tmp_target = pathlib.Path("/tmp") / f"rlaif-escape-{uuid.uuid4().hex}"
    home_target = pathlib.Path.home() / f"rlaif-escape-{uuid.uuid4().hex}"
    sh_target = pathlib.Path("/tmp") / f"rlaif-escape-sh-{uuid.uuid4().hex}"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    normal = "from transformers import pipeline\nclf = pipeline('sentiment-analysis')\nclf('x')"
    cases = [
        ("fork bomb", "import os\nwhile True:\n    os.fork()", "sandbox_violation"),
        ("infinite loop", "while True:\n    pass", "timeout"),
        ("bytearray", "x = bytearray(10**10)", "resource_limit"),
        ("growing list", "x = []\nwhile True:\n    x.append(bytearray(10**7))", "resource_limit"),
        ("env var", "import os\nprint(os.environ['OPENAI_API_KEY'])", "runtime"),
        ("env dump", "import os\nraise RuntimeError(repr(dict(os.environ)))", "runtime"),
        ("parent environ", "import os\nopen(f'/proc/{os.getppid()}/environ').read()",
         "sandbox_violation"),
        ("write /tmp", f"open({str(tmp_target)!r}, 'w').write('x')", "sandbox_violation"),
        ("write home", f"open({str(home_target)!r}, 'w').write('x')", "sandbox_violation"),
        ("socket", f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))",
         "sandbox_violation"),
        ("caught socket", f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}))"
         f"\nexcept Exception:\n    pass", "sandbox_violation"),
        ("requests to listener", f"import requests\nrequests.get('http://127.0.0.1:{port}/')",
         "ok"),
        ("subprocess", f"import subprocess\nsubprocess.run(['sh', '-c', 'touch {sh_target}'])",
         "sandbox_violation"),
        ("os.system", f"import os\nos.system('touch {sh_target}')", "sandbox_violation"),
        ("grandchild", "import subprocess\nsubprocess.Popen(['sleep', '300'])",
         "sandbox_violation"),
        ("ctypes", "import ctypes", "sandbox_violation"),
        ("write own dir", "open('out.txt', 'w').write('fine')\nprint(open('out.txt').read())",
         "ok"),
    ]
    codes = []
    for _, code, _ in cases:
        codes += [normal, code]
    codes.append(normal)
    start = time.monotonic()
    results = run_many(codes, ["huggingface"] * len(codes), timeout=5, memory_mb=512)
    elapsed = time.monotonic() - start
    got = dict(zip([name for name, _, _ in cases], results[1::2]))
    assert all(r.ok for r in results[0::2]), "normal code around hostile code must still run"
    wrong = {name: got[name] for name, _, want in cases if got[name].status != want}
    assert not wrong, wrong
    assert "KeyError" in got["env var"].detail
    assert secret not in got["env dump"].detail and "OPENAI" not in got["env dump"].detail
    assert "PATH" in got["env dump"].detail
    assert not tmp_target.exists() and not home_target.exists() and not sh_target.exists()
    with pytest.raises(socket.timeout):
        listener.accept()  # no connection ever arrived
    listener.close()
    assert elapsed < 30


@pytest.mark.skipif(not IS_ROOT, reason="kernel-level containment needs root (own uid per slot)")
def test_spawned_processes_are_killed_without_the_audit_hook():
    """With process creation allowed (a test-only switch that removes the audit hook's process
    checks), the other layers still contain the snippet: a sleeping grandchild, even one that
    left the process group, is killed at the end, and a fork bomb meets RLIMIT_NPROC."""
    codes = ["import subprocess\np = subprocess.Popen(['sleep', '300'])\n"
             "raise RuntimeError(f'PID={p.pid}')",
             "import subprocess\np = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
             "raise RuntimeError(f'PID={p.pid}')",
             "import os\nwhile True:\n    os.fork()"]
    results = run_many(codes, ["torchhub"] * 3, timeout=5, _options={"allow_spawn": True})
    for r in results[:2]:
        pid = int(r.detail.split("PID=")[1].split()[0])
        time.sleep(0.2)
        status = pathlib.Path(f"/proc/{pid}/status")
        assert not status.exists() or "State:\tZ" in status.read_text(), r
    assert results[2].status in ("resource_limit", "timeout"), results[2]
    ours = {sandbox.sandbox_uid(slot) for slot in range(sandbox.MAX_SLOTS)}
    leftover = []
    for p in pathlib.Path("/proc").iterdir():
        try:
            if p.name.isdigit() and p.stat().st_uid in ours and \
                    "State:\tZ" not in (p / "status").read_text():
                leftover.append(p.name)
        except FileNotFoundError:
            continue
    assert not leftover


def test_every_status_is_produced():
    cases = {
        "ok": "import numpy as np\nprint(np.arange(3).sum())",
        "no_code": "# nothing here",
        "syntax": "def f(:\n    pass",
        "import": "from transformers import NotAThing",
        "undefined_name": "p = pipeline('fill-mask')\np('Paris is the [MASK] of France.')",
        "unknown_model": "from transformers import AutoModel\n"
                         "AutoModel.from_pretrained('acme/not-a-model')",
        "bad_arguments": "from transformers import pipeline\npipeline('image-to-smell')",
        "runtime": "raise KeyError('x')",
        "timeout": "import time\ntime.sleep(60)",
        "resource_limit": "open('big.bin', 'wb').write(b'0' * (100 * 2**20))",
        "sandbox_violation": "import socket\nsocket.socket()",
    }
    results = run_many(list(cases.values()), ["huggingface"] * len(cases), timeout=2)
    assert {name: r.status for name, r in zip(cases, results)} == {n: n for n in cases}
    assert set(cases) == set(STATUSES)
    assert all(len(r.detail) <= sandbox.DETAIL_CHARS for r in results)


def test_nothing_to_run_is_a_failure_not_ok():
    results = sandbox.run_many(["", "   \n", "# just a comment\n", "x = 1"], ["huggingface"] * 4)
    assert [r.status for r in results] == ["no_code", "no_code", "no_code", "ok"]
    assert not any(r.ok for r in results[:3])
