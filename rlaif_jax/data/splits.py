"""Train / validation / test splits of the configured Gorilla APIBench sources.

Each source (`cfg.sources`) is one APIBench file with a role:

* ``"split"``: a seeded permutation sends `test_fraction` of it to test, `validation_fraction`
  to validation and the rest to train;
* ``"train"``: `validation_fraction` of it goes to validation, the rest to train;
* ``"test"``: all of it goes to test.

An empty `path` names the vendored file: ``<hub>_train.json`` for role "train", else
``<hub>_eval.json`` (Gorilla ships only the eval file of Hugging Face). Each source's permutation
comes from `numpy.random.default_rng` seeded with (split_seed, crc32 of "hub/file name"), so the
splits do not depend on the order sources are listed in.
"""

from __future__ import annotations

import collections
import logging
import pathlib
import zlib
from collections.abc import Mapping

import datasets
import numpy as np

from rlaif_jax.data import gorilla

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
ROLES = ("split", "train", "test")
FEATURES = datasets.Features({name: datasets.Value("string") for name in gorilla.RECORD_FIELDS})


def _field(obj, name: str):
    """`obj[name]` for a mapping, else `obj.name` (ConfigDicts and plain objects)."""
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def source_path(hub: str, path: str, role: str) -> pathlib.Path:
    """`path`, or the vendored APIBench file a source of `role` uses when `path` is empty."""
    if path:
        return pathlib.Path(path)
    return gorilla.apibench_path(hub, "train" if role == "train" else "eval")


def _assign(n: int, role: str, rng: np.random.Generator, validation_fraction: float,
            test_fraction: float) -> dict[str, np.ndarray]:
    """Indices 0..n-1 of one source's records for each split, ascending."""
    if role == "test":
        return {"train": np.arange(0), "validation": np.arange(0), "test": np.arange(n)}
    perm = rng.permutation(n)
    n_test = round(n * test_fraction) if role == "split" else 0
    n_val = round(n * validation_fraction)
    parts = {"test": perm[:n_test], "validation": perm[n_test:n_test + n_val],
             "train": perm[n_test + n_val:]}
    return {split: np.sort(idx) for split, idx in parts.items()}


def _dataset(rows: list[dict]) -> datasets.Dataset:
    """A dataset with the record columns, also when `rows` is empty (which `from_list` rejects)."""
    columns = {name: [row[name] for row in rows] for name in gorilla.RECORD_FIELDS}
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def build_splits(cfg) -> datasets.DatasetDict:
    """The "train", "validation" and "test" datasets of `cfg.sources` (see the module docstring).

    Rows have the `gorilla.RECORD_FIELDS` string columns, ordered by source (as listed) then
    question_id. Every parsed record lands in exactly one split.
    """
    seed = int(_field(cfg, "split_seed"))
    validation_fraction = float(_field(cfg, "validation_fraction"))
    test_fraction = float(_field(cfg, "test_fraction"))
    on_malformed = _field(cfg, "on_malformed")
    max_records = int(_field(cfg, "max_records_per_source"))
    if not (0 <= validation_fraction < 1 and 0 <= test_fraction < 1
            and validation_fraction + test_fraction < 1):
        raise ValueError(f"validation_fraction={validation_fraction} and test_fraction="
                         f"{test_fraction} must be in [0, 1) and sum below 1")
    rows = {split: [] for split in SPLITS}
    seen = set()
    total_skipped = 0
    for spec in _field(cfg, "sources"):
        hub, role = _field(spec, "hub"), _field(spec, "role")
        if role not in ROLES:
            raise ValueError(f"source role {role!r} is not one of {ROLES}")
        path = source_path(hub, _field(spec, "path"), role)
        if (hub, path.resolve()) in seen:
            raise ValueError(f"source {hub} {path} is listed twice")
        seen.add((hub, path.resolve()))
        records, skipped = gorilla.load_apibench(path, hub, on_error=on_malformed)
        total_skipped += skipped
        if max_records > 0:
            records = records[:max_records]
        rng = np.random.default_rng([seed, zlib.crc32(f"{hub}/{path.name}".encode())])
        assignment = _assign(len(records), role, rng, validation_fraction, test_fraction)
        for split, indices in assignment.items():
            rows[split].extend(records[i] for i in indices)
        logger.info("%s (%s, role %s): %d records, %d malformed skipped -> %s", path, hub, role,
                    len(records), skipped,
                    ", ".join(f"{split} {len(assignment[split])}" for split in SPLITS))
    if total_skipped:
        logger.warning("skipped %d malformed APIBench records in total", total_skipped)
    return datasets.DatasetDict({split: _dataset(rows[split]) for split in SPLITS})


def split_summary(dd: datasets.DatasetDict) -> dict:
    """Record counts per split and hub, e.g. ``{"train": {"huggingface": 729, ...}, ...}``."""
    return {split: dict(sorted(collections.Counter(dd[split]["hub"]).items())) for split in dd}
