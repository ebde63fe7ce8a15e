"""Evaluator throughput: sandboxed executions per second, and the gold-code report.

    python -m benchmarks.bench_sandbox [--quick] [--workers N] [--repeats 3] [--report]

Runs the gold code of the vendored Hugging Face APIBench eval (test) file (911 snippets,
``executable_code(format_target(record))``) through :func:`rlaif_jax.evaluation.sandbox.run_many`
with one worker per core, ``--repeats`` times, and writes executions/s (median over the runs and
each run) to ``benchmarks/results/sandbox.json``; the target (issue 7) is >= 20/s on 2 cores.
The worker processes are started and warmed up before timing; that one-off cost is reported
apart. For scale it also times what the warm workers avoid: a fresh ``python -I`` that imports
numpy and the stand-in data for every snippet.

``--quick`` is a smoke run (the first 120 snippets, one run). ``--report`` (a development tool,
no result file) runs the full HF (911) and TorchHub (186) eval files and prints the ok rate, every
failure class with counts and examples, and the rate of the same code with its model ids swapped
for invented ones (`hubs.invent_ids`).
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks import common  # noqa: E402
from benchmarks.common import median_time, write_result  # noqa: E402
from rlaif_jax.data import gorilla  # noqa: E402
from rlaif_jax.evaluation import sandbox  # noqa: E402
from rlaif_jax.evaluation.standins import hubs  # noqa: E402

TARGET = 20.0  # executions/s on 2 cores (issue 7)


def gold_codes(hub: str) -> list[str]:
    records, _ = gorilla.load_apibench(gorilla.apibench_path(hub, "eval"), hub)
    return [sandbox.executable_code(gorilla.format_target(r)) for r in records]


def bench(codes: list[str], workers: int, repeats: int) -> dict:
    """Warm start of the pool, then `repeats` timed runs of every snippet."""
    hub_list = ["huggingface"] * len(codes)
    start = time.perf_counter()
    sandbox.run_many(codes[:workers * 2], hub_list[:workers * 2], workers=workers)
    startup_s = time.perf_counter() - start
    results = []

    def run():
        results[:] = sandbox.run_many(codes, hub_list, workers=workers)

    timing = median_time(run, repeats=repeats, warmup=0)
    ok = sum(r.ok for r in results)
    return {"rate": len(codes) / timing["median_s"],
            "rates": [len(codes) / t for t in timing["times_s"]], "startup_s": startup_s,
            "child_ms": 1e3 * statistics.median(r.seconds for r in results),
            "ok": ok, "n": len(codes)}


def cold(n: int) -> float:
    """Seconds per snippet if every snippet started a fresh interpreter (median of `n`)."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    boot = (f"import sys; sys.path.insert(0, {root!r}); import numpy; "
            "from rlaif_jax.evaluation.standins import runtime; runtime.load()")
    timing = median_time(lambda: subprocess.run([sys.executable, "-I", "-B", "-c", boot], check=True),
                         repeats=n, warmup=1)
    return timing["median_s"]


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 120 snippets, one run")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", action="store_true",
                        help="print gold-code rates and failures instead of benchmarking")
    parser.add_argument("--results-dir", type=pathlib.Path, default=common.RESULTS,
                        help="where sandbox.json goes (default benchmarks/results)")
    args = parser.parse_args(argv)
    common.RESULTS = args.results_dir
    if args.workers < 1 or args.repeats < 1:
        parser.error("--workers and --repeats must be >= 1")
    try:
        if args.report:
            report()
            return
        codes = gold_codes("huggingface")
        if args.quick:
            codes, args.repeats = codes[:120], 1
        r = bench(codes, args.workers, args.repeats)
        cold_s = cold(2 if args.quick else 5)
    finally:
        sandbox.shutdown()
    print(f"{r['n']} snippets, {args.workers} workers: {r['rate']:.1f} executions/s "
          f"(runs: {', '.join(f'{x:.1f}' for x in r['rates'])}); cold start {cold_s * 1e3:.0f} ms")
    rows = [["warm workers (fork per snippet)", args.workers, r["n"], round(r["rate"], 1),
             ", ".join(f"{x:.1f}" for x in r["rates"]), round(r["child_ms"], 1),
             f"{r['ok']}/{r['n']}"],
            ["fresh interpreter per snippet (bound: workers / cold start)", args.workers, "-",
             round(args.workers / cold_s, 1), "-", round(cold_s * 1e3, 1), "-"]]
    path = write_result("sandbox", {
        "title": "Evaluator: sandboxed executions per second (HF APIBench eval gold code)",
        "quick": args.quick,
        "tables": [{"title": "Executability sandbox throughput",
                    "columns": ["mode", "workers", "snippets", "executions/s (median)", "runs",
                                "median ms per snippet", "ok"],
                    "rows": rows}],
        "headline": {"sandbox_exec_per_s": round(r["rate"], 1)},
        "targets": [{"name": f"evaluator executions/s ({args.workers} workers)",
                     "value": round(r["rate"], 1), "target": TARGET, "met": r["rate"] >= TARGET}],
        "notes": [
            f"Median of {args.repeats} run(s) over the snippets, one worker per core "
            f"({args.workers} of os.cpu_count() = {os.cpu_count()}); the pool start-up and "
            f"warm-up ({r['startup_s']:.1f} s) is not timed.",
            "Each snippet runs in a fresh forked child of a warm worker (its own session, rlimits, "
            "uid, audit hook; see rlaif_jax/evaluation/sandbox.py); 'median ms per snippet' is the "
            "time inside the child. The fresh-interpreter row is what a cold python -I + numpy + "
            "stand-in data start per snippet would allow on the same workers.",
        ]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
