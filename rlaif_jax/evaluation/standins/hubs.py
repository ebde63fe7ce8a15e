"""The model ids each hub knows, read from the vendored Gorilla API databases.

The sandbox's stand-ins accept a model id only if the API database of its hub mentions it, the
way a hub answers 404 for a repository that does not exist:

* Hugging Face: every quoted ``owner/name`` string in an entry (api_call, api_name,
  example_code, api_arguments), and every quoted string passed as a model id
  (``from_pretrained('gpt2')``, ``model='t5-small'``, ``source=...``, ``repo_id=...``) there,
  and ``owner/name`` ids passed unquoted to ``from_pretrained(`` (some example code lost its
  quotes).
  Compared case-insensitively, as the Hub resolves ids. The database names a few models without
  their owner (``api_name`` ``ConvTasNet_Libri3Mix_sepclean_8k``, no ``owner/`` id anywhere in
  the database): for those, ``owner/name`` is accepted when the owner publishes other models of
  the database (`bare_huggingface_names`).
* TorchHub: ``torch.hub.load(repo_or_dir, model)`` pairs in api_call and example_code; the repo
  is ``owner/name`` (the ``:ref`` suffix is ignored, case-insensitive), the entry point name is
  case-sensitive.
* TensorFlow Hub: every quoted ``https://tfhub.dev/...`` (or kaggle.com/models, storage) handle,
  compared without scheme, ``www.``, query and trailing slash, case-insensitively.
"""

from __future__ import annotations

import json
import re

_QUOTED = re.compile(r"""(['"])([^'"\n]{1,200}?)\1""")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_SIMPLE_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*$")
_ID_ARG = re.compile(
    r"""(?:from_pretrained|from_hparams|SentenceTransformer|CrossEncoder|YOLO|"""
    r"""SpeechRecognitionModel|create_model)\(\s*(['"])([^'"\n]+)\1"""
    r"""|\b(?:model|tokenizer|source|repo_id|feature_extractor|image_processor|processor|"""
    r"""model_name|model_id|model_name_or_path|pretrained_model_name_or_path|checkpoint)"""
    r"""\s*=\s*(['"])([^'"\n]+)\3""")
_UNQUOTED_ID_ARG = re.compile(r"""(?:from_pretrained|from_hparams)\(\s*(?:\w+\s*=\s*)?"""
                              r"""([A-Za-z0-9][\w.\-]*/[\w.\-]+)\s*[,)]""")
_HUB_LOAD = re.compile(
    r"""torch\.hub\.load\(\s*(?:repo_or_dir\s*=\s*)?(['"])([^'"]+)\1\s*,\s*"""
    r"""(?:model\s*=\s*)?(['"])([^'"]+)\3""")
_TF_HANDLE = re.compile(r"""(?:https?://|gs://)[^\s'"\\)]+""")


def _text(entry: dict) -> str:
    return "\n".join(json.dumps(entry.get(k), ensure_ascii=False) if not isinstance(
        entry.get(k), str) else entry[k] for k in ("api_call", "api_name", "example_code",
                                                     "api_arguments"))


def hf_key(model_id: str) -> str:
    return model_id.strip().lower()


def torch_repo_key(repo: str) -> str:
    return repo.strip().split(":", 1)[0].strip("/").lower()


def tf_key(handle: str) -> str:
    h = handle.strip().split("?", 1)[0].rstrip("/").lower()
    h = re.sub(r"^(?:https?|gs)://", "", h)
    return h[4:] if h.startswith("www.") else h


def huggingface_ids(entries) -> set[str]:
    ids = set()
    for entry in entries:
        text = re.sub(r"hf[_-]hub:", "", _text(entry))  # timm's "hf_hub:owner/name"
        for _, value in _QUOTED.findall(text):
            if _REPO_ID.match(value.strip()):
                ids.add(hf_key(value))
        for m in _ID_ARG.finditer(text):
            value = (m.group(2) or m.group(4) or "").strip()
            if _REPO_ID.match(value) or _SIMPLE_ID.match(value):
                ids.add(hf_key(value))
        for m in _UNQUOTED_ID_ARG.finditer(text):  # example code with lost quotes
            ids.add(hf_key(m.group(1)))
        name = str(entry.get("api_name", "")).strip()
        if _REPO_ID.match(name):
            ids.add(hf_key(name))
    return ids


def bare_huggingface_names(entries, ids: set[str]) -> tuple[set[str], set[str]]:
    """(names, owners): the ``api_name`` of the entries that give no owner for their model (the
    name is not the tail of any known ``owner/name`` id), and the owners of the known ids; both
    lower case."""
    tails = {i.split("/", 1)[1] for i in ids if "/" in i}
    names = set()
    for entry in entries:
        name = str(entry.get("api_name", "")).strip()
        if _SIMPLE_ID.match(name) and hf_key(name) not in tails:
            names.add(hf_key(name))
    return names, {i.split("/", 1)[0] for i in ids if "/" in i}


def torchhub_models(entries) -> dict[str, set[str]]:
    models: dict[str, set[str]] = {}
    for entry in entries:
        for m in _HUB_LOAD.finditer(_text(entry).replace("\\'", "'").replace('\\"', '"')):
            models.setdefault(torch_repo_key(m.group(2)), set()).add(m.group(4).strip())
    return models


def tfhub_handles(entries) -> set[str]:
    handles = set()
    for entry in entries:
        for url in _TF_HANDLE.findall(_text(entry)):
            key = tf_key(url)
            if key.startswith(("tfhub.dev/", "kaggle.com/models/", "storage.googleapis.com/")):
                handles.add(key)
    return handles


def load_known() -> dict:
    """{"huggingface": set of ids, "huggingface_bare": (names, owners) of
    `bare_huggingface_names`, "torchhub": {repo: set of models}, "tensorflowhub": set}."""
    from rlaif_jax.data import gorilla
    db = {hub: gorilla.load_api_db(gorilla.api_db_path(hub)) for hub in gorilla.HUBS}
    ids = huggingface_ids(db["huggingface"])
    return {"huggingface": ids,
            "huggingface_bare": bare_huggingface_names(db["huggingface"], ids),
            "torchhub": torchhub_models(db["torchhub"]),
            "tensorflowhub": tfhub_handles(db["tensorflowhub"])}


def invent_ids(code: str, known: dict | None = None) -> str:
    """`code` with every string literal that is a model id the API databases know (a Hugging
    Face id, a TorchHub repository or entry point, a TF Hub handle) replaced by an invented id
    (the measure's negative control: such code should not run)."""
    import ast
    known = known or load_known()
    torch_models = {m for models in known["torchhub"].values() for m in models}
    bare_names, owners = known.get("huggingface_bare", ((), ()))
    try:
        literals = {node.value for node in ast.walk(ast.parse(code))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    except (SyntaxError, ValueError):
        literals = {m.group(2) for m in _QUOTED.finditer(code)}
    for value in sorted(literals, key=len, reverse=True):
        v = value.strip()
        if not v or "\n" in v:
            continue
        tail = re.sub(r"[^\w.\-]", "", v.rstrip("/").split("/")[-1]) or "model"
        owner, _, name = hf_key(v).partition("/")
        if v.startswith(("http://", "https://", "gs://")) and tf_key(v) in known["tensorflowhub"]:
            new = f"https://tfhub.dev/invented-org/{tail}-x9/1"
        elif (hf_key(v.split("@")[0]) in known["huggingface"]
              or torch_repo_key(v) in known["torchhub"]
              or name in bare_names and owner in owners):
            new = f"invented-org/{tail}-x9"
        elif v in torch_models:
            new = f"{v}_invented_x9"
        else:
            continue
        code = re.sub(r"""(['"])""" + re.escape(value) + r"""\1""",
                      lambda m: m.group(1) + new + m.group(1), code)
    return code
