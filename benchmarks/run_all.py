"""Runs every benchmark and renders ``benchmarks/results.md`` from ``benchmarks/results/*.json``.

    python -m benchmarks.run_all [--quick] [--only generate,sandbox] [--render-only]

Each ``benchmarks/bench_<name>.py`` runs as its own subprocess (so XLA flags, fake device counts
and thread settings of one benchmark do not leak into another), in a fixed order (``ORDER``, then
any other ``bench_*.py`` alphabetically), with ``--quick`` passed on. Its output goes to the
console and to ``benchmarks/results/<name>.log``. A script that exits non-zero, times out or
writes no fresh ``results/<name>.json`` gets a failure record in that file instead (its exit
status and the tail of its output), so the report shows it as failed rather than dropping it.

The report is rendered from whatever result files exist (also ones from earlier runs, e.g. of
``--only``): the machine and versions, a table of every target (value, target, met?), then one
section per benchmark with its tables and notes. Result files follow the schema in
``benchmarks/common.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
REPORT = HERE / "results.md"
ORDER = ["generate", "sandbox", "train", "ppo"]
TAIL_LINES = 30


def discover(bench_dir: pathlib.Path = HERE) -> list[str]:
    """Benchmark names (``bench_<name>.py``) in run order."""
    found = {p.stem[len("bench_"):] for p in bench_dir.glob("bench_*.py")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def failure_record(name: str, error: str, command: list[str]) -> dict:
    from benchmarks.common import machine_info, versions
    return {"benchmark": name, "title": name, "failed": True, "error": error,
            "command": " ".join(command), "machine": machine_info(), "versions": versions()}


def run_one(name: str, quick: bool, timeout: float, results: pathlib.Path = RESULTS) -> bool:
    """Runs ``bench_<name>.py``; on failure writes a failure record. True if it succeeded."""
    results.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(HERE / f"bench_{name}.py")] + (["--quick"] if quick else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    out_path, log_path = results / f"{name}.json", results / f"{name}.log"
    started = time.time()
    print(f"== {name}: {' '.join(command)}", flush=True)
    lines: list[str] = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1,
                                start_new_session=True)
        # On timeout, kill the script's whole process group (e.g. sandbox workers too).
        watchdog = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
        watchdog.start()
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
                lines.append(line)
            rc = proc.wait()
        finally:
            watchdog.cancel()
    elapsed = time.time() - started
    tail = "".join(lines[-TAIL_LINES:])
    if elapsed >= timeout and rc != 0:
        error = f"timed out after {timeout:.0f} s\n{tail}"
    elif rc != 0:
        error = f"exit status {rc}\n{tail}"
    elif not out_path.exists() or out_path.stat().st_mtime < started:
        error = f"exited 0 but wrote no fresh {out_path.name}\n{tail}"
    else:
        print(f"== {name}: done in {elapsed:.0f} s", flush=True)
        return True
    out_path.write_text(json.dumps(failure_record(name, error, command), indent=2) + "\n")
    print(f"== {name}: FAILED ({error.splitlines()[0]})", flush=True)
    return False


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def schema_errors(record: dict) -> list[str]:
    """What keeps a (non-failure) result record from being rendered; [] if nothing."""
    errors = []
    for i, table in enumerate(record.get("tables") or []):
        if not (isinstance(table, dict) and isinstance(table.get("columns"), list)
                and isinstance(table.get("rows"), list)
                and all(isinstance(row, list) for row in table["rows"])):
            errors.append(f"tables[{i}] needs a 'columns' list and a 'rows' list of lists")
    for i, target in enumerate(record.get("targets") or []):
        if not (isinstance(target, dict) and {"name", "value", "target", "met"} <= set(target)):
            errors.append(f"targets[{i}] needs name, value, target and met")
    if not isinstance(record.get("headline") or {}, dict):
        errors.append("headline must be an object")
    if not isinstance(record.get("notes") or [], list):
        errors.append("notes must be a list")
    return errors


def load_results(results: pathlib.Path, expected: list[str]) -> list[dict]:
    """Every ``*.json`` in `results` (unreadable ones as failures), plus a 'missing' failure for
    each expected benchmark without a file; ordered like `expected`, then by name."""
    records = {}
    for path in sorted(results.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            errors = [] if record.get("failed") else schema_errors(record)
            if errors:
                raise ValueError("; ".join(errors))
        except ValueError as e:
            record = {"failed": True, "error": f"unreadable result file {path.name}: {e}"}
        record.setdefault("benchmark", path.stem)
        records[path.stem] = record
    for name in expected:
        if name not in records:
            records[name] = {"benchmark": name, "failed": True, "missing": True,
                             "error": f"no results/{name}.json: not run yet, or it crashed "
                                      f"before run_all could record it"}
    order = {name: i for i, name in enumerate(expected)}
    return [records[k] for k in sorted(records, key=lambda k: (order.get(k, len(order)), k))]


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        value = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(columns: list, rows: list) -> list[str]:
    out = ["| " + " | ".join(_cell(c) for c in columns) + " |",
           "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _title(record: dict) -> str:
    return f"{record.get('title') or record['benchmark']} (`{record['benchmark']}`)"


def _when(record: dict) -> str:
    machine = record.get("machine") or {}
    parts = [machine.get("date", "date unknown")]
    if "load_average_1min" in machine:
        parts.append(f"1-min load average at the end {machine['load_average_1min']:.2f}")
    if record.get("quick"):
        parts.append("**--quick smoke run: not headline numbers**")
    return "; ".join(parts)


def render(records: list[dict], results: pathlib.Path | None = None) -> str:
    """The report; a benchmark's ``<name>.png`` in `results` (its curves) is shown in its section."""
    ok = [r for r in records if not r.get("failed")]
    lines = ["# Benchmark results", "",
             "Rendered by `python -m benchmarks.run_all` from `benchmarks/results/*.json` "
             "(how each benchmark measures: `benchmarks/README.md`).", ""]
    machines = {json.dumps({k: v for k, v in (r.get("machine") or {}).items()
                            if k in ("cpu", "cores", "cpu_flags", "platform", "python")},
                           sort_keys=True) for r in ok}
    lines += ["## Machine", ""]
    if not ok:
        lines += ["No benchmark has succeeded yet.", ""]
    for m in sorted(machines):
        m = json.loads(m)
        lines += [f"- CPU: {m.get('cpu', '?')}, {m.get('cores', '?')} cores "
                  f"({', '.join(m.get('cpu_flags') or []) or 'no flags recorded'})",
                  f"- {m.get('platform', '?')}, Python {m.get('python', '?')}"]
    if len(machines) > 1:
        lines.append("- **The result files come from different machines** (see each section).")
    lines.append("")
    names = sorted({k for r in ok for k in (r.get("versions") or {})})
    if names:
        lines += ["## Versions", ""]
        rows = [[n] + [(r.get("versions") or {}).get(n) or "-" for r in ok] for n in names]
        lines += _table(["package"] + [f"`{r['benchmark']}`" for r in ok], rows) + [""]
    lines += ["## Targets", ""]
    rows = []
    for r in records:
        if r.get("failed"):
            status = "no result (not run?)" if r.get("missing") else "benchmark failed"
            rows.append([f"`{r['benchmark']}`", status, "-", "-", "**no**"])
        for t in r.get("targets") or []:
            quick = " (quick)" if r.get("quick") else ""
            rows.append([f"`{r['benchmark']}`", t["name"] + quick, t["value"], t["target"],
                         bool(t["met"])])
    lines += (_table(["benchmark", "target", "value", "target value", "met?"], rows)
              if rows else ["No targets recorded."]) + [""]
    for r in records:
        lines += [f"## {_title(r)}", ""]
        if r.get("failed"):
            command = f" (`{r['command']}`)" if r.get("command") else ""
            lines += [("**NO RESULT**" if r.get("missing") else "**FAILED**") + command, "",
                      "```", str(r.get("error", "no error recorded")).rstrip(), "```", ""]
            continue
        lines += [_when(r), ""]
        for table in r.get("tables") or []:
            lines += [f"**{table.get('title', '')}**", ""]
            lines += _table(table["columns"], table["rows"]) + [""]
        if r.get("headline"):
            lines += ["Headline: " + ", ".join(f"`{k}` = {_cell(v)}"
                                               for k, v in r["headline"].items()), ""]
        if r.get("notes"):
            lines += [f"- {note}" for note in r["notes"]] + [""]
        figure = results / f"{r['benchmark']}.png" if results else None
        if figure and figure.exists():
            lines += [f"![{r['benchmark']} curves]({results.name}/{figure.name})", ""]
    return "\n".join(lines)


def write_report(results: pathlib.Path = RESULTS, report: pathlib.Path = REPORT,
                 expected: list[str] | None = None) -> pathlib.Path:
    records = load_results(results, discover() if expected is None else expected)
    report.write_text(render(records, results))
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    p.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    p.add_argument("--render-only", action="store_true", help="only re-render results.md")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    args = p.parse_args(argv)
    names = discover()
    selected = [n.strip() for n in args.only.split(",") if n.strip()] or names
    unknown = [n for n in selected if n not in names]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; available: {', '.join(names)}")
    failed = []
    if not args.render_only:
        for name in names:
            if name in selected and not run_one(name, args.quick, args.timeout):
                failed.append(name)
    path = write_report()
    print(f"wrote {path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
