"""The executability measure: run a response's code in a sandboxed process and classify it.

    >>> run_many([code1, code2], ["huggingface", "torchhub"])        # doctest: +SKIP
    [ExecResult(status='ok', ...), ExecResult(status='unknown_model', ...)]

How a snippet runs
------------------
Each execution is a **fresh process**: a forked child of a warm worker (a "zygote"). A worker
is a ``python -I -B`` process (isolated mode: no PYTHON* variables, no user site, no cwd on the
path) started with a minimal environment (PATH, LANG/LC_ALL, HOME/TMPDIR pointing at the
sandbox's scratch directory, single-threaded BLAS): no API key or other variable of the parent
reaches it. It imports the standard library, numpy and the stand-in data once, then forks a
child per snippet: ~12 ms instead of ~330 ms for a cold start (benchmarks/bench_sandbox.py).
One worker per thread of a ThreadPoolExecutor: ``workers`` executions run in parallel.

As root, the workers run in namespaces of their own (``unshare -n -m``): a network namespace
without interfaces (not even loopback works) and private mounts: /tmp is a tmpfs of
`SCRATCH_MB` holding the working directories, /var/tmp and /dev/shm tiny tmpfs, so the children
see none of the host's world-writable directories and code that fills the disk gets ENOSPC.

The child, before it runs any of the snippet, (1) starts a new session (own process group),
(2) chdirs into a fresh temporary directory (removed afterwards), (3) sets resource limits:
CPU seconds (``timeout`` + 1), address space (the interpreter's own + ``memory_mb``), file size
(64 MB), open files (64), processes, no core dumps, (4) when the worker runs as root, drops to a
user id of its own (one per worker slot, no groups), which makes RLIMIT_NPROC effective (root
ignores it), keeps it out of root's files (/root, other processes' /proc/*/environ) and lets the
worker kill every process of that uid at the end, (5) clears its environment, (6) installs the
stand-in import hook (`standins.runtime`) and an audit hook (`sys.addaudithook`) that refuses
``os.fork``/``exec``/``posix_spawn``/``system``/``subprocess.Popen``/``os.kill``, every
``socket.*`` event, ctypes, opening a file for writing outside its directory (or reading other
processes' /proc entries and the worker user's home), and removes the raw spawn functions
(``os.fork``, ``_posixsubprocess.fork_exec``...). A refused operation raises `SandboxViolation`
and is recorded even if the snippet catches it. The standard library and numpy are real;
the model-hub libraries are stand-ins (`rlaif_jax.evaluation.standins`); nothing else imports.

The worker enforces the wall-clock ``timeout``: it kills the child's process group, then every
process left with the child's uid (a grandchild that called setsid), and reaps the child.

A snippet that is a bare api_call (one statement, a call, no import: what `executable_code`
returns for a response without code) is run with the imports the call implies
(``from transformers import pipeline``, ``import torch``, ``import tensorflow_hub as hub``),
found by looking its free names up in the stand-in libraries' top-level names.

Inputs
------
A snippet's inputs are provided, as they are not what the measure judges:
Gorilla snippets use inputs they never define (``image_path``, ``question``, ``audio``...).
A free name of the snippet (read, never bound, not a builtin) is bound to a `Placeholder`
dummy, *unless* it names an API: a module (``torch``, ``np``, ``json``...) or a public name
of a stand-in library (``AutoModel``, ``pipeline``, ``SentenceTransformer``...). Those stay
undefined, so forgetting an import is an ``undefined_name`` failure. Relative paths of data
files written as literals (``'image.jpg'``, ``'config.json'``) exist, empty (a JSON placeholder
parses to a dummy, .npy/.npz hold a small array), and so does a file opened inside a placeholder
(``open(os.path.join(cfg['data'], 'config.json'))``). ``input()`` returns "". IPython shell
lines (``!pip install x``, ``%magic``, and the ``pip install x`` / ``conda install x`` lines that
IPython's automagic runs as ``%pip``) are no-ops; other shell commands are syntax errors. URLs
fetched with requests/urllib get an empty "200 OK" without any connection (see
`standins.runtime`).

Limits of the containment
-------------------------
The audit hook and the replaced functions are a policy for ordinary code, not a security
boundary: code written to escape can undo them from inside the interpreter (e.g. through
``gc``), and it can forge its own result line (the result pipe is an fd of its own process).
What still holds then are the kernel-level layers: the dropped uid, RLIMIT_NPROC/AS/CPU/FSIZE/
NOFILE, the network namespace, the private tmpfs /tmp, the wall-clock kill of the process
group and of the uid. Without root, those reduce to the rlimits (no RLIMIT_NPROC: it would
count all of the user's processes), the process-group kill and the audit hook: no uid switch
(the snippet could read what the user can read once past the hook), no network namespace, no
tmpfs (a disk can be filled at FSIZE per file until the timeout). There is no seccomp filter
and no cgroup: memory is bounded per process (address space), not for all workers together.

The gold code of APIBench
-------------------------
Sanity bar of the measure: the gold responses of the Hugging Face eval file (911, the
``<<<code>>>`` sections) run at 87.9 % (801), TorchHub's (186) at 93.0 % (173); the same code
with its model ids swapped for invented ones at 4.2 % and 0 % (``benchmarks/bench_sandbox.py
--report``; 35 of those 38 snippets name no model id at all, 3 only in a shell line or in a bare
``BaseModel.from_pretrained`` call that no library checks). Every failure was read. Stand-ins
that were less faithful than the real libraries were fixed (fairseq's main branch and three
libraries installed from GitHub, results of comparisons and ``.item()``, pipeline outputs,
MGP-STR's decoder, paths inside placeholders, IPython's ``pip install``, a model the database names
without its owner); the checks that now catch real bugs were made stricter (``hf_hub_download``
without a file name; ``joblib.load`` of a missing file and pyannote's ``Inference(model_id)``
for invented ids). What still fails is, but for one line, a bug of the gold code itself, and
counts against it:

* import (35): 29 names the library never exported, in transformers (``AutoModelForAudioToAudio``
  x4, ``XClipModel`` x3 for ``XCLIPModel``, ``Swin2SRForConditionalGeneration`` x3,
  ``LayoutXLMForQuestionAnswering`` x2, ``AutoModelForSpeechClassification`` x2,
  ``GenerativeImage2TextModel``, ``Text2Speech``, ``BaseModel``, ``BarthezModel``,
  ``Bloom7b1Model``, ``Asteroid``), fairseq (``pipeline``, ``models.textless_sm_sl_es``,
  ``wav2vec2_asr.Wav2Vec2Model``), asteroid (``models.ConvTasNet_Libri3Mix_sepclean_8k``,
  ``hub_utils.load_model``), keras (``TFAutoModelForSequenceClassification``), diffusers
  (``export_to_video``, which lives in ``diffusers.utils``), speechbrain.pretrained
  (``load_audio``), huggingface_hub (``unit``); 6 modules nobody published
  (``TF_Decision_Trees`` x2, ``audio_models``, ``some_module``, ``diffusers.schedulers_async``,
  ``keras.tab_transformer``).
* undefined_name (28): missing imports (``torch`` x9, ``json`` x4, ``os`` x3, ``Image`` x2,
  ``np``, ``io``, ``BytesIO``, ``librosa``, ``transforms``, ``pipeline``, ``load_image``,
  ``snapshot_download``, ``load_model_ensemble_and_task_from_hf_hub``) and one variable never
  defined (``audio_data[array]``).
* bad_arguments (22): 18 ``pipeline()`` tasks transformers never had (``text-to-video`` x3,
  ``voice-activity-detection`` x3, ``ocr``, ``audio-source-separation``, ``regression``,
  ``text-to-image`` x2 each, ``audio-to-audio``, ``cv-depth-estimation``, ``robotics``,
  ``tabular-classification``: the real ``pipeline`` raises "Unknown task"); 4
  ``hf_hub_download(repo_id=...)`` without the required ``filename``.
* syntax (14): 5 shell commands instead of Python (``mlagents-learn ...`` x3,
  ``python -m rl_zoo3.load_from_hub ...``, ``cd espnet; git checkout ...; ./run.sh ...``);
  5 placeholders left in the code (``x = # your input``, ``{# ... }``, ``...`` inside a dict
  literal x2, ``survey_table = # ...``); 4 prose or output lines (``:result: {...}``, a first line
  of prose, ``// comment``, a trailing ``.``).
* runtime (7): 5 call ``rl_zoo3.load_from_hub``, which is a module (a script), not a function
  (huggingface_sb3's is); 1 ``int(result[0]['label'][-1])``, which the model's labels
  ("5 stars") break for real too; 1 is the stand-ins' limit: ``{v: p[k] for k, v in
  model.config.id2label.items()}['contradiction']`` needs the model's label names, which no
  stand-in knows (KeyError).
* unknown_model (4): ids with a typo (``espnet/kan_bayashi_...`` for ``kan-bayashi`` x2), a class
  name as a repository (``tokenizer='RobertaTokenizer'``), and ``Helsinki-NLP/opus-mt-pt-en``,
  which the API database does not list (the measure's closed world).
* TorchHub (13): 12 ``torch.hub.load('szq0214/MEAL-V2', 'meal_v2', model='mealv2_...')`` give
  ``model`` twice (a TypeError in torch), 1 ``torch.hub.load(repo_or_dir='pytorch/fairseq')``
  has no model.

So 90 % is out of reach for this file without passing broken code: 109 of the 911 gold snippets
(12.0 %) are broken as written. The dummies are lenient with attributes and methods (any
attribute exists: ``AutoModel(...)(x).logits`` runs although a base model has no logits), so the
rate is an upper bound for errors of that kind.

Statuses
--------
ok, no_code (nothing to run: the response has neither code nor an api_call; decided without
starting a process), syntax (SyntaxError compiling), import (ImportError/ModuleNotFoundError), undefined_name
(NameError), unknown_model (a stand-in's hub-404: id not in the API database, missing local
model path), bad_arguments (TypeError/ValueError raised by a stand-in: unknown pipeline task,
arguments that do not fit a checked function), runtime (any other exception, or a crash),
timeout (wall clock), resource_limit (MemoryError, CPU time, file size, too many processes or
open files), sandbox_violation (network, process creation, writing outside the directory...).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import ast
import atexit

STATUSES: tuple[str, ...] = ("ok", "no_code", "syntax", "import", "undefined_name",
                             "unknown_model", "bad_arguments", "runtime", "timeout",
                             "resource_limit", "sandbox_violation")
DETAIL_CHARS = 300
FILE_SIZE_LIMIT = 64 * 2**20
SCRATCH_MB = 256            # tmpfs of a worker's working directories (as root)
OPEN_FILES_LIMIT = 64
PROCESS_LIMIT = 32          # per sandbox uid (threads count too)
UID_BASE = 1_900_000_000    # sandbox uids start here (no passwd entry needed)
MAX_SLOTS = 256             # uids per parent process: UID_BASE + (pid % 2**22) * 256 + slot
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class ExecResult:
    status: str            # one of STATUSES
    ok: bool               # status == "ok"
    detail: str            # short error message / exception line
    seconds: float


class SandboxViolation(PermissionError):
    """An operation the sandbox refuses (network, process creation, writing outside the
    scratch directory, ...)."""


def executable_code(text: str) -> str:
    """The ``<<<code>>>`` section of a response, or its api_call when it has no code.

    (Markdown fences around the code are dropped. A bare api_call gets the imports it implies
    when it is run: see `run_many`.)"""
    from rlaif_jax.data import gorilla
    sections = gorilla.parse_response(text or "")
    code = _strip_fences(sections.get("code", "").strip())
    return code or _strip_fences(sections.get("api_call", "").strip())


def _strip_fences(code: str) -> str:
    lines = code.strip().splitlines()
    if lines and lines[0].lstrip().startswith("```"):
        lines = lines[1:]
        if lines and lines[-1].strip().startswith("```"):
            lines = lines[:-1]
    return "\n".join(lines)


# ============================================================================================
# Parent side: a pool of workers
# ============================================================================================

def _minimal_env(scratch: str) -> dict:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": scratch, "TMPDIR": scratch, "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}


_UNSHARE: list | None = None


def _namespace_prefix() -> list:
    """``unshare -n -m`` (a network namespace without interfaces, private mounts) when it can
    be done here (as root), else []."""
    global _UNSHARE
    if _UNSHARE is None:
        _UNSHARE = []
        exe = shutil.which("unshare")
        if exe and os.geteuid() == 0:
            command = [exe, "-n", "-m", "--propagation", "private"]
            try:
                ok = subprocess.run(command + ["true"], capture_output=True,
                                    timeout=10).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                _UNSHARE = command
    return _UNSHARE


def sandbox_uid(slot: int) -> int:
    """The uid of worker `slot` of this process: distinct from the workers of every other live
    process (pids are), so that killing "every process of the uid" never hits another pool."""
    if not 0 <= slot < MAX_SLOTS:
        raise ValueError(f"at most {MAX_SLOTS} sandbox workers per process")
    return UID_BASE + (os.getpid() % 2**22) * MAX_SLOTS + slot


class _Worker:
    """One zygote process: executes one snippet at a time (each in a forked child)."""

    def __init__(self, slot: int, scratch: str):
        self.slot = slot
        self.scratch = scratch
        self.uid = sandbox_uid(slot) if os.geteuid() == 0 else None
        self.proc = None
        self._start()

    def _start(self):
        self.base = os.path.join(self.scratch, f"slot{self.slot}")
        os.makedirs(self.base, mode=0o711, exist_ok=True)
        prefix = _namespace_prefix()
        boot = ("import sys; sys.path.insert(0, %r); "
                "from rlaif_jax.evaluation.sandbox import _worker_main; _worker_main(%r, %r)"
                % (_ROOT, self.base, bool(prefix)))
        self.log = tempfile.TemporaryFile(dir=self.scratch)
        self.proc = subprocess.Popen(
            prefix + [sys.executable, "-I", "-B", "-c", boot],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            env=_minimal_env(self.scratch), cwd=self.scratch, start_new_session=True,
            close_fds=True)
        line = self.proc.stdout.readline()
        if not line.startswith(b"ready"):
            self.log.seek(0)
            raise RuntimeError("sandbox worker failed to start: "
                               + self.log.read().decode(errors="replace")[-2000:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(self, code: str, hub: str, timeout: float, memory_mb: int,
            options: dict | None = None) -> ExecResult:
        if not self.alive():
            self._start()
        request = {"code": code, "hub": hub, "timeout": float(timeout),
                   "memory_mb": int(memory_mb), "uid": self.uid, "options": options or {}}
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            reply = self._read_reply(timeout + 30.0)
        except (OSError, ValueError) as e:
            reply = None
            error = str(e)
        else:
            error = "no reply"
        if reply is None:  # the worker died or hung: replace it
            self.close()
            return ExecResult("runtime", False, f"sandbox worker failed ({error})", 0.0)
        return ExecResult(reply["status"], reply["status"] == "ok", reply["detail"],
                          reply["seconds"])

    def _read_reply(self, limit: float):
        import select
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], limit)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def close(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.uid is not None:
            _kill_uid(self.uid)  # a child of the worker lives in a session of its own
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.log.close()
        self.proc = None


class _Pool:
    def __init__(self):
        self.scratch = tempfile.mkdtemp(prefix="rlaif-sandbox-")
        os.chmod(self.scratch, 0o711)  # sandbox uids traverse it to reach their own directory
        self.idle: queue.Queue = queue.Queue()
        self.size = 0
        self.lock = threading.Lock()

    def ensure(self, n: int):
        with self.lock:
            needed = n - self.size
            self.size += max(needed, 0)
            start = self.size - max(needed, 0)
        if needed > 0:
            with concurrent.futures.ThreadPoolExecutor(needed) as ex:
                for worker in ex.map(lambda s: _Worker(s, self.scratch),
                                     range(start, start + needed)):
                    self.idle.put(worker)

    def run(self, *args, **kwargs) -> ExecResult:
        worker = self.idle.get()
        try:
            return worker.run(*args, **kwargs)
        finally:
            self.idle.put(worker)

    def close(self):
        while True:
            try:
                worker = self.idle.get_nowait()
            except queue.Empty:
                break
            worker.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool()
            atexit.register(shutdown)
        return _POOL


def shutdown() -> None:
    """Stops the sandbox workers (they are started on first use and kept for later calls)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.close()
            _POOL = None


def _check_hub(hub: str):
    from rlaif_jax.data.gorilla import HUBS
    if hub not in HUBS:
        raise ValueError(f"unknown hub {hub!r}; expected one of {HUBS}")


def _has_no_statement(code: str) -> bool:
    """Empty, blank or comments only (a syntax error is left to the worker to classify)."""
    if not code.strip():
        return True
    try:
        return not ast.parse(code).body
    except (SyntaxError, ValueError):
        return False


def run_code(code: str, hub: str, *, timeout: float = 10.0, memory_mb: int = 1024) -> ExecResult:
    """Runs one snippet in the sandbox (see the module doc) and classifies the outcome."""
    return run_many([code], [hub], workers=1, timeout=timeout, memory_mb=memory_mb)[0]


def run_many(codes: list[str], hubs: list[str], *, workers: int | None = None,
             timeout: float = 10.0, memory_mb: int = 1024, progress: bool = False,
             _options: dict | None = None) -> list[ExecResult]:
    """Runs each snippet in its own sandboxed process, `workers` at a time (default: one per
    core); results in the order of `codes`. `hubs[i]` is the hub of `codes[i]` (checked to be
    a Gorilla hub; each stand-in loader checks ids against the database of its own hub, e.g.
    ``torch.hub.load`` against TorchHub's, so HF code calling torch.hub is judged fairly).
    `timeout` is wall-clock seconds per snippet, `memory_mb` the address space it may add to
    the interpreter's own. Workers are started on first use and kept (`shutdown` stops them).
    `_options` is for tests (``{"allow_spawn": True}`` lifts the audit hook's process checks to
    exercise the other containment layers)."""
    if len(codes) != len(hubs):
        raise ValueError(f"{len(codes)} codes but {len(hubs)} hubs")
    for hub in set(hubs):
        _check_hub(hub)
    if not codes:
        return []
    results: list = [None] * len(codes)
    for i, code in enumerate(codes):  # nothing to run is not "runs": a failure of the response
        if _has_no_statement(code):
            results[i] = ExecResult("no_code", False, "the response has no code and no api_call",
                                    0.0)
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
        return results
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    pool = _pool()
    pool.ensure(workers)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="sandbox", unit="run")
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        futures = {ex.submit(pool.run, codes[i], hubs[i], timeout, memory_mb, _options): i
                   for i in todo}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return results


# ============================================================================================
# Worker side (runs in the zygote process and its forked children)
# ============================================================================================

# Standard-library modules not preloaded (side effects, GUI, tests) or refused in the sandbox.
_SKIP_PRELOAD = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
                 "lib2to3", "ensurepip", "venv", "pydoc_data", "__main__", "_tkinter",
                 "msvcrt", "winreg", "_winapi", "winsound", "nt", "_msi", "msilib", "_overlapped",
                 "asyncio.windows_events", "asyncio.windows_utils", "multiprocessing.popen_spawn_win32",
                 "distutils", "_aix_support", "_osx_support", "crypt", "nis", "ossaudiodev",
                 "spwd", "_crypt", "sqlite3", "dbm", "_dbm", "_gdbm", "curses", "_curses",
                 "_curses_panel", "readline"}
_BLOCKED_MODULES = {"ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters",
                    "_xxinterpchannels", "_testcapi", "_testinternalcapi", "_testbuffer",
                    "_testmultiphase", "_testimportmultiple", "_testsinglephase", "_xxtestfuzz",
                    "_ctypes_test", "_testclinic", "pty"}
_NUMPY_SUBMODULES = ("numpy.linalg", "numpy.fft", "numpy.random", "numpy.polynomial", "numpy.ma",
                     "numpy.lib.stride_tricks", "numpy.lib.recfunctions", "numpy.exceptions",
                     "numpy.typing", "numpy.dtypes", "numpy.char", "numpy.rec", "numpy.strings")
_SPAWN_EVENTS = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                 "os.startfile", "subprocess.Popen", "os.kill", "os.killpg", "pty.spawn",
                 "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata",
                 "ctypes.addressof", "ctypes.string_at", "ctypes.wstring_at", "ctypes.seh_exception",
                 "ctypes.get_errno", "ctypes.set_errno", "ctypes.PyObj_FromPtr",
                 "ctypes.cdata/buffer", "webbrowser.open", "os.setuid" , "sys.remote_exec"}
_PATH_EVENTS = {"os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,),
                "os.symlink": (0, 1), "os.link": (0, 1), "os.chmod": (0,), "os.chown": (0,),
                "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
                "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (1,),
                "os.chflags": (0,), "os.lchmod": (0,), "os.lchown": (0,), "os.mkfifo": (0,),
                "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
                "tempfile.mkstemp": (0,), "tempfile.mkdtemp": (0,)}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _preload():
    """Imports the standard library (a dropped-privilege child cannot read it when Python lives
    under root's home), numpy and the stand-ins, once per worker."""
    import importlib
    import pkgutil
    import warnings
    warnings.simplefilter("ignore")
    names = sorted(sys.stdlib_module_names - _SKIP_PRELOAD - _BLOCKED_MODULES)
    for name in names:
        if name.startswith("_test") or name.startswith("idlelib"):
            continue
        try:
            module = importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - platform-specific modules
            continue
        path = getattr(module, "__path__", None)
        if path:
            for info in pkgutil.walk_packages(path, name + "."):
                sub = info.name
                if any(part in _SKIP_PRELOAD or part in ("tests", "test", "idle_test")
                       for part in sub.split(".")) or sub in _SKIP_PRELOAD:
                    continue
                try:
                    importlib.import_module(sub)
                except BaseException:  # noqa: BLE001
                    pass
    # encodings are imported lazily by codec lookups: load them all now
    import encodings
    for info in pkgutil.iter_modules(encodings.__path__, "encodings."):
        try:
            importlib.import_module(info.name)
        except BaseException:  # noqa: BLE001
            pass
    import numpy  # noqa: F401 - preloaded for the children
    for name in _NUMPY_SUBMODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    warnings.resetwarnings()
    from rlaif_jax.evaluation.standins import runtime
    runtime.load()
    return runtime


def _vm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _kill_uid(uid: int) -> None:
    """SIGKILLs every process whose /proc entry belongs to `uid` (until none is left)."""
    me = os.getpid()
    for _ in range(20):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found = True
                    os.kill(int(entry), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        if not found:
            return
        time.sleep(0.005)


def _worker_main(base: str, private_mounts: bool):
    """The worker loop: one JSON request a line on stdin, one JSON reply a line on stdout."""
    runtime = _preload()
    if private_mounts:
        base = _private_mounts(base)
    api_names = runtime.api_names()
    baseline = _vm_bytes()
    import gc
    gc.collect()
    gc.freeze()  # children do not scan (nor copy-on-write) the preloaded objects
    home = os.path.realpath(os.path.expanduser("~" + _user_name()))
    os.write(1, b"ready\n")
    stdin = sys.stdin.buffer
    counter = 0
    while True:
        line = stdin.readline()
        if not line:
            os._exit(0)
        request = json.loads(line)
        counter += 1
        workdir = request["workdir"] = os.path.join(base, f"run{counter}")
        os.mkdir(workdir, 0o700)
        if request.get("uid") is not None:
            os.chown(workdir, request["uid"], request["uid"])
        read_fd, write_fd = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(read_fd)
            try:
                _child(request, write_fd, runtime, api_names, baseline, home)
            except BaseException as e:  # noqa: BLE001 - a bug of the sandbox itself
                try:
                    os.write(write_fd, json.dumps({"status": "runtime", "detail": (
                        f"sandbox setup failed: {_exc_line(e)}")}).encode() + b"\n")
                finally:
                    os._exit(70)
            finally:
                os._exit(70)
        os.close(write_fd)
        chunks, timed_out, status = _wait_child(pid, read_fd, start + request["timeout"])
        seconds = time.monotonic() - start
        if request.get("uid") is not None:
            _kill_uid(request["uid"])         # and of its uid (setsid escapees)
        os.close(read_fd)
        shutil.rmtree(workdir, ignore_errors=True)
        reply = _classify_exit(b"".join(chunks), status, timed_out, request["timeout"])
        reply["seconds"] = round(seconds, 4)
        os.write(1, json.dumps(reply).encode() + b"\n")


def _wait_child(pid: int, read_fd: int, deadline: float):
    """Collects the child's result line and reaps it: (chunks read, timed out?, wait status).
    Waits on the result pipe and on a pidfd of the child (so that an exited child is noticed
    even when a grandchild holds the pipe open); at the deadline kills its process group."""
    import select
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    chunks, timed_out, exited = [], False, False
    fds = [read_fd] + ([pidfd] if pidfd is not None else [])
    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        ready, _, _ = select.select(fds, [], [], remaining)
        if read_fd in ready:
            data = os.read(read_fd, 65536)
            if data:
                chunks.append(data)
            else:
                fds.remove(read_fd)
                if pidfd is None:
                    break
        if pidfd is not None and pidfd in ready:
            exited = True
    if exited:  # what is left in the pipe (without waiting for other holders of it)
        os.set_blocking(read_fd, False)
        while True:
            try:
                data = os.read(read_fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
    # kill what is left of its process group while the (possibly zombie) child still holds
    # the group id, so that it cannot have been reused
    _kill_group(pid)
    status = None
    if exited or timed_out:
        _, status = os.waitpid(pid, 0)
    else:  # EOF without a pidfd: poll until it has exited, kill it at the deadline
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                timed_out = True
                _kill_group(pid)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.001)
    if pidfd is not None:
        os.close(pidfd)
    return chunks, timed_out, status


def _mount_tmpfs(path: str, size: str, mode: str) -> bool:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs",
                           path], capture_output=True).returncode == 0


def _private_mounts(base: str) -> str:
    """In the worker's own mount namespace: a tmpfs of `SCRATCH_MB` over /tmp holding the working
    directories, and small ones over /var/tmp and /dev/shm, so that the children see none of
    the host's world-writable directories and cannot fill its disk. When the interpreter or the
    project lives under /tmp, only the working directories get a tmpfs. Returns the directory
    for the working directories."""
    under_tmp = any(os.path.realpath(p).startswith("/tmp/") for p in sys.path
                    if p and os.path.isabs(p))
    if not under_tmp and _mount_tmpfs("/tmp", f"{SCRATCH_MB}m", "1777"):
        for path in ("/var/tmp", "/dev/shm"):
            if os.path.isdir(path):
                _mount_tmpfs(path, "1m", "1777")
        base = "/tmp/sandbox"
        os.makedirs(base, mode=0o711, exist_ok=True)
        return base
    _mount_tmpfs(base, f"{SCRATCH_MB}m", "0711")
    return base


def _user_name() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return ""


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify_exit(message: bytes, status, timed_out: bool, timeout: float) -> dict:
    if timed_out:
        return {"status": "timeout", "detail": f"timed out after {timeout:g} s"}
    try:
        reply = json.loads(message.decode("utf-8", errors="replace").strip().splitlines()[-1])
        if reply.get("status") in STATUSES:
            return {"status": reply["status"], "detail": str(reply.get("detail", ""))}
    except (ValueError, IndexError, AttributeError):
        pass
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig in (signal.SIGXCPU, signal.SIGXFSZ):
            return {"status": "resource_limit", "detail": f"killed by {name} (resource limit)"}
        if sig == signal.SIGKILL:
            return {"status": "resource_limit", "detail": "killed by SIGKILL (out of memory?)"}
        return {"status": "runtime", "detail": f"crashed with signal {name}"}
    code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None
    return {"status": "runtime", "detail": f"exited with code {code} without a result"}


def _child(request, result_fd, runtime, api_names, baseline, home):
    """Sets up the sandbox in the forked child, runs the snippet, writes the result."""
    import builtins
    import gc
    import resource
    _write, _exit, _dumps = os.write, os._exit, json.dumps

    def report(status, detail):
        try:
            _write(result_fd, _dumps({"status": status,
                                      "detail": detail[:DETAIL_CHARS]}).encode() + b"\n")
        except Exception:  # noqa: BLE001
            _write(result_fd, b'{"status": "runtime", "detail": "unreportable result"}\n')
        _exit(0)

    options = request.get("options") or {}
    allow_spawn = bool(options.get("allow_spawn"))
    workdir = request["workdir"]
    timeout = request["timeout"]
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, result_fd)
    os.closerange(result_fd + 1, 65536)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # oversized writes raise OSError(EFBIG)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    os.chdir(workdir)
    cpu = int(timeout) + 1
    limits = [(resource.RLIMIT_CPU, cpu, cpu + 1),
              (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT, FILE_SIZE_LIMIT),
              (resource.RLIMIT_NOFILE, OPEN_FILES_LIMIT, OPEN_FILES_LIMIT),
              (resource.RLIMIT_CORE, 0, 0)]
    memory = baseline + int(request["memory_mb"]) * 2**20
    limits.append((resource.RLIMIT_AS, memory, memory))
    uid = request.get("uid")
    if uid is not None:
        limits.append((resource.RLIMIT_NPROC, PROCESS_LIMIT, PROCESS_LIMIT))
    for which, soft, hard in limits:
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            pass
    with open(runtime.PLACEHOLDER_PATH, "wb"):
        pass
    if uid is not None:
        os.chown(runtime.PLACEHOLDER_PATH, uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _create_input_files(_without_shell_lines(request["code"]))
    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                       "HOME": workdir, "TMPDIR": workdir})
    tempfile.tempdir = workdir
    sys.stdout = open(os.devnull, "w")
    sys.stderr = sys.stdout
    sys.stdin = open(os.devnull)
    sys.argv = ["<snippet>"]

    # --- compile (a SyntaxError is the snippet's) -------------------------------------------
    code_text = _without_shell_lines(request["code"])
    callee = _bare_callee(code_text)
    if callee is not None:
        code_text = runtime.implied_imports(code_text, _free_names(code_text)) + code_text
    try:
        compiled = compile(code_text, "<snippet>", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes
        report("syntax", _exc_line(e))
    except MemoryError:
        report("resource_limit", "MemoryError while compiling")
    except RecursionError as e:
        report("syntax", f"RecursionError while compiling: {e}")

    # --- the snippet's namespace: placeholders for its inputs --------------------------------
    namespace = {"__name__": "__main__", "__builtins__": builtins, "__doc__": None}
    for name in _free_names(code_text):
        if name not in api_names and name != callee:  # a bare call's callee is no input
            namespace[name] = runtime._new(runtime.Placeholder, name)

    # --- hide the sandbox's own modules, block the dangerous ones ----------------------------
    for name in list(sys.modules):
        top = name.partition(".")[0]
        if top == "rlaif_jax" or top in _BLOCKED_MODULES or name in _BLOCKED_MODULES:
            del sys.modules[name]
    violations = []
    real = os.path.realpath
    workdir_real = real(workdir)
    me = str(os.getpid())

    def violation(what):
        violations.append(what)
        raise SandboxViolation(f"sandbox: {what} is not allowed")

    def blocked_import(name):
        violation(f"import {name}")

    def refuse(name):
        def refused(*args, **kwargs):
            violation(name)
        return refused

    if not allow_spawn:
        import posix
        for name in ("fork", "forkpty", "execv", "execve", "execl", "execle", "execlp",
                     "execlpe", "execvp", "execvpe", "posix_spawn", "posix_spawnp", "spawnv",
                     "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe",
                     "system", "popen", "kill", "killpg", "setuid", "setgid", "setsid",
                     "register_at_fork"):
            for mod in (os, posix):
                if hasattr(mod, name):
                    setattr(mod, name, refuse(f"os.{name}"))
        try:
            import _posixsubprocess  # already loaded by subprocess: disarm it
            _posixsubprocess.fork_exec = refuse("_posixsubprocess.fork_exec")
        except ImportError:
            pass

    _offline_urllib(runtime)
    _placeholder_json(runtime)
    _placeholder_children(runtime, builtins)
    builtins.input = _empty_input
    runtime.install(blocked=_BLOCKED_MODULES, on_blocked=blocked_import)

    def within(path) -> bool:
        p = real(path)
        return p == workdir_real or p.startswith(workdir_real + os.sep) or p == os.devnull

    def path_of(value):
        if isinstance(value, int):
            return None
        if isinstance(value, bytes):
            return os.fsdecode(value)
        return os.fspath(value) if value is not None else None

    def hook(event, args):
        if event in _SPAWN_EVENTS:
            if allow_spawn and not event.startswith(("ctypes", "webbrowser")):
                return
            violation(event)
        elif event == "open":
            path = path_of(args[0])
            if path is None:
                return
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            writing = bool(flags & _WRITE_FLAGS) or any(c in mode for c in "wax+")
            if writing and not within(path):
                violation(f"writing {path}")
            if not writing:
                p = real(path)
                if p.startswith("/proc/") and not p.startswith((f"/proc/{me}/", "/proc/self/")):
                    violation(f"reading {path}")
                if home not in ("/", "") and (p == home or p.startswith(home + os.sep)) and \
                        not p.startswith(tuple(_ALLOWED_READ)):
                    violation(f"reading {path}")
        elif event.startswith("socket."):
            violation(event)
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args):
                    path = path_of(args[i])
                    if path is not None and not within(path):
                        violation(f"{event} {path}")

    sys.addaudithook(hook)

    # --- run ---------------------------------------------------------------------------------
    try:
        exec(compiled, namespace)
    except SystemExit as e:
        namespace = None
        if violations:
            report("sandbox_violation", violations[0])
        if e.code in (None, 0):
            report("ok", "")
        report("runtime", f"SystemExit: {e.code}")
    except BaseException as e:  # noqa: BLE001 - everything is classified
        namespace = None
        gc.collect()
        if violations:
            report("sandbox_violation", f"{violations[0]} ({_exc_line(e)})")
        report(*_classify_exception(e, runtime))
    namespace = None
    if violations:
        report("sandbox_violation", violations[0])
    report("ok", "")


_ALLOWED_READ = [os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                _ROOT} if p]


def _empty_input(prompt=""):
    """input() in the sandbox: the user answers with an empty line."""
    return ""


_JSON_PLACEHOLDER = '{"__sandbox_placeholder__": "an input file the snippet names"}'


def _placeholder_children(runtime, builtins):
    """open() of a path inside a placeholder (``os.path.join(cfg['data'], 'config.json')``, the
    placeholder being a file) opens an input file of the same name, created on demand in a
    shadow tree (empty; a JSON placeholder for .json), like the input files the snippet names."""
    real_open = builtins.open
    prefix = runtime.PLACEHOLDER_PATH + os.sep
    shadow = runtime.PLACEHOLDER_PATH + ".d"

    def open_input(file, *args, **kwargs):
        path = file if isinstance(file, str) else None
        if path is not None and path.startswith(prefix) and ".." not in path.split(os.sep):
            target = os.path.join(shadow, path[len(prefix):])
            if not os.path.exists(target):
                os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
                with real_open(target, "w") as f:
                    f.write(_JSON_PLACEHOLDER if target.endswith(".json") else "")
            file = target
        return real_open(file, *args, **kwargs)
    open_input.__doc__ = real_open.__doc__
    builtins.open = open_input


def _placeholder_json(runtime):
    """json.load(s) of a placeholder input file gives a dummy (any key, any use)."""
    import json as json_module
    real_loads = json_module.loads
    marker = json.loads(_JSON_PLACEHOLDER)

    def loads(s, *args, **kwargs):
        value = real_loads(s, *args, **kwargs)
        if value == marker:
            return runtime._new(runtime.Placeholder, "json")
        return value
    loads.__doc__ = real_loads.__doc__
    json_module.loads = loads


def _offline_urllib(runtime):
    """urllib.request.urlopen/urlretrieve answer offline like the stand-in requests."""
    import urllib.request

    def urlopen(url, *args, **kwargs):
        body = io.BytesIO(b"")
        body.status = body.code = 200
        body.url = url if isinstance(url, str) else getattr(url, "full_url", str(url))
        body.headers = {}
        body.getcode = lambda: 200
        body.info = lambda: {}
        return body

    def urlretrieve(url, filename=None, *args, **kwargs):
        if filename is None:
            filename = os.path.join(os.getcwd(), "download")
        with open(filename, "wb"):
            pass
        return filename, {}

    import io
    urllib.request.urlopen = urlopen
    urllib.request.urlretrieve = urlretrieve


def _exc_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return " ".join(text.split())[:DETAIL_CHARS]


def _raised_in_standin(e: BaseException, runtime) -> bool:
    tb = e.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and last.tb_frame.f_globals.get("__name__") == runtime.__name__


_RESOURCE_ERRNOS = {errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM,
                    errno.ENOSPC, errno.EDQUOT}


def _classify_exception(e: BaseException, runtime) -> tuple[str, str]:
    detail = _exc_line(e)
    status = getattr(e, "sandbox_status", None)
    if isinstance(e, SandboxViolation):
        return "sandbox_violation", detail
    if isinstance(e, runtime.StandinError) and status in STATUSES:
        return status, detail
    if isinstance(e, ImportError):
        return "import", detail
    if isinstance(e, NameError):
        return "undefined_name", detail
    if isinstance(e, MemoryError):
        return "resource_limit", detail or "MemoryError"
    if isinstance(e, OSError) and e.errno in _RESOURCE_ERRNOS:
        return "resource_limit", detail
    if isinstance(e, RuntimeError) and "can't start new thread" in str(e):
        return "resource_limit", detail
    if isinstance(e, (TypeError, ValueError)) and _raised_in_standin(e, runtime):
        return "bad_arguments", detail
    if isinstance(e, SyntaxError):
        return "runtime", detail
    return "runtime", detail


def _bare_callee(code: str) -> str | None:
    """If `code` is a bare api_call (one statement, a call or an assignment of one, no import:
    ``pipeline('summarization', model='x')``, ``model = torch.hub.load(...)``), the name its
    callee starts with (``pipeline``, ``torch``); else None."""
    import ast
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(tree.body) != 1:
        return None
    statement = tree.body[0]
    node = statement.value if isinstance(statement, (ast.Expr, ast.Assign)) else None
    if not isinstance(node, ast.Call):
        return None
    node = node.func
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


_AUTOMAGIC = re.compile(r"^(?:pip3?|conda)\s+(?:install|uninstall)\s")


def _without_shell_lines(code: str) -> str:
    """IPython shell escapes and magics (``!pip install x``, ``%matplotlib inline``), and the
    ``pip install x`` / ``conda install x`` lines that IPython's automagic runs as ``%pip`` /
    ``%conda`` (never valid Python), become ``pass``: notebook-style snippets are accepted, and
    installing is moot in the sandbox."""
    if "!" not in code and "%" not in code and "install" not in code:
        return code
    lines = code.split("\n")
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if (stripped.startswith(("!", "%")) and not stripped.startswith("!=")) or \
                _AUTOMAGIC.match(stripped):
            lines[i] = line[:len(line) - len(stripped)] + "pass"
    return "\n".join(lines)


_DATA_SUFFIXES = {
    "jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff", "wav", "mp3", "flac", "ogg", "m4a",
    "mp4", "avi", "mov", "mkv", "webm", "csv", "tsv", "json", "jsonl", "txt", "pdf", "npy", "npz",
    "pt", "pth", "bin", "pkl", "pickle", "joblib", "zip", "h5", "onnx", "yaml", "yml", "xml",
    "html", "md", "docx", "xlsx", "parquet", "srt", "ckpt", "safetensors"}


def _input_paths(code: str) -> list[str]:
    """Relative file paths (with a data file suffix) written as string literals in `code`."""
    import ast
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    paths = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            v = node.value.strip()
            if (0 < len(v) < 200 and "\n" not in v and "://" not in v and not v.startswith(
                    ("/", "~")) and ".." not in v.split("/")
                    and v.rsplit(".", 1)[-1].lower() in _DATA_SUFFIXES and "." in v):
                paths.append(v)
    return paths[:50]


def _create_input_files(code: str) -> None:
    """Input files a snippet names by a relative path exist in its directory: like its free
    variables, they are inputs the user provides. They are empty, except .npy/.npz files (a
    small zero array) and JSON files (a marker that `json.load` turns into a dummy)."""
    for path in _input_paths(code):
        try:
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            if os.path.exists(path):
                continue
            suffix = path.rsplit(".", 1)[-1].lower()
            if suffix in ("npy", "npz"):
                import numpy
                with open(path, "wb") as f:
                    if suffix == "npy":
                        numpy.save(f, numpy.zeros(16, dtype="float32"))
                    else:
                        numpy.savez(f, data=numpy.zeros(16, dtype="float32"))
                continue
            with open(path, "w") as f:
                f.write(_JSON_PLACEHOLDER if suffix == "json" else "")
        except OSError:
            continue


def _free_names(code: str) -> set[str]:
    """Names the snippet reads but never binds anywhere (and that are not builtins)."""
    import ast
    import builtins
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    bound, loaded = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bound.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
    return loaded - bound - set(dir(builtins))
