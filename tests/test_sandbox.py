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
    assert STATUSES == ("ok", "syntax", "import", "undefined_name", "unknown_model",
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
# score 86.7% (790/911) and 93.0% (173/186): see benchmarks/bench_sandbox.py --report.
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
