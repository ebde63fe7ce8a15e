"""Shared helpers for the benchmark scripts: machine description, timing, result files.

Every benchmark script times with :func:`median_time` (warm-up calls first, then the median of
several repeats), or, where two sides are compared, with :func:`alternating` (the sides take
turns, so a slow phase of the machine hits both; :func:`paired_ratio` gives the median of the
per-round ratios and their range), and writes one JSON file with :func:`write_result` into
``benchmarks/results/``;
``benchmarks/run_all.py`` runs the scripts and renders ``benchmarks/results.md`` from those files.

Result file schema (``benchmarks/results/<name>.json``)::

    {"benchmark": name, "title": str, "machine": machine_info(), "versions": versions(),
     "quick": bool,                      # a --quick smoke run: numbers are not the headline
     "tables": [{"title": str, "columns": [str, ...], "rows": [[cell, ...], ...]}],
     "headline": {key: number},          # ratios / rates the README quotes
     "targets": [{"name": str, "value": number, "target": number, "met": bool}],
     "notes": [str, ...]}                # what bounds the result, what was tried
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import subprocess
import time
from typing import Callable

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU's vector/matrix extensions that matter for matmul speed (AVX-512, AMX, ...)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def machine_info() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
            "platform": platform.platform(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_1min": os.getloadavg()[0]}


def versions(*packages: str) -> dict:
    names = packages or ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "trl")
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        out["rlaif_jax_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=pathlib.Path(__file__).parent, check=False).stdout.strip() or None
    except OSError:
        out["rlaif_jax_commit"] = None
    return out


class CpuWatch:
    """How many cores OTHER processes kept busy since construction: the machine's busy CPU time
    (``/proc/stat``: user, nice, system, irq, softirq, steal) less this process's own (and its
    waited-for children's) CPU time, over the wall time. The 1-minute load average cannot tell
    a benchmark's own threads, or the previous benchmark's tail, from other work; this can."""

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            fields = pathlib.Path("/proc/stat").read_text().splitlines()[0].split()
        except OSError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()

    def other_cores(self) -> float | None:
        """Average cores used by other processes since construction (None off Linux)."""
        end = self._snapshot()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end))
        return max(busy - own, 0.0) / wall


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Calls `fn` `warmup` times untimed, then `repeats` times; `fn` must block until its work
    is done (e.g. `jax.block_until_ready`). Returns the median and every time, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times}


def alternating(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Times every call once per round, for `repeats` rounds, in turns (the order reverses each
    round, so neither side always runs right after the other); the calls must already be warm
    and must block until their work is done. Returns {name: {"median_s", "times_s"}}, whose
    ``times_s[i]`` are from round ``i``.

    This machine's speed changes by 2-4x over seconds (other tenants of the host: measured in
    benchmarks/README.md), so two sides timed one after the other can land in different phases;
    in turns, each round's pair shares one."""
    if repeats < 1 or not calls:
        raise ValueError("alternating needs at least one call and one round")
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": statistics.median(ts), "times_s": ts} for name, ts in times.items()}


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict:
    """Median, min and max over rounds of ``numerator[i] / denominator[i]`` (times from the same
    round of :func:`alternating`); with speedup = their time / our time, pass theirs first."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("paired_ratio needs two equally long, non-empty lists of times")
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "rounds": len(ratios)}


def jax_matmul_flops(m: int, k: int, n: int, dtype: str, repeats: int) -> float:
    """FLOP/s of a jitted `jnp.dot` [m,k] x [k,n] in `dtype` (float32 accumulation for bf16)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((m, k)), dtype)
    b = jnp.asarray(rng.standard_normal((k, n)), dtype)
    dot = jax.jit(jnp.dot)
    t = median_time(lambda: dot(a, b).block_until_ready(), repeats=repeats)["median_s"]
    return 2 * m * k * n / t


def write_result(name: str, result: dict) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "machine": machine_info(), "versions": versions(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def xla_kernel_ms(call: Callable[[], object], hlo_text: str, trace_dir: str,
                  n: int = 3) -> list[tuple[str, str, float, float]]:
    """Traces `n` calls of `call` (already compiled and warmed up) with ``jax.profiler`` and
    returns ``[(HLO instruction, its op_name, ms per call, runs per call), ...]`` for the XLA
    kernels of the program whose optimised HLO is `hlo_text`.

    Only the outermost kernel events count (a ``conditional``'s branch kernels are inside its
    own event), and ``while`` instructions are left out (their body's kernels are listed
    themselves), so the times add up without counting anything twice. Host-side and runtime
    events (no HLO instruction) are not listed: the gap between the sum and the call's wall
    time is the runtime's dispatch between kernels (and the tracer's own cost)."""
    import collections
    import gzip
    import re

    import jax

    op_names, loops = {}, set()
    for name, rest in re.findall(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*)$", hlo_text, re.M):
        found = re.search(r'op_name="([^"]*)"', rest)
        op_names[name] = found.group(1) if found else ""
        if re.search(r"\swhile\(", rest):
            loops.add(name)
    with jax.profiler.trace(trace_dir):
        for _ in range(n):
            call()
    trace = sorted(pathlib.Path(trace_dir).rglob("*.trace.json.gz"))[-1]
    events = json.loads(gzip.open(trace).read())
    events = events["traceEvents"] if isinstance(events, dict) else events
    kernels = sorted((e for e in events if e.get("ph") == "X" and e.get("name") in op_names
                      and e["name"] not in loops), key=lambda e: (e.get("pid"), e.get("tid"), e["ts"]))
    totals: collections.Counter = collections.Counter()
    runs: collections.Counter = collections.Counter()
    open_until: dict = {}  # (pid, tid) -> end of the outermost event being counted
    for e in kernels:
        lane = (e.get("pid"), e.get("tid"))
        if e["ts"] < open_until.get(lane, float("-inf")):
            continue  # nested in a counted event
        open_until[lane] = e["ts"] + e["dur"]
        totals[e["name"]] += e["dur"] / 1e3 / n
        runs[e["name"]] += 1 / n
    return [(name, op_names[name], ms, runs[name]) for name, ms in totals.most_common()]
