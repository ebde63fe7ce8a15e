"""Report formatting: undefined figures (NaN AUC with one held-out class) never print as numbers."""

import math

from rlaif_jax import report


def test_undefined_values_print_as_a_dash_and_are_left_out_of_seed_means():
    assert report._fmt(float("nan"), "val_auc") == "–"
    assert report._fmt(None, "val_auc") == "–"
    assert report._fmt(0.25, "val_auc") == "25.00%"
    stats = report._mean_std([0.5, float("nan"), 0.7, None])
    assert stats["n"] == 2 and math.isclose(stats["mean"], 0.6)
    assert report._mean_std([float("nan")]) == {"mean": None, "std": None, "n": 0}
