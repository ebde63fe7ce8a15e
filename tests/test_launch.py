"""Multi-host launch: the TPU VM script's dry run, the per-host batch slicing, start-up detection."""

import importlib.util
import os
import shlex
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from conftest import ROOT
from rlaif_jax import distributed, sharding

SCRIPT = ROOT / "launch" / "tpu_vm.py"
BASE = ["--dry-run", "--name", "rlaif-test", "--zone", "us-central2-b", "--project", "my-proj"]
ZONE = ["--zone=us-central2-b", "--project=my-proj"]
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
RUN = ["--config", "configs/gpt2_large.py:/home/me/gpt2-large", "--workdir", "/home/me/runs/g"]


def launch(*args, check=True):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def commands(proc):
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def remote(cmd):
    """The --command=... of a `gcloud ... ssh` command."""
    return next(a for a in cmd if a.startswith("--command="))[len("--command="):]


def test_dry_run_prints_create_copy_install_start():
    cmds = commands(launch(*BASE, "--accelerator", "v4-8", *RUN,
                           "--override", "ppo.iterations=50"))
    assert len(cmds) == 6
    assert cmds[0] == [*TPU, "create", "rlaif-test", "--accelerator-type=v4-8",
                       "--version=tpu-ubuntu2204-base", *ZONE]
    tarball = "/tmp/rlaif_jax-rlaif-test.tgz"
    assert cmds[1][:3] == ["tar", "-czf", tarball] and cmds[1][-3:] == ["-C", str(ROOT), "."]
    assert cmds[2] == [*TPU, "scp", tarball, "rlaif-test:rlaif_jax.tgz", "--worker=all", *ZONE]
    for cmd in cmds[3:]:
        assert cmd[:6] == [*TPU, "ssh", "rlaif-test"] and "--worker=all" in cmd
        assert cmd[-2:] == ZONE
    assert remote(cmds[3]) == ("rm -rf ~/rlaif_jax && mkdir -p ~/rlaif_jax && "
                               "tar -xzf ~/rlaif_jax.tgz -C ~/rlaif_jax")
    assert "uv venv --python 3.11 .venv" in remote(cmds[4])
    assert "pip install --python .venv/bin/python -e '.[tpu]'" in remote(cmds[4])
    assert remote(cmds[5]) == (
        "cd ~/rlaif_jax && nohup .venv/bin/rlaif-jax run "
        "--config=configs/gpt2_large.py:/home/me/gpt2-large --workdir=/home/me/runs/g "
        "--config.ppo.iterations=50 > run.log 2>&1 < /dev/null & echo $! > ~/rlaif_jax/run.pid")


def test_the_printed_tar_command_packs_the_project_without_venv_or_git(tmp_path):
    cmd = commands(launch(*BASE, *RUN, "--steps", "copy"))[0]
    cmd[2] = str(tmp_path / "project.tgz")  # same command, another output file
    subprocess.run(cmd, check=True, cwd=tmp_path)
    with tarfile.open(tmp_path / "project.tgz") as tar:
        names = set(tar.getnames())
    assert {"./rlaif_jax/sharding.py", "./launch/tpu_vm.py", "./pyproject.toml"} <= names
    assert not any(n.startswith(("./.venv", "./.git/")) or "__pycache__" in n for n in names)


def test_pod_slice_runs_multihost_and_env_file_is_copied_not_printed(tmp_path):
    env_file = tmp_path / "secrets.env"
    env_file.write_text("OPENAI_API_KEY=sk-test-not-printed\n")
    proc = launch(*BASE, "--accelerator", "v4-32", *RUN, "--env-file", str(env_file),
                  "--steps", "copy,start")
    assert "v4-32: 4 workers; --workdir must be shared" in proc.stderr
    assert "sk-test" not in proc.stdout + proc.stderr
    cmds = commands(proc)
    assert cmds[3] == [*TPU, "scp", str(env_file), "rlaif-test:rlaif_jax/.env", "--worker=all",
                       *ZONE]
    assert remote(cmds[4]) == "chmod 600 ~/rlaif_jax/.env"
    start = remote(cmds[5])
    assert start.startswith("cd ~/rlaif_jax && set -a && . ./.env && set +a && nohup ")
    assert "--config.mesh.multihost=on" in start


def test_logs_stop_delete():
    cmds = commands(launch(*BASE, "--steps", "logs,stop,delete"))
    assert cmds[0][:7] == [*TPU, "ssh", "rlaif-test", "--worker=0"]
    assert remote(cmds[0]) == "tail -n 50 ~/rlaif_jax/run.log"
    assert remote(cmds[1]) == "kill -TERM $(cat ~/rlaif_jax/run.pid)"
    assert cmds[2] == [*TPU, "delete", "rlaif-test", "--quiet", *ZONE]


@pytest.mark.parametrize("args,message", [
    (["--workdir", "gs://bucket/run", "--config", "configs/gpt2_large.py"], "--workdir: gs://"),
    (["--accelerator", "v9-8", *RUN], "--accelerator: unknown TPU type 'v9-8'"),
    (["--steps", "create,launch", *RUN], "--steps: unknown ['launch']"),
    (["--config", "configs/nope.py", "--workdir", "/w"], "--config: "),
    (["--steps", "start"], "the start step needs --config and --workdir"),
    (["--override", "sft.steps", *RUN], "--override: expected KEY=VALUE"),
])
def test_bad_launch_arguments_are_refused_before_any_command(args, message):
    proc = launch(*BASE, *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


def test_bad_tpu_name_is_refused():
    proc = launch("--dry-run", "--name", "Bad_Name", "--zone", "z", *RUN, check=False)
    assert proc.returncode == 2 and "--name: 'Bad_Name' is not a valid TPU name" in proc.stderr


def test_hosts_per_accelerator_type():
    spec = importlib.util.spec_from_file_location("tpu_vm", SCRIPT)
    tpu_vm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tpu_vm)
    expected = {"v4-8": 1, "v4-16": 2, "v4-32": 4, "v3-8": 1, "v3-32": 4, "v5p-8": 1,
                "v5litepod-8": 1, "v5litepod-16": 4, "v6e-4": 1, "v6e-64": 16}
    assert {a: tpu_vm.hosts_for(a) for a in expected} == expected


# --- per-host batches ---------------------------------------------------------------------------


def test_row_blocks_two_hosts_on_an_fsdp_mesh():
    grid = np.arange(8).reshape(1, 8) // 4  # devices 0-3 on host 0, 4-7 on host 1
    assert distributed.row_blocks(grid, ("data", "fsdp"), 16) == {0: [(0, 8)], 1: [(8, 16)]}


def test_row_blocks_with_tensor_replicas_and_four_hosts():
    # data 2 x fsdp 2 x tensor 2, two devices per host along the tensor axis.
    grid = np.arange(8).reshape(2, 2, 2) // 2
    blocks = distributed.row_blocks(grid, ("data", "fsdp", "tensor"), 32)
    assert blocks == {0: [(0, 8)], 1: [(8, 16)], 2: [(16, 24)], 3: [(24, 32)]}
    # The tensor axis across hosts: both hosts need every row.
    grid = np.arange(4).reshape(1, 2, 2) % 2
    assert distributed.row_blocks(grid, ("data", "fsdp", "tensor"), 8) == {
        0: [(0, 8)], 1: [(0, 8)]}


@pytest.mark.parametrize("hosts", [1, 2, 4, 8])
def test_interleaved_hosts_get_their_blocks_and_the_pieces_rebuild_the_batch(hosts):
    grid = np.arange(8).reshape(2, 4) % hosts  # host h owns every hosts-th device
    batch = np.arange(16 * 3).reshape(16, 3)
    blocks = distributed.row_blocks(grid, ("data", "fsdp"), 16)
    assert sorted(blocks) == list(range(hosts))
    rebuilt = np.full_like(batch, -1)
    for host, spans in blocks.items():
        piece = distributed.host_rows(batch, spans)
        assert len(piece) == 16 // hosts
        offset = 0
        for start, stop in spans:
            rebuilt[start:stop] = piece[offset:offset + stop - start]
            offset += stop - start
    np.testing.assert_array_equal(rebuilt, batch)
    if hosts == 2:
        assert blocks[1] == [(2, 4), (6, 8), (10, 12), (14, 16)]


def test_rows_must_split_into_the_batch_shards():
    with pytest.raises(ValueError, match="12 rows do not split into the 8 batch shards"):
        distributed.row_blocks(np.zeros((2, 4), int), ("data", "fsdp"), 12)


def test_global_batch_on_one_process_is_the_batch_on_the_mesh():
    mesh = sharding.make_mesh(SimpleNamespace(data=-1, fsdp=1))
    batch = np.arange(24, dtype=np.int32).reshape(2, 4, 3)
    out = distributed.global_batch(batch, mesh, batch_dim=1)
    assert out.sharding == sharding.batch_sharding(mesh, 1, 3)
    np.testing.assert_array_equal(distributed.to_host(out), batch)


def test_row_blocks_agree_with_jax_on_eight_devices():
    """JAX's own placement of a batch on real 8-device meshes, grouped by a fake host id."""
    code = """
import json, numpy as np, jax
from types import SimpleNamespace as NS
from rlaif_jax import distributed, sharding
out = []
for sizes in ((2, 4, 1), (1, 4, 2), (4, 2, 1)):
    mesh = sharding.make_mesh(NS(data=sizes[0], fsdp=sizes[1], tensor=sizes[2]))
    for fake in ((lambda d: d.id // 4), (lambda d: d.id % 2), (lambda d: d.id // 2)):
        grid = distributed.process_grid(mesh, fake)
        mine = distributed.row_blocks(grid, mesh.axis_names, 16)
        theirs = {}
        for device, index in sharding.batch_sharding(mesh, 0, 2).devices_indices_map((16, 3)).items():
            theirs.setdefault(fake(device), set()).add(index[0].indices(16)[:2])
        theirs = {p: sorted(v) for p, v in theirs.items()}
        merged = {p: [r for s in spans for r in range(*s)] for p, spans in mine.items()}
        expect = {p: [r for s in spans for r in range(*s)] for p, spans in theirs.items()}
        out.append(merged == expect)
    batch = np.arange(32).reshape(16, 2)
    same = np.array_equal(np.asarray(distributed.global_batch(batch, mesh)), batch)
    out.append(same)
print(json.dumps(out))
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str([True] * 12).replace("True", "true")


# --- start-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize("env,reason", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476"}, "JAX_COORDINATOR_ADDRESS"),
    ({"TPU_WORKER_HOSTNAMES": "t-w-0"}, None),  # one host
    ({"TPU_WORKER_HOSTNAMES": "t-w-0,t-w-1"}, "TPU_WORKER_HOSTNAMES"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "SLURM_NTASKS"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_COMM_WORLD_SIZE"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}, "MEGASCALE_COORDINATOR_ADDRESS"),
])
def test_multihost_detection_from_the_environment(env, reason):
    assert distributed.multihost_reason(env) == reason


def test_maybe_initialize_does_nothing_on_one_host_and_checks_its_mode():
    assert distributed.maybe_initialize("auto", env={}) is False
    assert distributed.maybe_initialize("off", env={"JAX_COORDINATOR_ADDRESS": "x:1"}) is False
    assert distributed.initialize_kwargs({"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}) == {
        "num_processes": 4, "process_id": 2}
    with pytest.raises(ValueError, match="config.mesh.multihost: 'yes'"):
        distributed.maybe_initialize("yes")
    assert jax.process_count() == 1
