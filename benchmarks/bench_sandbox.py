"""Throughput of the executability sandbox, and the gold-code report.

    python benchmarks/bench_sandbox.py [--workers N] [--repeats 3] [--cold] [--report]

Runs the gold code of the vendored Hugging Face APIBench eval file (911 snippets,
``executable_code(format_target(record))``) through :func:`rlaif_jax.evaluation.sandbox.run_many`
``--repeats`` times and prints executions/s (median, and each run). The worker processes are
started (and warmed up) before timing: that one-off cost (~0.5 s per worker) is printed apart.

``--cold`` also times what the sandbox avoids: starting a fresh ``python -I`` that imports numpy
and the stand-in data for every snippet (the warm workers import them once and fork a child per
snippet).

``--report`` runs the full HF (911) and TorchHub (186) eval files and prints the ok rate, every
failure class with counts and examples, and the rate of the same code with its model ids
swapped for invented ones (`hubs.invent_ids`).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time

try:  # an installed (or PYTHONPATH) rlaif_jax wins, so other versions can be benchmarked
    import rlaif_jax  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rlaif_jax.data import gorilla  # noqa: E402
from rlaif_jax.evaluation import sandbox  # noqa: E402
from rlaif_jax.evaluation.standins import hubs  # noqa: E402


def gold_codes(hub: str) -> list[str]:
    records, _ = gorilla.load_apibench(gorilla.apibench_path(hub, "eval"), hub)
    return [sandbox.executable_code(gorilla.format_target(r)) for r in records]


def bench(workers: int, repeats: int) -> None:
    codes = gold_codes("huggingface")
    hub_list = ["huggingface"] * len(codes)
    start = time.perf_counter()
    sandbox.run_many(codes[:workers * 2], hub_list[:workers * 2], workers=workers)
    print(f"worker start-up + warm-up: {time.perf_counter() - start:.2f} s ({workers} workers)")
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        results = sandbox.run_many(codes, hub_list, workers=workers)
        rates.append(len(codes) / (time.perf_counter() - start))
    per = statistics.median(r.seconds for r in results)
    print(f"HF eval gold code: {len(codes)} snippets, {workers} workers, cores={os.cpu_count()}")
    print(f"executions/s: median {statistics.median(rates):.1f} "
          f"(runs: {', '.join(f'{r:.1f}' for r in rates)}); "
          f"median time in the child {per * 1000:.1f} ms")


def cold(n: int = 10) -> None:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    boot = (f"import sys; sys.path.insert(0, {root!r}); import numpy; "
            "from rlaif_jax.evaluation.standins import runtime; runtime.load()")
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run([sys.executable, "-I", "-B", "-c", boot], check=True)
    per = (time.perf_counter() - start) / n
    print(f"cold start per snippet (python -I + numpy + stand-in data): {per * 1000:.0f} ms "
          f"-> at most {os.cpu_count() / per:.1f} executions/s on {os.cpu_count()} cores")


def report() -> None:
    known = hubs.load_known()
    for hub in ("huggingface", "torchhub"):
        codes = gold_codes(hub)
        results = sandbox.run_many(codes, [hub] * len(codes))
        counts = collections.Counter(r.status for r in results)
        ok = counts["ok"]
        print(f"\n== {hub} eval gold code: {ok}/{len(codes)} ok ({ok / len(codes):.1%})")
        by_class = collections.defaultdict(list)
        for code, r in zip(codes, results):
            if not r.ok:
                by_class[r.status].append((code, r))
        for status, items in sorted(by_class.items(), key=lambda kv: -len(kv[1])):
            print(f"-- {status}: {len(items)}")
            details = collections.Counter(r.detail[:110] for _, r in items)
            for detail, n in details.most_common(12):
                print(f"   {n:3d} x {detail}")
        invented = [hubs.invent_ids(code, known) for code in codes]
        inv = sandbox.run_many(invented, [hub] * len(codes))
        inv_counts = collections.Counter(r.status for r in inv)
        print(f"-- invented ids: {inv_counts['ok']}/{len(codes)} ok "
              f"({inv_counts['ok'] / len(codes):.1%}); {dict(inv_counts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also time cold per-snippet starts")
    parser.add_argument("--report", action="store_true", help="gold-code rates and failures")
    args = parser.parse_args()
    bench(args.workers, args.repeats)
    if args.cold:
        cold()
    if args.report:
        report()
    sandbox.shutdown()


if __name__ == "__main__":
    main()
