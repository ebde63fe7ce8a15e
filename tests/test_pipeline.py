"""`rlaif-jax run` end to end on the smoke config: every stage, the report, and a resumed rerun."""

import json

from conftest import cli

SMOKE = "--config=configs/smoke.py"
# The smoke model's 24 SFT steps give noise that the judge scores 0 across the board, so there
# are no preference pairs to learn from: the smoke pipeline trains the pointwise reward model.
POINTWISE = "--config.reward.loss=pointwise"


def test_pipeline_runs_every_stage_reports_and_resumes(tmp_path):
    w = tmp_path / "run"
    proc = cli("run", SMOKE, POINTWISE, "--workdir", w, timeout=900)
    for stage in ("sft", "sample", "label", "reward", "ppo", "eval"):
        assert f"[pipeline] {stage}: done in" in proc.stdout, proc.stdout
        assert (w / "pipeline" / f"{stage}.json").is_file()
    report = json.loads((w / "report.json").read_text())
    for part in ("sft", "rlaif"):
        for metric in ("ast_accuracy", "hallucination", "rougeL", "codebleu", "executability"):
            assert 0.0 <= report[part][metric] <= 1.0, (part, metric)
    assert report["sft"]["n"] == report["rlaif"]["n"] > 0
    assert set(report["stages"]) == {"sft", "sample", "label", "reward", "ppo", "eval"}
    assert "val_auc" in report["reward_model"]
    md = (w / "report.md").read_text()
    assert "| executability |" in md and "## Stage wall time" in md
    assert report["plots"] and all((w / p).is_file() for p in report["plots"])
    assert (w / "eval" / "ppo" / "report.json").is_file()

    # A rerun repeats no finished stage and rewrites the same report.
    again = cli("run", SMOKE, POINTWISE, "--workdir", w, timeout=300)
    for stage in ("sft", "sample", "label", "reward", "ppo", "eval"):
        assert f"[pipeline] {stage}: done earlier, skipped" in again.stdout
    assert "running" not in again.stdout
    assert json.loads((w / "report.json").read_text())["rlaif"] == report["rlaif"]


def test_picked_stages_and_unknown_stage(tmp_path):
    proc = cli("run", SMOKE, "--config.stages=sft,bogus", "--workdir", tmp_path, check=False)
    assert proc.returncode != 0 and "config.stages" in proc.stderr and "bogus" in proc.stderr
    proc = cli("run", SMOKE, "--config.stages=sft", "--workdir", tmp_path)
    assert "[pipeline] sft: done in" in proc.stdout and "[pipeline] sample" not in proc.stdout
    assert not (tmp_path / "pipeline" / "sample.json").exists()
