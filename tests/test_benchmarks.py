"""Benchmarks: the report renderer on synthetic result files, and a real --quick generation run."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import run_all  # noqa: E402

MACHINE = {"cpu": "Test CPU", "cores": 2, "cpu_flags": ["avx2"], "platform": "Linux-test",
           "python": "3.11.0", "date": "2026-01-01 00:00 UTC", "load_average_1min": 0.1}


def _write(directory, name, **fields):
    record = {"benchmark": name, "title": f"{name} title", "machine": MACHINE,
              "versions": {"jax": "0.10.2", "torch": "2.13.0"}, "quick": False, "tables": [],
              "headline": {}, "targets": [], "notes": [], **fields}
    (directory / f"{name}.json").write_text(json.dumps(record))


def test_render_tables_targets_and_failures(tmp_path):
    _write(tmp_path, "generate",
           tables=[{"title": "speed", "columns": ["batch", "ratio"], "rows": [[8, 3.4567], [32, "a|b"]]}],
           headline={"b8_ratio": 3.46},
           targets=[{"name": "gen b8", "value": 3.46, "target": 3.0, "met": True}],
           notes=["bounded by x|y"])
    _write(tmp_path, "sandbox", quick=True,
           targets=[{"name": "exec/s", "value": 12.0, "target": 20.0, "met": False}])
    (tmp_path / "train.json").write_text(json.dumps(run_all.failure_record(
        "train", "exit status 1\nTraceback ...\nValueError: boom", ["python", "bench_train.py"])))
    (tmp_path / "extra.json").write_text("{not json")
    _write(tmp_path, "odd", tables=[{"title": "no columns", "rows": []}])
    (tmp_path / "generate.png").write_bytes(b"\x89PNG")  # a benchmark's curves
    report = tmp_path / "results.md"
    run_all.write_report(tmp_path, report, expected=["generate", "sandbox", "train", "ppo"])
    md = report.read_text()

    assert "Test CPU, 2 cores (avx2)" in md
    assert "| jax | 0.10.2 | 0.10.2 |" in md  # versions of the two successful benchmarks
    assert "| batch | ratio |" in md and "| 8 | 3.46 |" in md and "| 32 | a\\|b |" in md
    assert "| `generate` | gen b8 | 3.46 | 3 | yes |" in md
    assert "| `sandbox` | exec/s (quick) | 12 | 20 | **no** |" in md
    assert "not headline numbers" in md  # the quick run is flagged in its section
    assert "- bounded by x|y" in md
    # The curves are shown in their benchmark's section, by a path relative to the report.
    figure = f"![generate curves]({tmp_path.name}/generate.png)"
    assert md.count(figure) == 1
    assert md.index("## generate title") < md.index(figure) < md.index("## sandbox title")
    # The failed, missing and unreadable benchmarks are shown, not dropped.
    assert "| `train` | benchmark failed |" in md and "ValueError: boom" in md
    assert "| `ppo` | no result (not run?) |" in md and "no results/ppo.json" in md
    assert "| `extra` | benchmark failed |" in md and "unreadable result file extra.json" in md
    assert "| `odd` | benchmark failed |" in md and "tables[0] needs a 'columns' list" in md
    # Expected order first, then the others.
    sections = [line for line in md.splitlines() if line.startswith("## ") and "`" in line]
    assert [s.split("`")[1] for s in sections] == ["generate", "sandbox", "train", "ppo", "extra",
                                                      "odd"]


def test_render_with_no_results(tmp_path):
    md = run_all.render(run_all.load_results(tmp_path, ["generate"]))
    assert "No benchmark has succeeded yet." in md and "| `generate` | no result" in md


def test_run_one_records_a_failing_script(tmp_path, monkeypatch):
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    (bench_dir / "bench_broken.py").write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    monkeypatch.setattr(run_all, "HERE", bench_dir)
    assert run_all.discover(bench_dir) == ["broken"]
    assert not run_all.run_one("broken", quick=True, timeout=60, results=tmp_path)
    record = json.loads((tmp_path / "broken.json").read_text())
    assert record["failed"] and record["error"].startswith("exit status 3")
    assert "about to fail" in record["error"] and "--quick" in record["command"]
    assert "about to fail" in (tmp_path / "broken.log").read_text()


def test_run_one_kills_a_script_that_times_out(tmp_path, monkeypatch):
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    (bench_dir / "bench_slow.py").write_text("import time\nprint('started', flush=True)\n"
                                             "time.sleep(60)\n")
    monkeypatch.setattr(run_all, "HERE", bench_dir)
    assert not run_all.run_one("slow", quick=False, timeout=2, results=tmp_path)
    record = json.loads((tmp_path / "slow.json").read_text())
    assert record["error"].startswith("timed out after 2 s") and "started" in record["error"]


def test_quick_generation_benchmark(tmp_path):
    """A real --quick run: tiny GPT-2, ours vs transformers, both must produce every token."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--quick",
                           "--results-dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = json.loads((tmp_path / "generate.json").read_text())
    for key in ("benchmark", "title", "machine", "versions", "quick", "tables", "headline",
                "targets", "notes"):
        assert key in result, key
    assert result["benchmark"] == "generate" and result["quick"] is True
    assert result["machine"]["cores"] == os.cpu_count() and result["versions"]["torch"]
    table, profile, buildup = result["tables"]
    columns = table["columns"]
    rows = [dict(zip(columns, row)) for row in table["rows"]]
    assert all(len(row) == len(columns) for row in table["rows"])
    assert [(r["batch"], r["decoding"].split()[0]) for r in rows] == [(8, "greedy"), (8, "sample")]
    for r in rows:
        assert r["new tokens (ours / transformers)"] == "16 / 16"
        assert r["ours tok/s"] > 0 and r["transformers tok/s"] > 0
        # One round (--quick): the per-round ratio is the ratio of the two sides' times.
        assert r["ratio"] == pytest.approx(r["ours tok/s"] / r["transformers tok/s"], rel=0.05)
        low, high = (float(x) for x in r["ratio range"].split("-"))
        assert low == pytest.approx(r["ratio"], abs=0.006) == pytest.approx(high, abs=0.006)
    (target,) = result["targets"]
    assert target["target"] == 3.0 and target["met"] == (target["value"] >= 3.0)
    assert set(result["headline"]) == {"tiny_b8_greedy_ratio", "tiny_b8_sample_ratio"}
    # The batch-8 greedy decode step, profiled by part: every part of a GPT-2 step shows up, the
    # parts add up to the kernel sum, and nothing is counted twice (a step runs each of its
    # 4 x 4 weight matmuls once, and the LM head once).
    assert profile["columns"] == ["part", "ms/step", "share", "kernels/step"]
    parts = {row[0]: row for row in profile["rows"]}
    for name in ("LM head", "weight matmuls (c_attn, c_proj, c_fc)", "layer norms",
                 "attention over the KV cache (write, scores, softmax, values)"):
        assert parts[name][1] > 0, name
    assert parts["weight matmuls (c_attn, c_proj, c_fc)"][3] == pytest.approx(16, abs=0.5)
    assert parts["LM head"][3] == pytest.approx(1, abs=0.1)
    kernel_sum = parts.pop("sum of kernels (traced)")
    parts.pop("step wall time (untraced median)")
    assert sum(row[1] for row in parts.values()) == pytest.approx(kernel_sum[1], abs=0.01)
    assert sum(row[2] for row in parts.values()) == pytest.approx(1, abs=0.01)
    assert any(note.startswith("tiny, batch 8 greedy, profile:") for note in result["notes"])
    # The step rebuilt from its parts: each stage runs the step's work up to that part (ms/step
    # > 0), each row's increment is its difference from the row before, and the last row is the
    # real generate.
    from benchmarks import bench_generate

    stages = buildup["rows"]
    assert [r[0] for r in stages[:-1]] == list(bench_generate.BUILDUP_STAGES)
    assert stages[-1][0] == bench_generate.BUILDUP_REAL and len(stages) == 6
    assert all(r[1] > 0 for r in stages)
    for before, row in zip(stages, stages[1:]):
        assert row[2] == pytest.approx(row[1] - before[1], abs=0.002)
    assert any(note.startswith("tiny, batch 8 greedy, built up untraced in turns:")
               for note in result["notes"])
    # The cache segments' gain: 16 new tokens fit one segment, so both generates are one loop.
    (segments,) = [n for n in result["notes"] if n.startswith("tiny, batch 8 greedy, cache segments:")]
    assert "in 1 segment(s)" in segments


def test_alternating_takes_turns_and_pairs_rounds():
    """Sides run once per round in turns (order reversed every round); a pair's ratio is taken
    within its round, so a slow phase shared by both sides cancels out of it."""
    from benchmarks import common

    order, phase = [], {"slow": 1.0}

    def side(name, seconds):
        def call():
            order.append(name)
            time.sleep(seconds * phase["slow"])
            if name == "b" and len(order) >= 4:
                phase["slow"] = 3.0  # from round 2 on, the machine is 3x slower for both
        return call

    timing = common.alternating({"a": side("a", 0.01), "b": side("b", 0.03)}, repeats=4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(timing[k]["times_s"]) for k in "ab"] == [4, 4]
    ratio = common.paired_ratio(timing["b"]["times_s"], timing["a"]["times_s"])
    assert ratio["rounds"] == 4 and ratio["min"] <= ratio["median"] <= ratio["max"]
    # b is 3x a in every round, while the medians of each side mix slow and fast rounds.
    assert ratio["median"] == pytest.approx(3.0, rel=0.3)
    with pytest.raises(ValueError):
        common.paired_ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        common.alternating({"a": side("a", 0)}, repeats=0)


def test_cpu_watch_counts_other_processes():
    """A busy process that is not ours (not waited for yet) shows up as about one core."""
    from benchmarks import common

    watch = common.CpuWatch()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        other = watch.other_cores()
    finally:
        busy.kill()
        busy.wait()
    assert other is not None and 0.6 <= other <= os.cpu_count() + 0.1, other
