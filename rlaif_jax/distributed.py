"""Several hosts, one program: `jax.distributed` start-up and per-host batches.

On a TPU pod slice (or several GPU hosts) every host runs the same command. Each process sees
its own local devices, and `jax.devices()` lists the devices of all processes once
`jax.distributed.initialize()` has connected them; the mesh then spans every host and each
jitted step runs as one SPMD program.

* Start-up: `maybe_initialize(mode)` calls `jax.distributed.initialize()` when `mode` is "on",
  or when it is "auto" and the environment shows a multi-process job: JAX_COORDINATOR_ADDRESS
  (with JAX_NUM_PROCESSES and JAX_PROCESS_ID for a hand-made cluster), TPU_WORKER_HOSTNAMES /
  TPU_PROCESS_ADDRESSES listing several hosts (GKE), MEGASCALE_COORDINATOR_ADDRESS (multislice),
  or a SLURM / Open MPI job of several tasks. JAX itself finds the coordinator in each of these.
  A Cloud TPU VM pod slice shows none of them in the environment (JAX reads the VM's metadata
  server), so `launch/tpu_vm.py` passes `--config.mesh.multihost=on` there. The CLI calls it
  first thing in `_setup_run`, before any JAX computation.
* Data: every host builds the same global batch from the seeded schedule, then contributes only
  the rows its own devices hold: `row_blocks` finds them from the mesh (one block of rows per
  (data, fsdp) position; tensor-parallel replicas share theirs), `host_rows` cuts them out and
  `global_batch` joins the hosts' pieces into one global array with
  `jax.make_array_from_process_local_data`. `sharding.put_batch` does this by itself when
  there are several processes. The slicing is plain numpy over a grid of process ids, so it
  is tested for any fake host count on one machine.
* Checkpoints: orbax saves from all hosts when every process calls `save` with the same step,
  which the stages do since all processes run the same loop: each host writes the shards its
  devices hold and the primary host (process 0) writes the metadata and commits the step
  after a barrier. Restoring reads each host's shards back the same way. The checkpoint
  directory must therefore be one directory that every host sees: a shared file system
  (NFS / Filestore, or a gcsfuse mount) at the same path on each worker.
* Outputs: what a stage brings back to the host from a batch-sharded array (generated tokens,
  reward-model scores) goes through `to_host`, which gathers the rows of every host, so all
  hosts decode, score and log the same values. Files (metrics, summaries, samples, feedback,
  reports, the tokenizer and model config) are written by process 0 alone (`is_writer`); the
  other hosts compute the same things and skip the write. Host values that could differ
  between hosts (sandbox results under a time limit) are taken from process 0 (`from_writer`).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh

MODES = ("auto", "on", "off")


def _count(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def multihost_reason(env=None) -> str | None:
    """Why the environment looks like a multi-process job (the variable found), or None."""
    env = os.environ if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    for key in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):
        hosts = [h for h in env.get(key, "").split(",") if h.strip()]
        if len(hosts) > 1:
            return key
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "MEGASCALE_COORDINATOR_ADDRESS"
    if env.get("SLURM_JOB_ID") and _count(env.get("SLURM_NTASKS")) > 1:
        return "SLURM_NTASKS"
    if _count(env.get("OMPI_COMM_WORLD_SIZE")) > 1:
        return "OMPI_COMM_WORLD_SIZE"
    return None


def initialize_kwargs(env=None) -> dict:
    """Explicit arguments from JAX_NUM_PROCESSES / JAX_PROCESS_ID (JAX reads the coordinator
    address itself); empty when unset, letting JAX detect the cluster."""
    env = os.environ if env is None else env
    kwargs = {}
    if env.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if env.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    return kwargs


def maybe_initialize(mode: str = "auto", env=None) -> bool:
    """Connects the processes of a multi-host job; returns whether it did. Idempotent."""
    if mode not in MODES:
        raise ValueError(f"config.mesh.multihost: {mode!r} is not one of {', '.join(MODES)}")
    reason = "config.mesh.multihost=on" if mode == "on" else (
        multihost_reason(env) if mode == "auto" else None)
    if reason is None:
        return False
    if jax.distributed.is_initialized():
        return True
    logging.info("Multi-host run (%s): calling jax.distributed.initialize()", reason)
    jax.distributed.initialize(**initialize_kwargs(env))
    logging.info("Process %d of %d; %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


# --- per-host batches ---------------------------------------------------------------------------


def row_blocks(process_grid: np.ndarray, axis_names, n_rows: int,
               batch_axes=("data", "fsdp")) -> dict[int, list[tuple[int, int]]]:
    """Which rows of a batch split over `batch_axes` each process's devices hold.

    `process_grid` has the mesh's shape and holds each device's process index. The rows are
    cut into as many equal blocks as there are batch shards, numbered over the batch axes in
    mesh order (the first axis major), as `PartitionSpec(("data", "fsdp"))` does; the other axes
    (tensor) replicate their block. Returns {process: sorted [(start, stop), ...]}, the blocks
    that process must provide (contiguous ones merged).
    """
    names = list(axis_names)
    batch_dims = [names.index(a) for a in batch_axes if a in names]
    n_blocks = int(np.prod([process_grid.shape[d] for d in batch_dims]))
    if n_rows % n_blocks:
        raise ValueError(f"{n_rows} rows do not split into the {n_blocks} batch shards of the mesh")
    size = n_rows // n_blocks
    blocks: dict[int, set[int]] = {}
    for position, process in np.ndenumerate(process_grid):
        block = int(np.ravel_multi_index([position[d] for d in batch_dims],
                                         [process_grid.shape[d] for d in batch_dims]))
        blocks.setdefault(int(process), set()).add(block)
    out = {}
    for process, ids in sorted(blocks.items()):
        spans: list[list[int]] = []
        for b in sorted(ids):
            if spans and spans[-1][1] == b * size:
                spans[-1][1] = (b + 1) * size
            else:
                spans.append([b * size, (b + 1) * size])
        out[process] = [tuple(s) for s in spans]
    return out


def process_grid(mesh: Mesh, process_of=None) -> np.ndarray:
    """The process index of every device of `mesh` (`process_of(device)` may fake it)."""
    process_of = process_of or (lambda d: d.process_index)
    return np.vectorize(process_of, otypes=[int])(mesh.devices)


def host_rows(array: np.ndarray, blocks, batch_dim: int = 0) -> np.ndarray:
    """This host's piece of a global host array: its row blocks, concatenated in order."""
    parts = [np.take(array, np.arange(start, stop), axis=batch_dim) for start, stop in blocks]
    return np.concatenate(parts, axis=batch_dim)


def global_batch(array: np.ndarray, mesh: Mesh, batch_dim: int = 0,
                 process_index: int | None = None) -> jax.Array:
    """The global array of a batch that every host holds in full, built from each host's rows
    only (`jax.make_array_from_process_local_data` places them on the host's devices)."""
    from rlaif_jax.sharding import batch_sharding

    array = np.asarray(array)
    process = jax.process_index() if process_index is None else process_index
    blocks = row_blocks(process_grid(mesh), mesh.axis_names, array.shape[batch_dim])[process]
    local = host_rows(array, blocks, batch_dim)
    return jax.make_array_from_process_local_data(
        batch_sharding(mesh, batch_dim, array.ndim), local, array.shape)


def to_host(tree):
    """Arrays (any pytree of them) as numpy, the full global value on every host.

    A batch-sharded array of a multi-host run is not fully addressable: no host holds all of
    it and `jax.device_get` refuses it, so such arrays are all-gathered across processes
    (`process_allgather`). Everything else (one process, replicated values such as reduced
    metrics, host arrays) is fetched as it is. Every process must call this together when a
    gathered array is involved: the gather is a collective.
    """
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


# --- who writes ---------------------------------------------------------------------------------


def is_writer() -> bool:
    """Whether this process writes the run's files: process 0 does (metrics, summaries, samples,
    feedback, reports, tokenizer and model config); the others compute the same values and
    write nothing. Orbax checkpoints are the exception: every process calls `save`."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process got here (a no-op with one process); e.g. before the other
    hosts read a file that process 0 wrote."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def from_writer(tree):
    """Process 0's value of a pytree of host arrays, on every process (identity with one):
    for host-computed values that may differ between hosts, e.g. sandbox results with time
    limits, which must agree before they enter a global array."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils
    return multihost_utils.broadcast_one_to_all(tree)
