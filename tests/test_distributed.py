"""Multi-host behaviour of the stages' outputs: gathers to every host, files from process 0 only.

The two-process test is a real multi-process JAX job: two Python processes on this machine,
four CPU devices each, connected by `jax.distributed` over the loopback interface (CPU
collectives via gloo), so every array below spans devices that one process cannot address.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from conftest import ROOT, load_config

WORKER = r"""
import json, pathlib, sys
import jax, numpy as np
process, port, out_dir = int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process)
from types import SimpleNamespace as NS
import jax.numpy as jnp
from rlaif_jax import distributed, sharding
from rlaif_jax.metrics import MetricWriter, write_summary

mesh = sharding.make_mesh(NS(data=2, fsdp=4, tensor=1))
full = np.arange(16 * 3, dtype=np.int32).reshape(16, 3)
x = sharding.put_batch({"x": full}, mesh)["x"]
local_rows = sorted({int(r) for s in x.addressable_shards for r in np.asarray(s.data)[:, 0] // 3})
doubled = jax.jit(lambda a: a * 2)(x)
try:
    jax.device_get(doubled)
    device_get_refused = False
except RuntimeError:
    device_get_refused = True
gathered = distributed.to_host({"doubled": doubled, "total": jnp.sum(doubled)})
# A host value that differs between processes: every process gets process 0's.
agreed = distributed.from_writer(np.full((4,), process, np.float32))
mine = out_dir / f"p{process}"
writer = MetricWriter(mine / "metrics", "stage")
writer.write(1, {"loss": 0.5})
writer.close()
write_summary(mine, "stage", {"n": 1})
distributed.barrier("test done")
print(json.dumps({
    "process": jax.process_index(), "devices": jax.device_count(),
    "fully_addressable": x.is_fully_addressable, "local_rows": local_rows,
    "device_get_refused": device_get_refused,
    "gathered_ok": bool(np.array_equal(gathered["doubled"], full * 2)),
    "total": int(gathered["total"]), "agreed": agreed.tolist(),
    "is_writer": distributed.is_writer(),
    "files": sorted(str(p.relative_to(mine)) for p in mine.rglob("*") if p.is_file()),
}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_gather_batch_sharded_outputs_and_only_process_0_writes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(tmp_path)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    p0, p1 = outs
    for i, o in enumerate(outs):
        assert o["process"] == i and o["devices"] == 8 and not o["fully_addressable"]
        assert o["device_get_refused"]  # why the stages must gather
        assert o["gathered_ok"] and o["total"] == int(np.arange(48).sum() * 2)
        assert o["agreed"] == [0.0] * 4
    # Each process put only its own half of the rows on its devices.
    assert p0["local_rows"] == list(range(8)) and p1["local_rows"] == list(range(8, 16))
    assert p0["is_writer"] and not p1["is_writer"]
    assert p0["files"] == ["metrics/stage.jsonl", "summaries/stage.json"]
    assert p1["files"] == []


def test_to_host_on_eight_devices_returns_the_global_values():
    code = """
import json, numpy as np, jax, jax.numpy as jnp
from types import SimpleNamespace as NS
from rlaif_jax import distributed, sharding
mesh = sharding.make_mesh(NS(data=2, fsdp=4, tensor=1))
batch = {"tokens": np.arange(32, dtype=np.int32).reshape(8, 4),
         "lengths": np.arange(8, dtype=np.int32)}
on_mesh = sharding.put_batch(batch, mesh)
out = distributed.to_host({**on_mesh, "max": jnp.max(on_mesh["lengths"]), "host": np.ones(2)})
print(json.dumps({
    "shards": len(on_mesh["tokens"].sharding.device_set),
    "types": sorted({type(v).__name__ for v in out.values()}),
    "tokens": bool(np.array_equal(out["tokens"], batch["tokens"])),
    "lengths": out["lengths"].tolist(), "max": int(out["max"]), "host": out["host"].tolist()}))
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"shards": 8, "types": ["ndarray"], "tokens": True,
                   "lengths": list(range(8)), "max": 7, "host": [1.0, 1.0]}


def test_is_writer_follows_the_process_index(monkeypatch):
    import jax

    from rlaif_jax import distributed
    assert distributed.is_writer()  # one process: it writes
    monkeypatch.setattr(jax, "process_index", lambda *a: 1)
    assert not distributed.is_writer()
    monkeypatch.setattr(jax, "process_index", lambda *a: 0)
    assert distributed.is_writer()


def test_metric_writer_and_summaries_write_nothing_on_another_process(tmp_path, monkeypatch):
    import jax

    from rlaif_jax.metrics import MetricWriter, write_json, write_summary
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "sft.jsonl").write_text('{"step": 1}\n{"step": 9}\n')
    monkeypatch.setattr(jax, "process_index", lambda *a: 1)
    writer = MetricWriter(tmp_path / "metrics", "sft", resume_step=1)
    writer.write(2, {"loss": 1.0})
    writer.close()
    write_summary(tmp_path, "sft", {"a": 1})
    write_json(tmp_path / "x" / "y.json", {"a": 1})
    # Not even the resume truncation: that file belongs to process 0.
    assert (tmp_path / "metrics" / "sft.jsonl").read_text() == '{"step": 1}\n{"step": 9}\n'
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["metrics", "sft.jsonl"]


def test_sft_stage_on_another_process_writes_no_files_but_its_checkpoint(tmp_path, monkeypatch):
    """A short smoke SFT run as process 1 leaves only its orbax checkpoint (every process saves
    its shards); test_sft_train checks what process 0 writes."""
    from rlaif_jax import distributed
    from rlaif_jax.train import sft
    config = load_config("smoke")
    with config.unlocked():
        config.sft.steps = 2
        config.sft.warmup_steps = 1
        config.sft.eval_every = 2
        config.checkpoint.every_steps = 2
        config.data.length_bucket = 0  # one shape: one compilation per step function
        config.model.n_layer = 1
    # Orbax asks jax.process_index too; patch only what the project reads through
    # `distributed.is_writer`, so the checkpoint is committed as on a real process.
    monkeypatch.setattr(distributed, "jax", _JaxWithProcess(distributed.jax, 1))
    summary = sft.train(config, tmp_path)
    assert summary["steps"] == 2 and np.isfinite(summary["val_loss"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoints"]
    assert (tmp_path / "checkpoints" / "sft" / "2").is_dir()


class _JaxWithProcess:
    """The jax module as seen from `rlaif_jax.distributed`, with another process index."""

    def __init__(self, jax, process):
        self._jax, self._process = jax, process

    def process_index(self, *args):
        return self._process

    def __getattr__(self, name):
        return getattr(self._jax, name)
