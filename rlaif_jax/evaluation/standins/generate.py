"""Regenerates `_apis.py`: the public module trees and names of the libraries the stand-ins fake.

    python -m rlaif_jax.evaluation.standins.generate [--cache DIR] [--check]

The stand-ins must refuse what the real libraries refuse (``from transformers import NoSuchThing``
is an ImportError), so they need each real library's modules and public names. They come from:

* **installed** packages (the project's venv: torch, transformers 5, Pillow, pandas, datasets,
  huggingface_hub, joblib, matplotlib, scipy): their source tree is parsed statically (every
  module, see below) and, for the modules ``import <lib>`` loads, ``dir()`` of the imported
  module is added (names made by C extensions or at import time, e.g. ``torch.zeros``).
* **wheels / sdists** from PyPI for libraries that are not installed or that were installed in
  another major version (transformers 4.57 beside the installed 5.x, as APIBench was written
  for 4.x: the two name sets are united). ``pip download --no-deps`` fetches the pinned
  versions in `LIBRARIES` into a cache directory; nothing is imported or installed.

Static parsing of a module collects what ``dir(module)`` would hold: the names bound at module
level in every branch (``def``/``class``/assignments/imports, including those under
``if TYPE_CHECKING:`` which is how lazy packages such as transformers and diffusers declare
their names), ``from x import *`` resolved recursively through ``__all__`` of the target, and
the names listed in a transformers-style ``_import_structure`` dict. ``.pyi`` stubs are read
too (cv2, librosa). Modules whose path has a private component (``_x``) or a test directory are
not exported (but are read to resolve star imports). Extension modules without a stub have
unknown names: any attribute is accepted there. So are the deep modules whose names are not
kept, to keep the file small (see `_HEAVY`/`_DEEP`: names are kept for each library's package
and its children or grandchildren, and for every module the vendored dataset imports).

Renames: TensorFlow's public tree ``tensorflow._api.v2.<m>`` is exported as ``tensorflow.<m>``
and ``keras._tf_keras.keras`` as ``tensorflow.keras`` (what ``tf.keras`` resolves to in TF
2.16+).

The output `_apis.py` holds ``MODULES_BLOB`` (compressed: module path -> space separated public
names), ``OPEN_BLOB`` (compressed: the other modules' paths), ``VALUES`` (simple literal
attributes such as ``__version__``), ``PIPELINE_TASKS`` (the task names transformers'
``pipeline()`` accepted in 4.30, 4.57 or the installed 5.x: keys of SUPPORTED_TASKS and
TASK_ALIASES) and ``SOURCES`` (where each library's names came from). Regenerating needs PyPI access (pip download) and the venv's
torch/transformers; ``--check`` only reports what would change. Libraries that are installed from
GitHub rather than PyPI (and fairseq's main branch) are not generated: their names are read by
hand into `_supplement`, which `runtime.load` merges with this data.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import pathlib
import pprint
import re
import subprocess
import sys
import tarfile
import zipfile
import zlib
import base64

HERE = pathlib.Path(__file__).resolve().parent
OUTPUT = HERE / "_apis.py"

# (import names, how to get them, PyPI requirement for "wheel", note).
# "installed": parse the installed source tree + dir() of the imported modules.
# "wheel": parse the downloaded distribution (pinned), no import.
LIBRARIES: list[tuple[tuple[str, ...], str, str]] = [
    (("torch",), "installed", "torch"),
    (("transformers",), "installed", "transformers"),
    (("transformers",), "wheel", "transformers==4.57.6"),
    (("transformers",), "wheel", "transformers==4.30.2"),  # APIBench's time (mid 2023)
    (("PIL",), "installed", "pillow"),
    (("PIL",), "wheel", "pillow==9.5.0"),  # mid 2023 (Image.ANTIALIAS)
    (("pandas",), "installed", "pandas"),
    (("datasets",), "installed", "datasets"),
    (("huggingface_hub",), "installed", "huggingface_hub"),
    (("huggingface_hub",), "wheel", "huggingface_hub==0.16.4"),  # mid 2023 (cached_download)
    (("joblib",), "installed", "joblib"),
    (("matplotlib",), "installed", "matplotlib"),
    (("scipy",), "installed", "scipy"),
    (("diffusers",), "wheel", "diffusers==0.42.1"),
    (("diffusers",), "wheel", "diffusers==0.17.1"),  # mid 2023
    (("sentence_transformers",), "wheel", "sentence-transformers==6.2.0"),
    (("sentence_transformers",), "wheel", "sentence-transformers==2.2.2"),  # mid 2023
    (("torchvision",), "wheel", "torchvision==0.29.1"),
    (("torchaudio",), "wheel", "torchaudio==2.11.0"),
    (("tensorflow",), "wheel", "tensorflow-cpu==2.21.0"),
    (("keras",), "wheel", "keras==3.15.1"),
    (("tensorflow_hub",), "wheel", "tensorflow-hub==0.16.1"),
    (("requests",), "wheel", "requests==2.34.2"),
    (("fairseq",), "wheel", "fairseq==0.12.2"),
    (("speechbrain",), "wheel", "speechbrain==1.1.2"),
    (("speechbrain",), "wheel", "speechbrain==0.5.16"),  # mid 2023 (speechbrain.pretrained)
    (("pyannote",), "wheel", "pyannote.audio==4.0.7"),
    (("pyannote",), "wheel", "pyannote.audio==3.1.1"),  # 2023
    (("pyannote",), "wheel", "pyannote.core==6.1.0"),
    (("flair",), "wheel", "flair==0.15.1"),
    (("ultralyticsplus",), "wheel", "ultralyticsplus==0.1.0"),
    (("controlnet_aux",), "wheel", "controlnet-aux==0.0.10"),
    (("soundfile",), "wheel", "soundfile==0.14.0"),
    (("librosa",), "wheel", "librosa==0.11.0"),
    (("cv2",), "wheel", "opencv-python==5.0.0.93"),
    (("sklearn",), "wheel", "scikit-learn==1.9.1"),
    (("IPython",), "wheel", "ipython==9.18.1"),
    (("huggingsound",), "wheel", "huggingsound==0.1.6"),
    (("stable_baselines3",), "wheel", "stable-baselines3==2.9.2"),
    (("timm",), "wheel", "timm==1.0.31"),
    (("asteroid",), "wheel", "asteroid==0.7.0"),
    (("rl_zoo3",), "wheel", "rl-zoo3==2.9.2"),
    (("espnet2", "espnet"), "wheel", "espnet==202511"),
    (("espnet_model_zoo",), "wheel", "espnet-model-zoo==0.1.7"),
    (("skops",), "wheel", "skops==0.16.0"),
    (("skops",), "wheel", "skops==0.6.0"),  # mid 2023 (skops.hub_utils)
    (("optimum",), "wheel", "optimum==2.3.0"),
    (("optimum",), "wheel", "optimum==1.8.8"),  # mid 2023 (optimum.onnxruntime)
    (("decord",), "wheel", "decord==0.6.0"),
    (("dabl",), "wheel", "dabl==0.3.2"),
    (("pydub",), "wheel", "pydub==0.25.1"),
    (("huggingface_sb3",), "wheel", "huggingface-sb3==3.0"),
    (("gym",), "wheel", "gym==0.26.2"),
    (("modelscope",), "wheel", "modelscope==1.40.2"),
    (("yolov5",), "wheel", "yolov5==7.0.14"),
    (("clip",), "wheel", "openai-clip==1.0.1"),
    (("pytesseract",), "wheel", "pytesseract==0.3.13"),
    (("emoji",), "wheel", "emoji==2.16.0"),
    (("germansentiment",), "wheel", "germansentiment==1.1.0"),
    (("deepmultilingualpunctuation",), "wheel", "deepmultilingualpunctuation==1.0.1"),
    (("happytransformer",), "wheel", "happytransformer==3.0.1"),
    (("text2vec",), "wheel", "text2vec==1.3.8"),
    (("InstructorEmbedding",), "wheel", "InstructorEmbedding==1.0.1"),
    (("txtai",), "wheel", "txtai==9.14.0"),
    (("faster_whisper",), "wheel", "faster-whisper==1.2.1"),
    (("promptcap",), "wheel", "promptcap==1.0.3"),
    (("openai",), "wheel", "openai==3.54.0"),
    (("openai",), "wheel", "openai==0.27.8"),  # mid 2023 (openai.Completion)
]
# Libraries of `LIBRARIES` whose import the sandbox serves from the stand-ins; a top-level name
# not listed here and not in the standard library (or numpy) is not importable in the sandbox.
RENAMES = (("tensorflow._api.v2", "tensorflow"), ("keras._tf_keras.keras", "tensorflow.keras"))
# Model-zoo libraries with huge module trees: names kept for the package and its children only.
_HEAVY = {"transformers", "diffusers", "modelscope", "openai", "espnet2", "espnet", "txtai",
          "timm", "fairseq"}
# Deeper public API trees whose names are kept (prefix, max depth).
_DEEP = (("tensorflow.keras", 4), ("keras", 3), ("torch.nn", 3), ("torch.utils", 3),
         ("torchvision", 3), ("tensorflow.compat.v1", 3), ("sklearn", 2))
_EXCLUDED_PARTS = {"tests", "test", "testing", "benchmarks", "examples", "src"}
_EXT = re.compile(r"^([A-Za-z_]\w*)\.(?:cpython-[^.]*|abi3)?\.?so$|^([A-Za-z_]\w*)\.so$")


# --- static analysis ------------------------------------------------------------------------

class Tree:
    """Modules of a set of source roots and their statically bound names."""

    def __init__(self):
        self.files: dict[str, list[pathlib.Path]] = {}   # module -> .py/.pyi files
        self.packages: set[str] = set()
        self.extension: set[str] = set()                # modules that exist only as .so
        self._names: dict[str, tuple[set, list | None]] = {}
        self.objects: dict[str, set] = {}  # names bound to something else than a module
        self._busy: set[str] = set()
        self.values: dict[str, dict] = {}

    def add_root(self, directory: pathlib.Path, module: str) -> None:
        """Registers the package at `directory` as `module` (recursively)."""
        self.packages.add(module)
        for init in ("__init__.py", "__init__.pyi"):
            if (directory / init).is_file():
                self.files.setdefault(module, []).append(directory / init)
        for entry in sorted(directory.iterdir()):
            name = entry.name
            if entry.is_dir():
                if name.isidentifier() and any(entry.rglob("*.py*")) or any(entry.rglob("*.so")):
                    if name.isidentifier():
                        self.add_root(entry, f"{module}.{name}")
            elif name.endswith((".py", ".pyi")) and not name.startswith("__init__."):
                stem = name.rsplit(".", 1)[0]
                if stem.isidentifier():
                    self.files.setdefault(f"{module}.{stem}", []).append(entry)
            elif name.endswith(".so"):
                stem = name.split(".", 1)[0]
                if stem.isidentifier():
                    self.extension.add(f"{module}.{stem}")

    def add_module_file(self, path: pathlib.Path, module: str) -> None:
        self.files.setdefault(module, []).append(path)

    def modules(self) -> set[str]:
        return set(self.files) | self.packages | self.extension

    def names(self, module: str) -> tuple[set, list | None]:
        """(bound public-or-not names, __all__ or None) of `module`."""
        if module in self._names:
            return self._names[module]
        if module in self._busy:
            return set(), None
        self._busy.add(module)
        bound, all_names = set(), None
        for path in self.files.get(module, []):
            try:
                tree = ast.parse(path.read_bytes(), filename=str(path))
            except (SyntaxError, ValueError):
                continue
            b, a = self._scan(tree.body, module, path.name.startswith("__init__."))
            bound |= b
            if a is not None:
                all_names = (all_names or []) + [x for x in a if x not in (all_names or [])]
        self._busy.discard(module)
        self._names[module] = (bound, all_names)
        return bound, all_names

    def star(self, module: str) -> set:
        bound, all_names = self.names(module)
        if all_names is not None:
            return set(all_names)
        return {n for n in bound if not n.startswith("_")}

    def _resolve(self, module: str, is_package: bool, level: int, target: str | None) -> str:
        if not level:
            return target or ""
        parts = module.split(".")
        if not is_package:
            parts = parts[:-1]
        if level > 1:
            parts = parts[:len(parts) - (level - 1)]
        base = ".".join(parts)
        return f"{base}.{target}" if target else base

    def _scan(self, body, module, is_package):
        bound: set = set()
        all_names: list | None = None
        objects = self.objects.setdefault(module, set())

        def strings(node):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                return [e.value for e in node.elts
                        if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
                return strings(node.left) + strings(node.right)
            return []

        def targets(node):
            if isinstance(node, ast.Name):
                bound.add(node.id)
                objects.add(node.id)
            elif isinstance(node, (ast.Tuple, ast.List)):
                for e in node.elts:
                    targets(e)
            elif isinstance(node, ast.Starred):
                targets(node.value)

        def import_structure(node):
            # strings inside _import_structure literals / calls: exported names
            for sub in ast.walk(node):
                if isinstance(sub, (ast.List, ast.Tuple)):
                    bound.update(s for s in strings(sub) if s.isidentifier())

        def visit(stmts):
            nonlocal all_names
            for st in stmts:
                if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    bound.add(st.name)
                    objects.add(st.name)
                elif isinstance(st, ast.Import):
                    for a in st.names:
                        bound.add(a.asname or a.name.split(".")[0])
                elif isinstance(st, ast.ImportFrom):
                    src = self._resolve(module, is_package, st.level, st.module)
                    for a in st.names:
                        if a.name == "*":
                            if src in self.modules():
                                bound.update(self.star(src))
                        else:
                            bound.add(a.asname or a.name)
                            if f"{src}.{a.name}" not in self.modules():
                                objects.add(a.asname or a.name)
                elif isinstance(st, ast.Assign):
                    for t in st.targets:
                        targets(t)
                        if isinstance(t, ast.Name) and t.id == "__all__":
                            all_names = strings(st.value)
                        if isinstance(t, ast.Name) and t.id == "__version__" and \
                                isinstance(st.value, ast.Constant):
                            self.values.setdefault(module, {})["__version__"] = st.value.value
                        if (isinstance(t, ast.Name) and t.id == "_import_structure") or (
                                isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
                                and t.value.id == "_import_structure"):
                            import_structure(st.value)
                elif isinstance(st, ast.AnnAssign):
                    targets(st.target)
                elif isinstance(st, ast.AugAssign):
                    if isinstance(st.target, ast.Name) and st.target.id == "__all__":
                        all_names = (all_names or []) + strings(st.value)
                    elif isinstance(st.target, ast.Subscript) and isinstance(
                            st.target.value, ast.Name) and st.target.value.id == "_import_structure":
                        import_structure(st.value)
                elif isinstance(st, ast.Expr) and isinstance(st.value, ast.Call):
                    f = st.value.func
                    if isinstance(f, ast.Attribute) and f.attr in ("extend", "append", "update"):
                        owner = f.value
                        if isinstance(owner, ast.Name) and owner.id == "__all__":
                            for arg in st.value.args:
                                all_names = (all_names or []) + (
                                    [arg.value] if isinstance(arg, ast.Constant) else strings(arg))
                        elif (isinstance(owner, ast.Subscript) and isinstance(owner.value, ast.Name)
                              and owner.value.id == "_import_structure") or (
                                isinstance(owner, ast.Name) and owner.id == "_import_structure"):
                            for arg in st.value.args:
                                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                                    bound.add(arg.value)
                                else:
                                    import_structure(arg)
                elif isinstance(st, (ast.For, ast.AsyncFor)):
                    targets(st.target)
                    visit(st.body)
                    visit(st.orelse)
                elif isinstance(st, (ast.With, ast.AsyncWith)):
                    for item in st.items:
                        if item.optional_vars is not None:
                            targets(item.optional_vars)
                    visit(st.body)
                elif isinstance(st, ast.If):
                    visit(st.body)
                    visit(st.orelse)
                elif isinstance(st, ast.While):
                    visit(st.body)
                    visit(st.orelse)
                elif isinstance(st, ast.Try) or type(st).__name__ == "TryStar":
                    visit(st.body)
                    for h in st.handlers:
                        visit(h.body)
                    visit(st.orelse)
                    visit(st.finalbody)

        visit(body)
        return bound, all_names


# --- sources ------------------------------------------------------------------------------

def _download(requirement: str, cache: pathlib.Path) -> tuple[pathlib.Path, str]:
    """(extracted directory, file name) of the distribution of `requirement`, downloaded into
    `cache` when missing (``pip download --no-deps``; no install, nothing imported)."""
    norm = re.sub(r"[^A-Za-z0-9]+", "_", requirement).lower()
    dl = cache / "dists" / norm
    if not dl.is_dir() or not any(dl.iterdir()):
        dl.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl),
                        requirement], check=True)
    dist = sorted(dl.iterdir())[0]
    target = cache / "extracted" / norm
    if target.is_dir():
        return target, dist.name
    target.mkdir(parents=True)
    if dist.suffix == ".whl":
        with zipfile.ZipFile(dist) as zf:
            for member in zf.namelist():
                if member.endswith(".so") or ".so." in member:
                    (target / member).parent.mkdir(parents=True, exist_ok=True)
                    (target / member).write_bytes(b"")  # presence only
                elif member.endswith((".py", ".pyi")):
                    zf.extract(member, target)
    else:  # sdist: drop the top directory
        with tarfile.open(dist) as tf:
            for member in tf.getmembers():
                if member.isfile() and member.name.endswith((".py", ".pyi")):
                    parts = member.name.split("/", 1)
                    if len(parts) == 2:
                        out = target / parts[1]
                        out.parent.mkdir(parents=True, exist_ok=True)
                        out.write_bytes(tf.extractfile(member).read())
    return target, dist.name


def _roots(base: pathlib.Path, tops: tuple[str, ...]):
    """(directory or file, import name) of each top-level name of `tops` found under `base`."""
    out = []
    for top in tops:
        candidates = [base / top, base / f"{top}.py", base / "src" / top]
        for c in candidates:
            if c.exists():
                out.append((c, top))
                break
    return out


def _runtime_names(top: str) -> dict[str, set]:
    """dir() of `top` and of its public submodules that importing it loads."""
    importlib.import_module(top)
    extra = {"torch": ["torch.hub", "torch.nn", "torch.nn.functional", "torch.utils.data",
                       "torch.optim", "torch.cuda", "torch.cuda.amp", "torch.amp", "torch.jit",
                       "torch.onnx", "torch.backends.cudnn", "torch.linalg", "torch.fft",
                       "torch.distributions", "torch.utils.model_zoo", "torch.nn.init",
                       "torch.nn.utils", "torch.autograd", "torch.quantization"],
             "PIL": ["PIL.Image", "PIL.ImageDraw", "PIL.ImageFont", "PIL.ImageOps",
                     "PIL.ImageFilter", "PIL.ImageEnhance", "PIL.ImageChops"],
             "matplotlib": ["matplotlib.pyplot", "matplotlib.patches"],
             "scipy": ["scipy.spatial.distance", "scipy.special", "scipy.io.wavfile",
                       "scipy.signal", "scipy.stats"],
             "huggingface_hub": [], "pandas": [], "datasets": [], "joblib": []}
    for m in extra.get(top, []):
        try:
            importlib.import_module(m)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"  (could not import {m}: {e})", file=sys.stderr)
    out = {}
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == top or name.startswith(top + ".")):
            continue
        if any(p.startswith("_") for p in name.split(".")):
            continue
        try:
            names = {n for n in dir(mod) if not n.startswith("_")}
        except Exception:  # noqa: BLE001
            continue
        out[name] = names
    return out


def _public(module: str) -> bool:
    parts = module.split(".")
    return not any(p.startswith("_") or p in _EXCLUDED_PARTS for p in parts[1:])


def generate(cache: pathlib.Path) -> dict:
    modules: dict[str, set] = {}
    values: dict[str, dict] = {}
    open_modules: set[str] = set()
    sources: dict[str, list[str]] = {}
    tasks: set[str] = set()
    shadowed: dict[str, set] = {}  # module -> names that are objects, not the same-named submodule
    for tops, how, requirement in LIBRARIES:
        print(f"{'/'.join(tops)}: {how} {requirement}", file=sys.stderr)
        tree = Tree()
        if how == "installed":
            spec = importlib.util.find_spec(tops[0])
            base = pathlib.Path(spec.origin).parent.parent
            from importlib import metadata
            dist_version = metadata.version(requirement)
            where = f"installed {requirement}=={dist_version} (source parse + dir())"
        else:
            base, filename = _download(requirement, cache)
            where = f"PyPI {filename} (source parse of the distribution)"
        if tops == ("transformers",):
            tasks |= _pipeline_tasks(base / "transformers" / "pipelines" / "__init__.py")
        for path, top in _roots(base, tops):
            if path.is_dir():
                tree.add_root(path, top)
            else:
                tree.add_module_file(path, top)
                stub = path.with_suffix(".pyi")
                if stub.exists():
                    tree.add_module_file(stub, top)
        found = tree.modules()
        if not found:
            raise RuntimeError(f"{requirement}: none of {tops} found under {base}")
        lib_modules = {}
        for mod in found:
            bound, all_names = tree.names(mod)
            names = {n for n in bound if not n.startswith("_")} | set(all_names or [])
            # submodules are attributes of a package once imported; `from pkg import sub` works
            lib_modules[mod] = names
            if mod in tree.extension and mod not in tree.files:
                open_modules.add(mod)
        for mod in tree.modules():
            parent, _, child = mod.rpartition(".")
            if parent in lib_modules:
                lib_modules[parent].add(child)
        if how == "installed":
            for mod, names in _runtime_names(tops[0]).items():
                lib_modules.setdefault(mod, set()).update(names)
                if mod in open_modules:
                    open_modules.discard(mod)
        for mod, objs in tree.objects.items():
            for name in objs:
                if f"{mod}.{name}" in found:
                    shadowed.setdefault(mod, set()).add(name)
        for mod, val in tree.values.items():
            values.setdefault(mod, {}).update(val)
        if how == "installed":
            values.setdefault(tops[0], {})["__version__"] = str(
                getattr(sys.modules[tops[0]], "__version__", dist_version))
        for old, new in RENAMES:
            for mod in list(lib_modules):
                if mod == old or mod.startswith(old + "."):
                    renamed = new + mod[len(old):]
                    lib_modules.setdefault(renamed, set()).update(lib_modules[mod])
                    parent, _, child = renamed.rpartition(".")
                    if parent in lib_modules:
                        lib_modules[parent].add(child)
                    if mod in open_modules:
                        open_modules.add(renamed)
        renamed_tops = {new.split(".")[0] for old, new in RENAMES if old.split(".")[0] in tops}
        for mod, names in lib_modules.items():
            top = mod.split(".")[0]
            if (top in tops or (top in renamed_tops and any(
                    mod == new or mod.startswith(new + ".") for _, new in RENAMES))) \
                    and _public(mod):
                modules.setdefault(mod, set()).update(n for n in names if n.isidentifier())
        for top in tops:
            sources.setdefault(top, []).append(where)
    # a renamed tree may have been registered under a top-level name of another library
    # (tensorflow.keras from keras): keep only modules whose top-level is a library.
    # drop dangling attribute names that refer to private / excluded submodules: harmless.
    # Names are kept for the modules people import (shallow ones, the deeper public API trees in
    # _DEEP and every module the vendored dataset imports); the others keep only their path and
    # accept any attribute (listed in OPEN), which keeps the data file small.
    used = _dataset_modules()
    kept = {}
    for mod, names in modules.items():
        top = mod.split(".")[0]
        depth = mod.count(".")
        if (depth <= (1 if top in _HEAVY else 2) or mod in used
                or any(mod.startswith(p + ".") and depth <= d for p, d in _DEEP)) \
                and mod not in open_modules:
            kept[mod] = names
        else:
            open_modules.add(mod)
    open_modules = {m for m in open_modules if m in modules}
    return {"modules": kept, "values": values, "open": open_modules, "sources": sources,
            "tasks": tasks, "shadowed": {m: n for m, n in shadowed.items() if m in kept}}


def _pipeline_tasks(path: pathlib.Path) -> set[str]:
    """Task names (and aliases) that transformers' `pipeline()` accepts, from the keys of
    SUPPORTED_TASKS and TASK_ALIASES in its pipelines/__init__.py."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    tasks = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(
                isinstance(t, ast.Name) and t.id in ("SUPPORTED_TASKS", "TASK_ALIASES")
                for t in node.targets):
            tasks.update(k.value for k in node.value.keys
                         if isinstance(k, ast.Constant) and isinstance(k.value, str))
    if not tasks:
        raise RuntimeError(f"no pipeline task found in {path}")
    return tasks


def _dataset_modules() -> set[str]:
    """Every module (and its parent packages) imported by the vendored APIBench code and API
    databases' example code."""
    from rlaif_jax.data import gorilla
    texts = []
    for hub in gorilla.HUBS:
        for split in ("train", "eval"):
            try:
                records, _ = gorilla.load_apibench(gorilla.apibench_path(hub, split), hub)
            except FileNotFoundError:
                continue
            texts.extend(r["code"] for r in records)
        for entry in gorilla.load_api_db(gorilla.api_db_path(hub)):
            code = entry.get("example_code")
            texts.append("\n".join(map(str, code)) if isinstance(code, list) else str(code))
    used = set()
    for text in texts:
        for line in text.splitlines():
            try:
                tree = ast.parse(line.strip())
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                for name in names:
                    parts = name.split(".")
                    used.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return used


def render(data: dict) -> str:
    modules = {m: " ".join(sorted(n)) for m, n in sorted(data["modules"].items())}
    blob = base64.b64encode(zlib.compress(json.dumps(modules, separators=(",", ":")).encode(),
                                          9)).decode()
    lines = ['"""Generated by ``python -m rlaif_jax.evaluation.standins.generate``: do not edit.',
             "",
             "The public modules and names of the libraries the sandbox's stand-ins replace, as",
             "parsed from the sources listed in SOURCES. MODULES_BLOB is zlib+base64 compressed JSON",
             "({module path: space separated public names}); OPEN_BLOB the space separated paths",
             "of the other modules, whose names are not kept (any attribute is accepted there).",
             "See generate.py for the method.",
             '"""',
             "",
             "SOURCES = " + pprint.pformat(dict(sorted(data["sources"].items())), width=99),
             "",
             "VALUES = " + pprint.pformat({m: v for m, v in sorted(data["values"].items())
                                           if m in data["modules"]}, width=99),
             "",
             "PIPELINE_TASKS = " + pprint.pformat(sorted(data["tasks"]), width=99, compact=True),
             "",
             "# names bound to an object although a submodule has the same name (the object wins)",
             "SHADOWED = " + pprint.pformat({m: sorted(n) for m, n in sorted(
                 data["shadowed"].items())}, width=99, compact=True),
             "",
             "MODULES_BLOB = ("]
    for i in range(0, len(blob), 96):
        lines.append(f'    "{blob[i:i + 96]}"')
    lines += [")", "", "OPEN_BLOB = ("]
    blob = base64.b64encode(zlib.compress(" ".join(sorted(data["open"])).encode(), 9)).decode()
    for i in range(0, len(blob), 96):
        lines.append(f'    "{blob[i:i + 96]}"')
    lines.append(")")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=pathlib.Path,
                        default=pathlib.Path.home() / ".cache" / "rlaif_jax_standins",
                        help="where downloaded distributions are kept")
    parser.add_argument("--check", action="store_true", help="compare with the current file only")
    args = parser.parse_args(argv)
    data = generate(args.cache)
    text = render(data)
    n_names = sum(len(v) for v in data["modules"].values())
    print(f"{len(data['modules'])} modules, {n_names} names, {len(text)} bytes", file=sys.stderr)
    if args.check:
        same = OUTPUT.exists() and OUTPUT.read_text() == text
        print("up to date" if same else "differs", file=sys.stderr)
        return 0 if same else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
