"""Stand-ins for the model-hub libraries, served to sandboxed code by an import hook.

`install()` puts a meta-path finder first on ``sys.meta_path``. For a library named in the
generated `_apis` data (transformers, torch, tensorflow, tensorflow_hub, diffusers, PIL,
requests, ... see ``_apis.SOURCES``) it makes a stand-in module that exports exactly the real
library's public names: ``from transformers import NoSuchThing`` and ``import torch.nosuch`` fail
with ImportError as they would for real. Other imports must be the standard library or numpy
(both real); anything else is "not installed" (ModuleNotFoundError).

Each exported name is a generated class of `Dummy` (so it can be called, subclassed, used as a
decorator, and has any attribute); its instances are duck-typed dummies that accept attribute
access, calls, indexing, iteration (unpacking ``a, b, c = x`` yields exactly three items: the
unpacking instruction is read from the caller's frame), arithmetic, comparisons, context
managers, ``len``, ``format``, ``np.array(x)``, ``open(x)``. Plausible correct code runs.
Where the real result is a plain value, the stand-in gives one: comparing dummies gives a dummy
that is false as a condition (element-wise ``(p > 0.5).astype(int)`` works, ``while x < n``
ends), ``t.item()`` gives 0, tokenizers decode to str (``convert_ids_to_tokens`` of one int to a
str, of a list to a list), MGP-STR's ``batch_decode`` to its dict, and calling a transformers
pipeline gives `PipelineOutput` (str text fields such as ``[0]['token_str']``, float scores).

What the stand-ins check, like the real libraries and hubs would:

* model ids (`hubs`): ``X.from_pretrained(id)`` in transformers/diffusers/..., ``pipeline(...,
  model=id)``, ``SentenceTransformer(id)``, ``torch.hub.load(repo, model)``/``torch.hub.list``,
  ``hub.load(handle)``/``hub.KerasLayer(handle)``, ``hf_hub_download(repo_id)`` and the other hub
  loaders listed in `_LOADER_METHODS`, `_CTOR_CHECKS`, `_FUNC_CHECKS`: an id the API database of
  the hub does not know raises `HubNotFoundError` (an OSError, like the 404 of a hub); a missing
  local path too.
* ``pipeline(task)`` with a task transformers never had raises `StandinValueError` (a
  ValueError, as transformers does); ``torch.hub.load`` with a bad ``source`` too; calls with
  arguments that do not fit the real signature of the checked functions raise `StandinTypeError`
  (``pipeline``, ``torch.hub.load``/``list``/``help``, ``hf_hub_download``/``hf_hub_url``
  without their ``filename``).

The module names come from `_apis` (generated from PyPI distributions) plus `_supplement` (hand
read from GitHub: fairseq's main branch, parrot, vc_models, tuneavideo).

Network: the stand-in ``requests`` (and the sandbox's ``urllib.request.urlopen``) never open a
connection; they answer every URL with an empty "200 OK" `Response`. Gold code such as
``Image.open(requests.get(url, stream=True).raw)`` fetches an *input* (an image to classify),
which is not what the executability measure is about, so it is not counted against the code;
the stand-in PIL accepts the empty body. Opening a socket is still blocked by the sandbox.
"""

from __future__ import annotations

import base64
import dis
import importlib
import importlib.abc
import importlib.machinery
import inspect
import io
import json
import os
import re
import sys
import types
import zlib

from rlaif_jax.evaluation.standins import hubs

# --- errors -----------------------------------------------------------------------------------


class StandinError(Exception):
    """Marker of the errors the stand-ins raise; `sandbox_status` classifies them."""
    sandbox_status = "bad_arguments"


class HubNotFoundError(StandinError, OSError):
    """A model / repository / handle the hub does not have (an HTTP 404 or missing path)."""
    sandbox_status = "unknown_model"


class EntryPointNotFoundError(StandinError, RuntimeError):
    """torch.hub: the repository has no such entry point (a RuntimeError in torch)."""
    sandbox_status = "unknown_model"


class StandinValueError(StandinError, ValueError):
    sandbox_status = "bad_arguments"


class StandinTypeError(StandinError, TypeError):
    sandbox_status = "bad_arguments"


class StandinRuntimeError(StandinError, RuntimeError):
    sandbox_status = "bad_arguments"


# --- data -------------------------------------------------------------------------------------

MODULES: dict[str, frozenset] = {}   # module path -> public names
OPEN: frozenset = frozenset()        # module paths whose names are not known: any name
PACKAGES: frozenset = frozenset()    # modules with submodules
TOPS: frozenset = frozenset()        # top-level names served by the stand-ins
VALUES: dict = {}
SHADOWED: dict = {}
TASKS: frozenset = frozenset()
KNOWN: dict = {}
_LOADED = False


def load() -> None:
    """Reads the generated API data and the hubs' known ids (once; the sandbox's worker does it
    before forking children)."""
    global MODULES, OPEN, PACKAGES, TOPS, VALUES, TASKS, KNOWN, SHADOWED, _LOADED
    if _LOADED:
        return
    from rlaif_jax.evaluation.standins import _apis, _supplement
    raw = json.loads(zlib.decompress(base64.b64decode("".join(_apis.MODULES_BLOB))))
    for module, names in _supplement.MODULES.items():  # libraries not on PyPI
        raw[module] = f"{raw.get(module, '')} {names}"
    MODULES = {m: frozenset(names.split()) for m, names in raw.items()}
    OPEN = frozenset(zlib.decompress(base64.b64decode("".join(_apis.OPEN_BLOB))).decode().split()
                     + list(_supplement.OPEN))
    every = set(MODULES) | OPEN
    PACKAGES = frozenset(m.rpartition(".")[0] for m in every if "." in m)
    TOPS = frozenset(m.partition(".")[0] for m in every)
    VALUES = {m: dict(v) for m, v in _apis.VALUES.items()}
    for module, values in _supplement.VALUES.items():
        VALUES.setdefault(module, {}).update(values)
    TASKS = frozenset(_apis.PIPELINE_TASKS)
    SHADOWED = {m: frozenset(n) for m, n in _apis.SHADOWED.items()}
    KNOWN = hubs.load_known()
    _LOADED = True


def public_names(module: str) -> frozenset:
    return MODULES.get(module, frozenset())


# --- dummies ----------------------------------------------------------------------------------

_UNPACK_SEQUENCE = dis.opmap["UNPACK_SEQUENCE"]
_UNPACK_EX = dis.opmap["UNPACK_EX"]
_DEFAULT_LEN = 2
ARRAY_SHAPE = (4, 4, 3)      # np.array(dummy): an image-like array (indexable on 3 axes)
PLACEHOLDER_PATH = "input"   # an (empty) file the sandbox creates in the working directory


def _unpack_count(frame) -> int:
    """How many items the instruction that is iterating wants (for ``a, b = x``), or the
    default length."""
    try:
        code = frame.f_code.co_code
        i = frame.f_lasti
        op, arg = code[i], code[i + 1]
        if op == _UNPACK_SEQUENCE:
            return arg
        if op == _UNPACK_EX:
            return (arg & 0xFF) + (arg >> 8)
    except (AttributeError, IndexError, TypeError):
        pass
    return _DEFAULT_LEN


# Methods whose real result is text (tokenizers' decode, OCR): a str, or a list of 2 str;
# "ids": a str for one id (an int), else a list (``convert_ids_to_tokens``).
TEXT_METHODS = {"decode": str, "batch_decode": list, "convert_ids_to_tokens": "ids",
                "tokenize": list, "image_to_string": str, "convert_tokens_to_string": str,
                "get_text": str}
# The same for one class (a name prefix): MGP-STR's processor decodes to a dict of lists.
CLASS_TEXT_METHODS = {("Mgpstr", "batch_decode"): dict}
_MGPSTR_KEYS = ("generated_text", "scores", "char_preds", "bpe_preds", "wp_preds")


def _text_method(kind):
    def method(*args, **kwargs):
        if kind is str:
            return "text"
        if kind is dict:
            return {key: ([0.5, 0.5] if key == "scores" else ["text", "text"])
                    for key in _MGPSTR_KEYS}
        if kind == "ids" and args and isinstance(args[0], int):
            return "text"
        return ["text", "text"]
    return method


def _item(*args, **kwargs):
    """``tensor.item()``: a Python number (an index, in nearly all uses: ``argmax().item()``)."""
    return 0


def _special_method(obj, name):
    """The stand-in for a method whose real result is a plain value, or None."""
    if name == "item":
        return _item
    kind = next((k for (prefix, method), k in CLASS_TEXT_METHODS.items()
                 if method == name and type(obj).__name__.startswith(prefix)), None)
    kind = kind or TEXT_METHODS.get(name)
    return None if kind is None else _text_method(kind)


def _new(cls, path: str):
    obj = object.__new__(cls)
    object.__setattr__(obj, "_sb_path", path)
    return obj


def _user_method(obj, names):
    """The first of `names` defined by a class of obj's MRO that is not a stand-in class."""
    for klass in type(obj).__mro__:
        if klass is Dummy or getattr(klass, "_sb_standin", False) and klass.__dict__.get(
                "_sb_standin"):
            continue
        for name in names:
            fn = klass.__dict__.get(name)
            if fn is not None:
                return getattr(obj, name)
    return None


def _dummy_op(self, *_):
    return _new(Dummy, f"({getattr(self, '_sb_path', '?')} op)")


class Dummy:
    """A duck-typed dummy value: any attribute, call, item, iteration, arithmetic works."""

    _sb_path = "object"

    def __init__(self, *args, **kwargs):
        object.__setattr__(self, "_sb_path", f"{type(self).__name__}(...)")

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = _special_method(self, name) or _new(Dummy, f"{self._sb_path}.{name}")
        try:
            object.__setattr__(self, name, value)
        except (AttributeError, TypeError):
            pass
        return value

    def __call__(self, *args, **kwargs):
        method = _user_method(self, ("forward", "call"))
        if method is not None:
            return method(*args, **kwargs)
        if len(args) == 1 and not kwargs and isinstance(args[0], types.FunctionType):
            return args[0]  # used as a decorator (torch.no_grad(), tf.function(), ...)
        return _new(Dummy, f"{self._sb_path}()")

    def __getitem__(self, key):
        return _new(Dummy, f"{self._sb_path}[...]")

    def __setitem__(self, key, value):
        pass

    def __delitem__(self, key):
        pass

    def __iter__(self):
        n = _unpack_count(sys._getframe(1))
        return iter([_new(Dummy, f"{self._sb_path}[{i}]") for i in range(n)])

    def __next__(self):
        return _new(Dummy, f"next({self._sb_path})")

    def __len__(self):
        return _DEFAULT_LEN

    def __contains__(self, item):
        return True

    def __bool__(self):
        return True

    def __int__(self):
        return 0

    def __index__(self):
        return 0

    def __float__(self):
        return 0.5

    def __complex__(self):
        return 0.5 + 0j

    def __round__(self, ndigits=None):
        return 0.5 if ndigits else 0

    def __trunc__(self):
        return 0

    __floor__ = __ceil__ = __trunc__

    def __str__(self):
        return PLACEHOLDER_PATH

    def __repr__(self):
        return f"<stand-in {self._sb_path}>"

    def __format__(self, spec):
        if not spec:
            return str(self)
        try:
            return format(0.5, spec)
        except (ValueError, TypeError):
            return format(str(self), spec)

    def __fspath__(self):
        return PLACEHOLDER_PATH

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def __lt__(self, other):
        # An element-wise comparison of tensors gives a tensor (``(p > 0.5).astype(int)``); as a
        # condition it is false, so loops on dummies end.
        return _new(Falsy, f"({self._sb_path} compared)")

    __le__ = __gt__ = __ge__ = __lt__

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __array__(self, dtype=None, copy=None):
        import numpy
        return numpy.zeros(ARRAY_SHAPE, dtype=dtype or "float32")

    def keys(self):
        return []  # ``f(**x)`` passes no keyword

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _dummy_op
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _dummy_op
    __pow__ = __rpow__ = __matmul__ = __rmatmul__ = __divmod__ = __rdivmod__ = _dummy_op
    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = _dummy_op
    __lshift__ = __rlshift__ = __rshift__ = __rrshift__ = _dummy_op
    __neg__ = __pos__ = __abs__ = __invert__ = _dummy_op


class Falsy(Dummy):
    """A dummy that is false as a condition: the result of comparing dummies."""

    def __bool__(self):
        return False


class PipelineOutput(Dummy):
    """What calling a transformers pipeline returns: a list of dicts whose text fields are str
    and whose scores are floats, as the real pipelines' outputs are."""

    TEXT_KEYS = frozenset({"generated_text", "summary_text", "translation_text", "token_str",
                           "sequence", "label", "answer", "word", "entity", "entity_group",
                           "text"})
    NUMBER_KEYS = {"score": 0.5, "start": 0, "end": 0, "token": 0}
    LIST_KEYS = {"scores": 0.5, "labels": "text"}  # zero-shot classification: two of each

    def __getitem__(self, key):
        if isinstance(key, str):
            if key in self.TEXT_KEYS:
                return "text"
            if key in self.NUMBER_KEYS:
                return self.NUMBER_KEYS[key]
            if key in self.LIST_KEYS:
                return [self.LIST_KEYS[key]] * 2
        return _new(PipelineOutput, f"{self._sb_path}[...]")

    def __iter__(self):
        n = _unpack_count(sys._getframe(1))
        return iter([_new(PipelineOutput, f"{self._sb_path}[{i}]") for i in range(n)])


def _pipeline_call(self, *args, **kwargs):
    method = _user_method(self, ("forward", "call"))
    if method is not None:
        return method(*args, **kwargs)
    return _new(PipelineOutput, f"{self._sb_path}(...)")


class Placeholder(Dummy):
    """The value of a free variable of the snippet (an input it expects: an image path, a
    question...); a `Dummy` whose str / path is an existing empty file."""


class Response(Dummy):
    """What the stand-in requests answers to any URL, offline: an empty 200 OK."""

    def __init__(self, url="", *args, **kwargs):
        object.__setattr__(self, "_sb_path", f"Response({url!r})")
        self.url = url if isinstance(url, str) else str(url)
        self.status_code = 200
        self.ok = True
        self.reason = "OK"
        self.content = b""
        self.text = ""
        self.encoding = "utf-8"
        self.headers = {}
        self.raw = io.BytesIO(b"")

    def raise_for_status(self):
        return None

    def iter_content(self, chunk_size=1, decode_unicode=False):
        return iter(())

    def iter_lines(self, *args, **kwargs):
        return iter(())

    def close(self):
        return None


class StandinMeta(type):
    """Metaclass of the stand-in classes: class-level attribute access gives dummies (or a
    checked loader such as ``from_pretrained``), arithmetic on the class gives a dummy."""

    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        checker = _loader_check(cls, name)
        if checker is not None or name.startswith("from_") or name in ("load", "from_hparams"):
            def loader(*args, **kwargs):
                if checker is not None:
                    checker(args, kwargs)
                return _new(cls, f"{cls.__name__}.{name}(...)")
            loader.__name__ = name
            return loader
        return _new(Dummy, f"{cls.__module__}.{cls.__name__}.{name}")

    def __call__(cls, *args, **kwargs):
        check = cls.__dict__.get("_sb_ctor_check")
        if check is not None:
            check(args, kwargs)
        if (len(args) == 1 and not kwargs and isinstance(args[0], types.FunctionType)
                and cls.__name__[:1].islower() and cls.__dict__.get("_sb_standin")):
            return args[0]  # a decorator used without parentheses (@torch.no_grad)
        return super().__call__(*args, **kwargs)

    def __repr__(cls):
        return f"<class '{cls.__module__}.{cls.__name__}'>"

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _dummy_op
    __truediv__ = __rtruediv__ = __or__ = __ror__ = __and__ = __rand__ = _dummy_op

    def __getitem__(cls, key):
        return cls  # typing-style subscription (Tensor[...]) or enum lookup


def standin_class(module: str, name: str, base=Dummy, **namespace):
    """A stand-in class; names of exceptions (``...Error``/``Exception``/``Warning``) are
    Exception subclasses, so ``except requests.HTTPError:`` works."""
    namespace.update({"__module__": module, "__qualname__": name, "_sb_standin": True,
                      "_sb_library": module.partition(".")[0]})
    if base is Dummy and name.endswith(("Error", "Exception", "Warning", "Exit", "Interrupt")):
        base = Exception
    return StandinMeta(name, (base,), namespace)


# --- checks -----------------------------------------------------------------------------------

_LOCAL_PREFIXES = (".", "/", "~")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _value(args, kwargs, pos, names):
    for name in names:
        if name in kwargs:
            return kwargs[name]
    if pos is not None and len(args) > pos:
        return args[pos]
    return None


def check_hf(value, *, loose=False, prefixes=("",), what="model"):
    """Raises HubNotFoundError unless `value` (when a str) is a Hugging Face id the API database
    knows or an existing local path. `loose`: only ``owner/name`` strings are checked."""
    if not isinstance(value, str):
        return
    v = value.strip()
    if "@" in v and not v.startswith(_LOCAL_PREFIXES):
        v = v.split("@", 1)[0]  # a revision: "owner/name@v2.1" (pyannote, hf:// urls)
    if v.startswith(_LOCAL_PREFIXES) or os.path.isabs(v):
        if os.path.exists(os.path.expanduser(v)):
            return
        raise HubNotFoundError(f"Incorrect path_or_model_id: {v!r}. Please provide either the path "
                               f"to a local folder or the repo_id of a {what} on the Hub.")
    if loose and not _REPO_ID.match(v):
        return
    if os.path.exists(v):
        return
    known = KNOWN.get("huggingface", ())
    if any(hubs.hf_key(p + v) in known for p in prefixes):
        return
    bare_names, owners = KNOWN.get("huggingface_bare", ((), ()))
    owner, _, name = hubs.hf_key(v).partition("/")
    if name and name in bare_names and owner in owners:  # the database omits the owner
        return
    raise HubNotFoundError(f"404 Client Error: Repository Not Found for url: "
                           f"https://huggingface.co/{v} ({v!r} is not a {what} id of the "
                           f"Hugging Face API database)")


def check_tf(handle):
    if not isinstance(handle, str):
        return
    h = handle.strip()
    key = hubs.tf_key(h)
    if not re.match(r"^(?:https?|gs)://", h) and not key.startswith(("tfhub.dev/",
                                                                       "kaggle.com/")):
        if os.path.exists(h):
            return
        raise HubNotFoundError(f"SavedModel file does not exist at: {h}")
    if key not in KNOWN.get("tensorflowhub", ()):
        raise HubNotFoundError(f"HTTP Error 404: Not Found: {h} (not a handle of the "
                               f"TensorFlow Hub API database)")


def _arg_check(pos, *names, loose=False, prefixes=("",), kind="hf"):
    def check(args, kwargs):
        value = _value(args, kwargs, pos, names)
        if kind == "tf":
            check_tf(value)
        else:
            check_hf(value, loose=loose, prefixes=prefixes)
    return check


_HF_ID_KWS = ("pretrained_model_name_or_path", "model_name_or_path", "model_id", "repo_id")
# Class methods that load from a hub, per library: {library: {method: check}}.
_LOADER_METHODS = {
    "transformers": {"from_pretrained": _arg_check(0, *_HF_ID_KWS)},
    "diffusers": {"from_pretrained": _arg_check(0, *_HF_ID_KWS)},
    "sentence_transformers": {"from_pretrained": _arg_check(0, *_HF_ID_KWS)},
    "optimum": {"from_pretrained": _arg_check(0, *_HF_ID_KWS, "model_id")},
    "pyannote": {"from_pretrained": _arg_check(0, "checkpoint", "checkpoint_path", *_HF_ID_KWS)},
    "asteroid": {"from_pretrained": _arg_check(0, "pretrained_model_conf_or_path", *_HF_ID_KWS)},
    "espnet2": {"from_pretrained": _arg_check(0, "model_tag", *_HF_ID_KWS, loose=True)},
    "controlnet_aux": {"from_pretrained": _arg_check(0, *_HF_ID_KWS)},
    "speechbrain": {"from_hparams": _arg_check(0, "source", loose=True)},
    "flair": {"load": _arg_check(0, "model_path", "model", loose=True)},
    "timm": {},
    "keras": {},
    "tuneavideo": {"from_pretrained": _arg_check(0, *_HF_ID_KWS)},
}
# Constructors that load a model: {(library, class name): check}.
_ST_PREFIXES = ("", "sentence-transformers/")
_CTOR_CHECKS = {
    ("sentence_transformers", "SentenceTransformer"):
        _arg_check(0, "model_name_or_path", prefixes=_ST_PREFIXES),
    ("sentence_transformers", "CrossEncoder"):
        _arg_check(0, "model_name", "model_name_or_path", prefixes=_ST_PREFIXES),
    ("ultralyticsplus", "YOLO"): _arg_check(0, "model", loose=True),
    ("huggingsound", "SpeechRecognitionModel"): _arg_check(0, "model_path", loose=True),
    ("text2vec", "SentenceModel"): _arg_check(0, "model_name_or_path", loose=True),
    ("InstructorEmbedding", "INSTRUCTOR"): _arg_check(0, "model_name_or_path", loose=True),
    ("promptcap", "PromptCap"): _arg_check(0, "ckpt", loose=True),
    ("faster_whisper", "WhisperModel"): _arg_check(0, "model_size_or_path", loose=True),
    ("parrot", "Parrot"): _arg_check(0, "model_tag", loose=True),
    ("pyannote", "Inference"): _arg_check(0, "model", loose=True),   # loads a hub model by id
    ("happytransformer", "*"): _arg_check(1, "model_name", loose=True),
    ("tensorflow_hub", "KerasLayer"): _arg_check(0, "handle", kind="tf"),
    ("tensorflow_hub", "Module"): _arg_check(0, "spec", kind="tf"),
}


def _file_check(function):
    """huggingface_hub's ``hf_hub_download``/``hf_hub_url(repo_id, filename, *, ...)``: both
    parameters are required (a TypeError without the file name), then the id is looked up."""
    def check(args, kwargs):
        if len(args) > 2:
            raise StandinTypeError(f"{function}() takes 2 positional arguments but {len(args)} "
                                   f"were given")
        missing = [k for k in ("repo_id", "filename")[len(args):] if k not in kwargs]
        if missing:
            raise StandinTypeError(f"{function}() missing {len(missing)} required positional "
                                   f"argument(s): {', '.join(map(repr, missing))}")
        check_hf(_value(args, kwargs, 0, ("repo_id",)), loose=True)
    return check


# Functions that download from a hub: {(library, function name): check}.
_FUNC_CHECKS = {
    ("huggingface_hub", "hf_hub_download"): _file_check("hf_hub_download"),
    ("huggingface_hub", "snapshot_download"): _arg_check(0, "repo_id", loose=True),
    ("huggingface_hub", "hf_hub_url"): _file_check("hf_hub_url"),
    ("huggingface_hub", "from_pretrained_keras"): _arg_check(0, *_HF_ID_KWS),
    ("rl_zoo3", "load_from_hub"): _arg_check(0, "repo_id", loose=True),
    ("huggingface_sb3", "load_from_hub"): _arg_check(0, "repo_id", loose=True),
    ("fairseq", "load_model_ensemble_and_task_from_hf_hub"):
        _arg_check(0, "model_id", loose=True),
    ("yolov5", "load"): _arg_check(0, "model_path", loose=True),
    ("skops", "download"): _arg_check(0, "repo_id", loose=True),
    ("timm", "create_model"): None,  # handled in _timm_check
    ("joblib", "load"): None,  # handled in _local_file_check
    ("tensorflow_hub", "load"): _arg_check(0, "handle", kind="tf"),
    ("tensorflow_hub", "resolve"): _arg_check(0, "handle", kind="tf"),
    ("tensorflow_hub", "load_module_spec"): _arg_check(0, "path", kind="tf"),
}


def _timm_check(args, kwargs):
    """timm.create_model: ``hf_hub:owner/name`` or a registry name, both looked up."""
    name = _value(args, kwargs, 0, ("model_name",))
    if isinstance(name, str):
        for prefix in ("hf_hub:", "hf-hub:", "timm/"):
            if name.startswith(prefix):
                name = name[len(prefix):] if prefix != "timm/" else name
                break
        check_hf(name, prefixes=("", "timm/"))


_FUNC_CHECKS[("timm", "create_model")] = _timm_check


def _local_file_check(args, kwargs):
    """joblib.load(filename) / torch.load(f): a named file must exist (the named input files of
    a snippet do). `torch.load('pytorch/vision', pretrained=True)`, a hub id given to the file
    loader, fails here as it does in torch."""
    path = _value(args, kwargs, 0, ("filename", "f"))
    if isinstance(path, (str, bytes, os.PathLike)) and not os.path.exists(path):
        raise HubNotFoundError(f"[Errno 2] No such file or directory: {os.fsdecode(path)!r}")


_FUNC_CHECKS[("joblib", "load")] = _local_file_check
_FUNC_CHECKS[("torch", "load")] = _local_file_check


def _loader_check(cls, name):
    lib = getattr(cls, "_sb_library", None)
    return _LOADER_METHODS.get(lib, {}).get(name) if lib else None


def _signature_checked(fn):
    """Calls `fn` after binding the arguments to its signature; a mismatch is a
    StandinTypeError (as the real function's TypeError)."""
    sig = inspect.signature(fn)

    def wrapper(*args, **kwargs):
        try:
            sig.bind(*args, **kwargs)
        except TypeError as e:
            raise StandinTypeError(f"{fn.__name__}() {e}") from None
        return fn(*args, **kwargs)
    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn
    return wrapper


# --- library specials -------------------------------------------------------------------------

_TRANSLATION = re.compile(r"^translation(_[A-Za-z-]+_to_[A-Za-z-]+)?$")


@_signature_checked
def pipeline(task=None, model=None, config=None, tokenizer=None, feature_extractor=None,
             image_processor=None, processor=None, framework=None, revision=None, use_fast=True,
             token=None, device=None, device_map=None, torch_dtype=None, dtype=None,
             trust_remote_code=None, model_kwargs=None, pipeline_class=None, **kwargs):
    """transformers.pipeline: checks the task and every model id argument."""
    if task is None and model is None:
        raise StandinRuntimeError("Impossible to instantiate a pipeline without either a task or "
                                  "a model being specified. Please provide a task class or a "
                                  "model")
    if isinstance(task, str) and task not in TASKS and not _TRANSLATION.match(task):
        raise StandinValueError(f"Unknown task {task}, available tasks are "
                                f"{sorted(TASKS)[:12]}... and translation_XX_to_YY")
    if task is not None and not isinstance(task, (str, Dummy)):
        raise StandinTypeError(f"task must be a str, not {type(task).__name__}")
    for value in (model, tokenizer, feature_extractor, image_processor, processor, config):
        check_hf(value)
    return _new(_PIPELINE_CLASS, f"pipeline({task!r}, model={model!r})")


_PIPELINE_CLASS = standin_class("transformers", "Pipeline", __call__=_pipeline_call)


def _torch_repo(repo_or_dir, source):
    if source not in ("github", "local"):
        raise StandinValueError(f'Unknown source: "{source}". Allowed values: "github" | '
                                f'"local".')
    if not isinstance(repo_or_dir, str):
        return None
    if source == "local":
        if not os.path.isdir(repo_or_dir):
            raise HubNotFoundError(f"[Errno 2] No such file or directory: "
                                   f"'{repo_or_dir}/hubconf.py'")
        return None
    key = hubs.torch_repo_key(repo_or_dir)
    if key not in KNOWN.get("torchhub", {}):
        raise HubNotFoundError(f"HTTP Error 404: Not Found (https://github.com/"
                               f"{repo_or_dir.split(':')[0]} is not a repository of the "
                               f"TorchHub API database)")
    return key


@_signature_checked
def hub_load(repo_or_dir, model, *args, source="github", trust_repo=None, force_reload=False,
             verbose=True, skip_validation=False, **kwargs):
    """torch.hub.load: the repository and the entry point must exist."""
    key = _torch_repo(repo_or_dir, source)
    if key is not None and isinstance(model, str) and model not in KNOWN["torchhub"][key]:
        raise EntryPointNotFoundError(f"Cannot find callable {model} in hubconf")
    return _new(Dummy, f"torch.hub.load({repo_or_dir!r}, {model!r})")


@_signature_checked
def hub_list(github, force_reload=False, skip_validation=False, trust_repo=None, verbose=True):
    """torch.hub.list: the entry points of a known repository."""
    key = _torch_repo(github, "github")
    return sorted(KNOWN["torchhub"][key]) if key else []


@_signature_checked
def hub_help(github, model, force_reload=False, skip_validation=False, trust_repo=None):
    key = _torch_repo(github, "github")
    if key is not None and isinstance(model, str) and model not in KNOWN["torchhub"][key]:
        raise EntryPointNotFoundError(f"Cannot find callable {model} in hubconf")
    return f"{model}: a model of {github}"


def _false(*args, **kwargs):
    return False


def _zero(*args, **kwargs):
    return 0


def _request(method):
    def request(url="", *args, **kwargs):
        return Response(url)
    request.__name__ = method
    return request


_SPECIALS = {
    ("transformers", "pipeline"): pipeline,
    ("transformers.pipelines", "pipeline"): pipeline,
    ("torch.hub", "load"): hub_load,
    ("torch.hub", "list"): hub_list,
    ("torch.hub", "help"): hub_help,
    ("torch.cuda", "is_available"): _false,
    ("torch.cuda", "device_count"): _zero,
    ("torch.backends.mps", "is_available"): _false,
    ("torch.backends.cuda", "is_built"): _false,
    ("requests", "Response"): Response,
    ("requests.models", "Response"): Response,
}
for _m in ("get", "post", "put", "patch", "delete", "head", "options", "request"):
    _SPECIALS[("requests", _m)] = _request(_m)
    _SPECIALS[("requests.api", _m)] = _request(_m)


def make_attribute(module: str, name: str):
    """The stand-in object for ``module.name`` (a public name of the real module)."""
    special = _SPECIALS.get((module, name))
    if special is not None:
        return special
    lib = module.partition(".")[0]
    namespace = {}
    check = _CTOR_CHECKS.get((lib, name))
    if check is None and (lib, "*") in _CTOR_CHECKS and name[:1].isupper():
        check = _CTOR_CHECKS[(lib, "*")]
    if lib == "transformers" and name.endswith("Pipeline"):
        namespace["__call__"] = _pipeline_call
        if check is None:
            check = _arg_check(None, "model", "tokenizer")  # XxxPipeline(model="id")
    if check is None:
        check = _FUNC_CHECKS.get((lib, name))
    if check is not None:
        namespace["_sb_ctor_check"] = staticmethod(check)
    return standin_class(module, name, **namespace)


# --- modules and the import hook ------------------------------------------------------------

class StandinModule(types.ModuleType):
    """A stand-in module: exactly the real module's public names, created on first access."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        full = f"{self.__name__}.{name}"
        if (full in MODULES or full in OPEN) and name not in SHADOWED.get(self.__name__, ()):
            value = importlib.import_module(full)
        elif name in MODULES.get(self.__name__, ()) or (self.__name__ in OPEN
                                                        and name.isidentifier()):
            value = make_attribute(self.__name__, name)
        else:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        setattr(self, name, value)
        return value

    def __dir__(self):
        return sorted(MODULES.get(self.__name__, ()))


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        module = StandinModule(spec.name)
        for key, value in VALUES.get(spec.name, {}).items():
            setattr(module, key, value)
        return module

    def exec_module(self, module):
        module.__file__ = None


_LOADER = _Loader()


class StandinFinder(importlib.abc.MetaPathFinder):
    """Serves the stand-in libraries, lets the standard library and `real` top-level packages
    through, and refuses everything else (ModuleNotFoundError, as if not installed). Top-level
    names in `blocked` call `on_blocked(name)` (which should raise)."""

    def __init__(self, real=("numpy",), blocked=(), on_blocked=None):
        self.real = frozenset(real) | frozenset(sys.stdlib_module_names)
        self.blocked = frozenset(blocked)
        self.on_blocked = on_blocked

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in self.blocked or fullname in self.blocked:
            if self.on_blocked is not None:
                self.on_blocked(fullname)
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        if top in TOPS:
            if fullname in MODULES or fullname in OPEN:
                return importlib.machinery.ModuleSpec(fullname, _LOADER,
                                                      is_package=fullname in PACKAGES)
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        if top in self.real:
            return None
        raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)


def install(**kwargs) -> StandinFinder:
    """Loads the data and puts the stand-in finder first on sys.meta_path."""
    load()
    finder = StandinFinder(**kwargs)
    sys.meta_path.insert(0, finder)
    return finder


# Lower-case API functions that snippets use without importing them (a missing import).
API_FUNCTIONS = frozenset({
    "pipeline", "load_dataset", "hf_hub_download", "snapshot_download", "cached_download",
    "hf_hub_url", "from_pretrained_keras", "load_model_ensemble_and_task_from_hf_hub",
    "load_from_hub", "load_image", "export_to_video", "make_image_grid", "cosine_similarity",
    "set_seed", "urlopen", "urlretrieve", "render_result", "save_videos_grid", "load_model",
    "read_image", "defaultdict", "namedtuple"})
# Usual aliases of modules (``import numpy as np``).
MODULE_ALIASES = frozenset({"np", "pd", "tf", "hub", "plt", "nn", "F", "sf", "cv2", "Image",
                            "transforms", "optim", "T", "K", "keras", "layers", "sk"})


_ALIAS_IMPORTS = {"torch": "import torch", "tf": "import tensorflow as tf",
                  "hub": "import tensorflow_hub as hub", "np": "import numpy as np",
                  "pd": "import pandas as pd", "tensorflow": "import tensorflow",
                  "tensorflow_hub": "import tensorflow_hub", "torchvision": "import torchvision",
                  "transformers": "import transformers", "Image": "from PIL import Image",
                  "requests": "import requests", "json": "import json", "os": "import os"}
_IMPORT_ORDER = ("transformers", "diffusers", "sentence_transformers", "huggingface_hub",
                 "datasets", "torch", "torchvision", "torchaudio", "tensorflow_hub", "tensorflow")


def implied_imports(call: str, free: set) -> str:
    """Import lines that bind the free names of a bare api_call, or ""."""
    load()
    lines = []
    for name in sorted(free):
        if name in _ALIAS_IMPORTS:
            lines.append(_ALIAS_IMPORTS[name])
            continue
        libs = [lib for lib in _IMPORT_ORDER if name in MODULES.get(lib, ())]
        libs += sorted(t for t in TOPS if t not in libs and name in MODULES.get(t, ()))
        if libs:
            lines.append(f"from {libs[0]} import {name}")
    return "".join(line + "\n" for line in lines)


def api_names() -> frozenset:
    """Names that denote an API object rather than an input of a snippet: module names (the
    stand-in libraries, the standard library, usual aliases), the classes (names with an upper
    case letter) the stand-in libraries' top-level modules export, and `API_FUNCTIONS`. A free
    variable of a snippet with one of these names is a missing import."""
    load()
    names = set(TOPS) | set(sys.stdlib_module_names) | MODULE_ALIASES | API_FUNCTIONS
    for top in TOPS:
        names |= {n for n in MODULES.get(top, ()) if n[:1].isupper() and n not in TOPS}
    for module in ("io", "pathlib", "collections", "PIL.Image"):
        names |= {n for n in MODULES.get(module, ()) if n[:1].isupper()}
        if module in sys.modules:
            names |= {n for n in dir(sys.modules[module]) if n[:1].isupper()}
    return frozenset(names)

