#!/usr/bin/env python3
"""Run a config on a Cloud TPU VM or pod slice: create, copy, install, start, logs, stop, delete.

Every step is a `gcloud compute tpus tpu-vm ...` command (plus a local `tar`); `--dry-run`
prints the exact commands, one per line, without running anything:

    python launch/tpu_vm.py --dry-run --name rlaif --zone us-central2-b --accelerator v4-8 \\
        --config configs/gpt2_large.py:/home/$USER/gpt2-large --workdir /home/$USER/runs/gpt2l

Steps (`--steps`, default create,copy,install,start):
  create   the TPU VM (`--spot` for a preemptible one; the stages resume after preemption)
  copy     this checkout (without .venv, .git, runs) as a tarball to every worker, unpacked in
           ~/rlaif_jax; `--env-file` (e.g. OPENAI_API_KEY=...) goes to ~/rlaif_jax/.env, mode 600
  install  Python 3.11 (uv) and `pip install -e ".[tpu]"` on every worker
  start    `rlaif-jax COMMAND --config ... --workdir ...` on every worker at once, detached (log in
           ~/rlaif_jax/run.log, pid in ~/rlaif_jax/run.pid); a pod slice (several hosts) also gets
           --config.mesh.multihost=on, so every process calls jax.distributed.initialize()
  logs     the last lines of worker 0's log
  stop     SIGTERM to the run on every worker (the stages save a checkpoint and exit)
  delete   the TPU VM

On a pod slice every worker runs the same program; checkpoints are written by all of them into
one directory, so `--workdir` must be the same shared directory on every worker (an NFS /
Filestore mount, or a gcsfuse mount of a bucket). A gs:// URL is refused: the stages write
their workdir with ordinary file operations.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = ("create", "copy", "install", "start", "logs", "stop", "delete")
DEFAULT_STEPS = "create,copy,install,start"
REMOTE_DIR = "rlaif_jax"  # in the workers' home directories
# Top-level directories (anchored) and names excluded anywhere.
EXCLUDES = ("./.venv", "./.git", "./runs", "./workdirs", "__pycache__", ".pytest_cache",
            "*.egg-info")


def hosts_for(accelerator: str) -> int:
    """Worker VMs of a slice: v2/v3/v4/v5p-N count TensorCores (8 per host); v5e/v6e count chips
    (up to 8 on one host, 4 per host in multi-host slices)."""
    match = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)", accelerator)
    if not match:
        raise ValueError(f"--accelerator: unknown TPU type {accelerator!r} (e.g. v4-8, v4-32, "
                         "v5p-8, v5litepod-8, v6e-8); pass --hosts for others")
    generation, n = match.group(1), int(match.group(2))
    if generation in ("v2", "v3", "v4", "v5p"):
        return max(n // 8, 1)
    return 1 if n <= 8 else n // 4


def _gcloud(args, verb: str, *rest: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest, f"--zone={args.zone}"]
    return cmd + ([f"--project={args.project}"] if args.project else [])


def _ssh(args, command: str, worker: str = "all") -> list[str]:
    return _gcloud(args, "ssh", args.name, f"--worker={worker}", f"--command={command}")


def run_command(args, hosts: int) -> str:
    """The shell command each worker runs for `start`."""
    cli = [".venv/bin/rlaif-jax", args.command, f"--config={args.config}",
           f"--workdir={args.workdir}"]
    if hosts > 1:
        cli.append("--config.mesh.multihost=on")
    cli += [f"--config.{kv}" for kv in args.override]
    env = "set -a && . ./.env && set +a && " if args.env_file else ""
    return (f"cd ~/{REMOTE_DIR} && {env}nohup {shlex.join(cli)} > run.log 2>&1 < /dev/null & "
            f"echo $! > ~/{REMOTE_DIR}/run.pid")


def plan(args) -> list[list[str]]:
    """The commands of the requested steps, in order."""
    hosts = args.hosts or hosts_for(args.accelerator)
    tarball = f"/tmp/rlaif_jax-{args.name}.tgz"
    out: list[list[str]] = []
    for step in args.steps:
        if step == "create":
            out.append(_gcloud(args, "create", args.name, f"--accelerator-type={args.accelerator}",
                               f"--version={args.version}") + (["--spot"] if args.spot else []))
        elif step == "copy":
            out.append(["tar", "-czf", tarball, *(f"--exclude={e}" for e in EXCLUDES),
                        "-C", str(ROOT), "."])
            out.append(_gcloud(args, "scp", tarball, f"{args.name}:{REMOTE_DIR}.tgz",
                               "--worker=all"))
            out.append(_ssh(args, f"rm -rf ~/{REMOTE_DIR} && mkdir -p ~/{REMOTE_DIR} && "
                                  f"tar -xzf ~/{REMOTE_DIR}.tgz -C ~/{REMOTE_DIR}"))
            if args.env_file:
                out.append(_gcloud(args, "scp", str(args.env_file),
                                   f"{args.name}:{REMOTE_DIR}/.env", "--worker=all"))
                out.append(_ssh(args, f"chmod 600 ~/{REMOTE_DIR}/.env"))
        elif step == "install":
            out.append(_ssh(args, (
                f"cd ~/{REMOTE_DIR} && curl -LsSf https://astral.sh/uv/install.sh | sh && "
                'export PATH="$HOME/.local/bin:$PATH" && '
                f"uv venv --python {args.python} .venv && "
                "uv pip install --python .venv/bin/python -e '.[tpu]'")))
        elif step == "start":
            out.append(_ssh(args, run_command(args, hosts)))
        elif step == "logs":
            out.append(_ssh(args, f"tail -n 50 ~/{REMOTE_DIR}/run.log", worker="0"))
        elif step == "stop":
            out.append(_ssh(args, f"kill -TERM $(cat ~/{REMOTE_DIR}/run.pid)"))
        elif step == "delete":
            out.append(_gcloud(args, "delete", args.name, "--quiet"))
    return out


def _check(args, parser) -> None:
    """Refuses bad input before any command runs, naming the option."""
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f"--steps: unknown {unknown} (steps: {', '.join(STEPS)})")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", args.name):
        parser.error(f"--name: {args.name!r} is not a valid TPU name (lowercase letters, digits "
                     "and dashes, starting with a letter)")
    try:
        hosts_for(args.accelerator) if not args.hosts else None
    except ValueError as e:
        parser.error(str(e))
    if "start" in args.steps:
        if not args.config or not args.workdir:
            parser.error("the start step needs --config and --workdir")
        config_file = ROOT / args.config.partition(":")[0]
        if not config_file.is_file():
            parser.error(f"--config: {config_file} not found (paths are relative to {ROOT})")
        if args.workdir.startswith("gs://"):
            parser.error("--workdir: gs:// is not a directory the stages can write; mount the "
                         "bucket with gcsfuse (or use NFS / Filestore) at the same path on every "
                         "worker and pass that path")
        for kv in args.override:
            if "=" not in kv:
                parser.error(f"--override: expected KEY=VALUE (e.g. sft.steps=100), got {kv!r}")
    if args.env_file and not pathlib.Path(args.env_file).is_file():
        parser.error(f"--env-file: {args.env_file} not found")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True, help="e.g. us-central2-b")
    parser.add_argument("--project", default="", help="GCP project (default: gcloud's)")
    parser.add_argument("--accelerator", default="v4-8", help="TPU type, e.g. v4-8, v4-32")
    parser.add_argument("--hosts", type=int, default=0,
                        help="worker VMs of the slice (default: from --accelerator)")
    parser.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM image")
    parser.add_argument("--spot", action="store_true", help="a preemptible (spot) TPU VM")
    parser.add_argument("--config", default="", help="config file relative to the project root, "
                        "with its :ARG, e.g. configs/gpt2_large.py:/home/me/gpt2-large")
    parser.add_argument("--workdir", default="", help="run directory on the workers (shared "
                        "between them on a pod slice)")
    parser.add_argument("--command", default="run", help="rlaif-jax command (default: run)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed as --config.KEY=VALUE (repeatable)")
    parser.add_argument("--env-file", default="", help="KEY=VALUE lines for the workers' "
                        "environment (e.g. OPENAI_API_KEY); copied, never printed")
    parser.add_argument("--python", default="3.11", help="Python version on the workers")
    parser.add_argument("--steps", default=DEFAULT_STEPS,
                        help=f"comma-separated, in order (default: {DEFAULT_STEPS}; also: logs, "
                             "stop, delete)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    _check(args, parser)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    commands = plan(args)
    hosts = args.hosts or hosts_for(args.accelerator)
    if hosts > 1:
        print(f"# {args.accelerator}: {hosts} workers; --workdir must be shared by all of them",
              file=sys.stderr)
    for cmd in commands:
        print(shlex.join(cmd), flush=True)
        if args.dry_run:
            continue
        try:
            subprocess.run(cmd, check=True)
        except FileNotFoundError:
            print(f"tpu_vm.py: {cmd[0]} not found; install the Google Cloud SDK", file=sys.stderr)
            return 1
        except subprocess.CalledProcessError as e:
            print(f"tpu_vm.py: step failed with exit code {e.returncode}: {shlex.join(cmd)}",
                  file=sys.stderr)
            return e.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
