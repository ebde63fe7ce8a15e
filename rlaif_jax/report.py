"""The pipeline's report: SFT vs RLAIF on the test split, reward model, PPO curves, stage times.

Reads what the stages wrote into a workdir (``eval/<checkpoint>/report.json``,
``summaries/*.json``, ``metrics/ppo.jsonl``, ``pipeline/<stage>.json``) and writes
``report.json`` and ``report.md`` (with ``plots/ppo_*.png``) beside them. Nothing is recomputed.
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics

from rlaif_jax.config import STAGES
from rlaif_jax.metrics import read_metrics

METRICS = ("ast_accuracy", "hallucination", "ast_error", "strict_accuracy", "rougeL", "codebleu",
           "executability", "executable_ast_accuracy", "distinct_code")
# (title, metric keys tried in order) of the PPO curves to plot.
CURVES = (("reward", ("reward_mean", "reward", "mean_reward")),
          ("kl", ("kl", "kl_mean", "kl_per_sequence")),
          ("executability", ("exec_rate", "executability", "rollout_exec_rate")),
          ("rm_score", ("rm_score", "rm_score_mean")))


def _load(path: pathlib.Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _headline(eval_report: dict | None) -> tuple[dict, dict]:
    """(overall metrics, per-provider metrics) of an eval report.json."""
    if not eval_report:
        return {}, {}
    overall = {k: eval_report["overall"].get(k) for k in ("n", *METRICS)
               if k in eval_report["overall"]}
    providers = {name: {k: rep.get(k) for k in ("n", *METRICS) if k in rep}
                 for name, rep in eval_report["providers"].items()}
    return overall, providers


def _plot_curves(rows: list[dict], out_dir: pathlib.Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for title, keys in CURVES:
        key = next((k for k in keys if any(k in r for r in rows)), None)
        if key is None:
            continue
        points = [(r["step"], r[key]) for r in rows if key in r]
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3)
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel(key)
        ax.set_title(f"PPO: {title}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"ppo_{title}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path.relative_to(out_dir.parent)))
    return written


def collect(workdir: pathlib.Path) -> dict:
    """report.json's dict for one pipeline workdir."""
    sft, sft_prov = _headline(_load(workdir / "eval" / "sft" / "report.json"))
    rlaif, rlaif_prov = _headline(_load(workdir / "eval" / "ppo" / "report.json"))
    marks = {p.stem: json.loads(p.read_text())["seconds"]
             for p in (workdir / "pipeline").glob("*.json")}
    stages = {s: marks[s] for s in STAGES if s in marks}
    reward = _load(workdir / "summaries" / "reward.json") or {}
    ppo = _load(workdir / "summaries" / "ppo.json") or {}
    label = _load(workdir / "summaries" / "label.json") or {}
    per_provider = {}
    for name in sorted(set(sft_prov) | set(rlaif_prov)):
        per_provider[name] = {"sft": sft_prov.get(name, {}), "rlaif": rlaif_prov.get(name, {})}
    return {
        "workdir": str(workdir), "sft": sft, "rlaif": rlaif, "per_provider": per_provider,
        "reward_model": {k: reward[k] for k in ("val_pairwise_accuracy", "val_auc",
                                                "initial_val_pairwise_accuracy", "val_pairs",
                                                "train_pairs", "loss") if k in reward},
        "feedback": {k: label[k] for k in ("judge", "candidates", "acceptable_fraction",
                                           "mean_hard_score", "pairs", "agreement_with_ast")
                     if k in label},
        "ppo": {k: v for k, v in ppo.items() if isinstance(v, (int, float, str))},
        "stages": stages, "total_seconds": round(sum(stages.values()), 1),
    }


RATES = set(METRICS) | {"acceptable_fraction", "agreement_with_ast", "val_pairwise_accuracy",
                        "val_auc", "initial_val_pairwise_accuracy", "initial_val_auc"}


def _fmt(value, key: str = "") -> str:
    """Rates as percentages, other numbers with 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"  # absent, or undefined (e.g. AUC when the held-out labels have one class)
    if isinstance(value, float):
        return f"{value:.2%}" if key in RATES or key in METRICS else f"{value:.4g}"
    return str(value)


def _delta(a, b) -> str:
    if a is None or b is None:
        return "–"
    return f"{(b - a) * 100:+.1f} pt"


def _comparison_table(sft: dict, rlaif: dict) -> list[str]:
    lines = ["| metric | SFT | RLAIF | Δ |", "|---|---:|---:|---:|"]
    for m in METRICS:
        if m in sft or m in rlaif:
            lines.append(f"| {m} | {_fmt(sft.get(m), m)} | {_fmt(rlaif.get(m), m)} | "
                         f"{_delta(sft.get(m), rlaif.get(m))} |")
    return lines


def write_run_report(config, workdir: pathlib.Path) -> dict:
    data = collect(workdir)
    rows = read_metrics(workdir / "metrics" / "ppo.jsonl") if (
        workdir / "metrics" / "ppo.jsonl").is_file() else []
    data["plots"] = _plot_curves(rows, workdir / "plots") if rows else []
    (workdir / "report.json").write_text(json.dumps(data, indent=2) + "\n")

    md = [f"# RLAIF report: {workdir}", "",
          f"Test split `{config.eval.split}`, {'greedy' if config.eval.greedy else 'sampled'} "
          f"decoding; seed {config.seed}; judge `{data['feedback'].get('judge', '?')}`.", "",
          "## SFT vs RLAIF (all providers)", ""]
    md += _comparison_table(data["sft"], data["rlaif"])
    for name, both in data["per_provider"].items():
        md += ["", f"### {name} (n = {both['sft'].get('n', both['rlaif'].get('n'))})", ""]
        md += _comparison_table(both["sft"], both["rlaif"])
    md += ["", "## Reward model", ""]
    md += [f"- {k}: {_fmt(v, k)}" for k, v in data["reward_model"].items()] or ["(not trained)"]
    md += ["", "## AI feedback", ""]
    md += [f"- {k}: {_fmt(v, k)}" for k, v in data["feedback"].items()] or ["(no labels)"]
    md += ["", "## PPO", ""]
    md += [f"- {k}: {_fmt(v, k)}" for k, v in data["ppo"].items()] or ["(not run)"]
    md += [""] + [f"![{p}]({p})" for p in data["plots"]]
    md += ["", "## Stage wall time (s)", "", "| stage | seconds |", "|---|---:|"]
    md += [f"| {s} | {t} |" for s, t in data["stages"].items()]
    md += [f"| total | {data['total_seconds']} |", ""]
    (workdir / "report.md").write_text("\n".join(md))
    return data


def _mean_std(values) -> dict:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def write_seeds_report(config, workdir: pathlib.Path, per_seed: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every SFT/RLAIF metric and the RM accuracy."""
    data = {"seeds": [config.seed + k for k in range(len(per_seed))],
            "workdirs": [d["workdir"] for d in per_seed]}
    for part in ("sft", "rlaif"):
        data[part] = {m: _mean_std([d[part].get(m) for d in per_seed]) for m in METRICS}
    data["delta"] = {m: _mean_std([d["rlaif"][m] - d["sft"][m] for d in per_seed
                                   if m in d["rlaif"] and m in d["sft"]]) for m in METRICS}
    data["reward_model"] = {k: _mean_std([d["reward_model"].get(k) for d in per_seed])
                            for k in ("val_pairwise_accuracy", "val_auc")}
    data["total_seconds"] = round(sum(d["total_seconds"] for d in per_seed), 1)
    (workdir / "report.json").write_text(json.dumps(data, indent=2) + "\n")

    def cell(s):
        return "–" if s["mean"] is None else f"{s['mean']:.2%} ± {s['std']:.2%}"

    md = [f"# RLAIF report over {len(per_seed)} seeds: {workdir}", "",
          f"Seeds {data['seeds']}; mean ± standard deviation; per-seed reports in "
          + ", ".join(f"`{w}/report.md`" for w in data["workdirs"]) + ".", "",
          "| metric | SFT | RLAIF | Δ (pt) |", "|---|---:|---:|---:|"]
    for m in METRICS:
        d = data["delta"][m]
        delta = "–" if d["mean"] is None else f"{d['mean'] * 100:+.1f} ± {d['std'] * 100:.1f}"
        md.append(f"| {m} | {cell(data['sft'][m])} | {cell(data['rlaif'][m])} | {delta} |")
    md += ["", "Reward model held-out pairwise accuracy: "
           + cell(data["reward_model"]["val_pairwise_accuracy"]), "",
           f"Total wall time: {data['total_seconds']} s", ""]
    (workdir / "report.md").write_text("\n".join(md))
    return data
