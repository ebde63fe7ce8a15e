"""Text-similarity measures: ROUGE-L (rouge-score) and CodeBLEU (the `codebleu` package).

Both compare the response's code with the reference record's code: the response's `<<<code>>>`
section, or its `api_call` when it has no code section (see `sandbox.executable_code`), against
the gold record's `code`. `rougeL_api_call` compares the two api_call sections instead.
"""

from __future__ import annotations

import logging

from rouge_score import rouge_scorer

_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure; 0 when either side is empty."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)


def codebleu(predictions: list[str], references: list[str]) -> dict:
    """Corpus-level CodeBLEU (Python) with its four components; empty predictions score 0.

    Uses the package's default weights (0.25 each). The package warns and scores the data-flow
    component 0 when no reference yields data flows; that is kept, not re-weighted.
    """
    from codebleu import calc_codebleu

    pairs = [(p, r) for p, r in zip(predictions, references) if p.strip() and r.strip()]
    if not pairs:
        return {"codebleu": 0.0}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the package logs a warning per degenerate corpus
    try:
        out = calc_codebleu([r for _, r in pairs], [p for p, _ in pairs], lang="python")
    finally:
        root.setLevel(level)
    scale = len(pairs) / len(predictions)  # empty predictions count as 0
    return {k: float(v) * scale for k, v in out.items()}


def codebleu_one(prediction: str, reference: str) -> float:
    """Sentence-level CodeBLEU of one response (for per-response records)."""
    return codebleu([prediction], [reference])["codebleu"]
