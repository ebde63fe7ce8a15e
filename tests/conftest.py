"""Shared test helpers: run the real CLI in a subprocess, load the project's configs."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cli(*args, env_extra=None, timeout=600, check=True):
    """Runs `python -m rlaif_jax.cli ARGS` from the repo root; returns the CompletedProcess."""
    env = dict(os.environ)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "rlaif_jax.cli", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rlaif-jax {' '.join(map(str, args))} failed "
                             f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


def load_config(name="smoke", arg=None):
    from rlaif_jax.config import load_config_file
    spec = str(ROOT / "configs" / f"{name}.py") + (f":{arg}" if arg else "")
    return load_config_file(spec)


@pytest.fixture
def smoke_config():
    return load_config("smoke")
