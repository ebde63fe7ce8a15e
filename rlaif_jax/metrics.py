"""Metrics to a JSON Lines file (always) and TensorBoard (when tensorboardX is installed), and the
stages' summary files. In a multi-host run only process 0 writes them (`distributed.is_writer`)."""

from __future__ import annotations

import json
import logging
import math
import pathlib
import time

from rlaif_jax import distributed


class MetricWriter:
    """Appends `{"step": s, "time": t, **metrics}` lines to `<dir>/<name>.jsonl`.

    On resume, `resume_step` drops lines logged after the restored checkpoint, so the file never
    holds two records for one step. On a process other than the writer (multi-host) it touches
    no file and `write` does nothing.
    """

    def __init__(self, directory: pathlib.Path, name: str, resume_step: int = 0):
        self.path = directory / f"{name}.jsonl"
        self._file = self._tb = None
        if not distributed.is_writer():
            return
        directory.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = self.path.open("a")
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(directory / "tensorboard" / name))
        except ImportError:
            logging.debug("tensorboardX not installed: metrics go to %s only", self.path)

    def write(self, step: int, metrics: dict) -> None:
        if self._file is None:
            return
        clean = {k: (float(v) if not isinstance(v, str) else v) for k, v in metrics.items()}
        record = {"step": int(step), "time": round(time.time(), 3), **clean}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def write_summary(workdir: pathlib.Path, stage: str, summary: dict) -> None:
    """`<workdir>/summaries/<stage>.json` (process 0 only)."""
    write_json(workdir / "summaries" / f"{stage}.json", summary)


def write_json(path: pathlib.Path, data: dict) -> None:
    """An indented JSON file, its directory created (process 0 only)."""
    if not distributed.is_writer():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
