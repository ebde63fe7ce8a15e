"""Metrics to a JSON Lines file (always) and TensorBoard (when tensorboardX is installed)."""

from __future__ import annotations

import json
import logging
import math
import pathlib
import time


class MetricWriter:
    """Appends `{"step": s, "time": t, **metrics}` lines to `<dir>/<name>.jsonl`.

    On resume, `resume_step` drops lines logged after the restored checkpoint, so the file never
    holds two records for one step.
    """

    def __init__(self, directory: pathlib.Path, name: str, resume_step: int = 0):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = self.path.open("a")
        self._tb = None
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(directory / "tensorboard" / name))
        except ImportError:
            logging.debug("tensorboardX not installed: metrics go to %s only", self.path)

    def write(self, step: int, metrics: dict) -> None:
        clean = {k: (float(v) if not isinstance(v, str) else v) for k, v in metrics.items()}
        record = {"step": int(step), "time": round(time.time(), 3), **clean}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
