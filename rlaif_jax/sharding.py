"""Device mesh and NamedSharding rules.

The mesh has two axes: `data` (batch parallel) and `fsdp` (batch parallel *and* parameters /
optimizer state split across devices, gathered by XLA where needed). Batches are split over both
axes; each parameter larger than `mesh.fsdp_min_size` elements is split along its largest dimension
that the fsdp axis size divides, and the optimizer state, whose leaves have the parameters' shapes,
follows the same rule. Everything else is replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """Builds a (data, fsdp) mesh. One axis may be -1: it takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": int(mesh_cfg.data), "fsdp": int(mesh_cfg.fsdp)}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1 or any(v < 1 for k, v in sizes.items() if k not in free):
        raise ValueError(f"config.mesh: sizes must be >= 1, with at most one -1; got {sizes}")
    if free:
        fixed = int(np.prod([v for k, v in sizes.items() if k not in free]))
        if len(devices) % fixed:
            raise ValueError(f"config.mesh: {sizes} does not divide {len(devices)} devices")
        sizes[free[0]] = len(devices) // fixed
    data, fsdp = sizes["data"], sizes["fsdp"]
    if data * fsdp != len(devices):
        raise ValueError(
            f"config.mesh: data={data} x fsdp={fsdp} = {data * fsdp} devices, "
            f"but {len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def batch_size_multiple(mesh: Mesh) -> int:
    """Global batch sizes must be divisible by this (the number of batch shards)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    """Shards the largest dimension divisible by `fsdp_size` over `fsdp`, if the array is big."""
    if fsdp_size == 1 or not shape or int(np.prod(shape)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_tree, mesh: Mesh, min_size: int):
    """NamedShardings for a pytree of arrays (params, optimizer state, scalars, PRNG keys)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp, min_size)), abstract_tree)


def batch_sharding(mesh: Mesh, batch_dim: int = 0, ndim: int = 2) -> NamedSharding:
    """Splits dimension `batch_dim` of an `ndim`-array over every batch-parallel device."""
    spec = [None] * ndim
    spec[batch_dim] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_batch(batch: dict, mesh: Mesh, batch_dim: int = 0) -> dict:
    """Places a dict of host arrays on the mesh, split along `batch_dim`."""
    return {k: jax.device_put(v, batch_sharding(mesh, batch_dim, v.ndim)) for k, v in batch.items()}


def bytes_per_device(tree) -> dict:
    """Bytes of `tree` held by each device (to check that fsdp shrinks per-device memory)."""
    out: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out
