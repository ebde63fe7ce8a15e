"""Judge answers -> scores, acceptable labels, preference pairs, and their statistics.

* hard score = number of "yes" answers (an unparseable answer counts as no);
* soft score = sum over questions of P(yes) from the judge's token logprobs, defined only when
  every question has one (else None);
* score = the soft score when defined, else the hard score; it orders candidates for pairs;
* acceptable = hard score >= `config.feedback.threshold` (the study's "is this code acceptable");
* pairs: for each prompt (hub + question_id), its best and worst candidate by score, kept when
  ``best - worst >= config.feedback.pair_min_margin`` (so ties are dropped). Among candidates
  with equal scores the earliest sample wins, so pairs are deterministic.
"""

from __future__ import annotations

import collections


def hard_score(answers: dict) -> int:
    return sum(1 for v in answers.values() if v == "yes")


def soft_score(p_yes: dict) -> float | None:
    values = list(p_yes.values())
    if not values or any(v is None for v in values):
        return None
    return float(sum(values))


def label_row(candidate: dict, prompt: str, answer: dict, threshold: int, judge: str,
              rubric: str) -> dict:
    """One row of labels.jsonl (see the module docstring)."""
    hard = hard_score(answer["answers"])
    soft = soft_score(answer["p_yes"])
    return {
        "question_id": int(candidate["question_id"]), "hub": candidate["hub"],
        "source": candidate.get("source", ""), "split": candidate.get("split", ""),
        "sample_index": int(candidate.get("sample_index", 0)),
        "instruction": candidate.get("instruction", ""), "prompt": prompt,
        "text": candidate.get("text", ""), "answers": dict(answer["answers"]),
        "p_yes": dict(answer["p_yes"]), "hard_score": hard, "soft_score": soft,
        "score": soft if soft is not None else float(hard), "acceptable": hard >= threshold,
        "judge": judge, "rubric": rubric,
    }


def preference_pairs(rows: list[dict], min_margin: float) -> list[dict]:
    """Best-vs-worst pairs per prompt with at least `min_margin` between their scores."""
    by_prompt = collections.defaultdict(list)
    for row in rows:
        by_prompt[(row["hub"], row["source"], row["question_id"])].append(row)
    pairs = []
    for group in by_prompt.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda r: r["sample_index"])
        best = max(group, key=lambda r: r["score"])
        worst = min(group, key=lambda r: r["score"])
        margin = best["score"] - worst["score"]
        if margin < min_margin or margin <= 0:
            continue
        pairs.append({"question_id": best["question_id"], "hub": best["hub"],
                      "source": best["source"], "instruction": best["instruction"],
                      "prompt": best["prompt"], "chosen": best["text"],
                      "rejected": worst["text"], "chosen_score": best["score"],
                      "rejected_score": worst["score"], "margin": margin})
    return pairs


def statistics(rows: list[dict], pairs: list[dict], question_ids: list[str],
               gold_correct: list[bool] | None = None) -> dict:
    """Label counts, the score histogram, per-question yes rates and agreement with AST match.

    `gold_correct` (per row: Gorilla's AST match says the candidate calls the right API) gives
    the sanity figures: the acceptable rate among AST-correct and AST-wrong candidates, and the
    fraction of rows where "acceptable" and "AST-correct" agree.
    """
    n = len(rows)
    stats = {
        "candidates": n,
        "prompts": len({(r["hub"], r["source"], r["question_id"]) for r in rows}),
        "acceptable": sum(r["acceptable"] for r in rows),
        "acceptable_fraction": sum(r["acceptable"] for r in rows) / n if n else 0.0,
        "hard_score_histogram": {str(k): v for k, v in sorted(
            collections.Counter(r["hard_score"] for r in rows).items())},
        "mean_hard_score": sum(r["hard_score"] for r in rows) / n if n else 0.0,
        "soft_scores": sum(r["soft_score"] is not None for r in rows),
        "yes_rate": {q: (sum(r["answers"].get(q) == "yes" for r in rows) / n if n else 0.0)
                     for q in question_ids},
        "unanswered": {q: sum(r["answers"].get(q) not in ("yes", "no") for r in rows)
                       for q in question_ids},
        "pairs": len(pairs),
        "mean_pair_margin": sum(p["margin"] for p in pairs) / len(pairs) if pairs else 0.0,
    }
    if gold_correct is not None:
        good = [r["acceptable"] for r, c in zip(rows, gold_correct) if c]
        bad = [r["acceptable"] for r, c in zip(rows, gold_correct) if not c]
        stats["ast_correct_fraction"] = sum(gold_correct) / n if n else 0.0
        stats["acceptable_given_ast_correct"] = sum(good) / len(good) if good else None
        stats["acceptable_given_ast_wrong"] = sum(bad) / len(bad) if bad else None
        stats["agreement_with_ast"] = (sum(r["acceptable"] == c for r, c in
                                           zip(rows, gold_correct)) / n if n else 0.0)
    return stats


def plot_histogram(stats: dict, n_questions: int, path) -> None:
    """A bar chart of the hard-score histogram with the acceptable threshold region."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [stats["hard_score_histogram"].get(str(k), 0) for k in range(n_questions + 1)]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(n_questions + 1), counts, color="tab:blue")
    ax.set_xlabel("hard score (yes answers)")
    ax.set_ylabel("candidates")
    ax.set_title(f"{stats['candidates']} candidates, {stats['acceptable_fraction']:.0%} "
                 "acceptable")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
