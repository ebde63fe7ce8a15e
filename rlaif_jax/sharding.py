"""Device mesh and sharding rules: data parallel, fsdp and Megatron-style tensor parallel.

The mesh has the axes `data` (batch parallel), `fsdp` (batch parallel *and* parameters /
optimizer state split across devices, gathered by XLA where needed) and, when
`mesh.tensor > 1`, `tensor` (the matrices of each layer split across a group of devices, the
activations between them all-reduced by XLA). Devices are laid out data-major, tensor-minor, so a
tensor-parallel group is a run of neighbouring devices. Batches are split over (data, fsdp) and
replicated over tensor.

Where each parameter goes is decided by its name: the path in the state pytree joined with "/",
e.g. `params/transformer/h_3/attn/c_attn/kernel` or, for its Adam moment,
`opt_state/1/0/mu/transformer/h_3/attn/c_attn/kernel`, so the optimizer state follows the
parameters without rules of its own. The layout of a name is found in three steps:

1. Rules: (regex, spec) pairs, first match wins (the regex is searched anywhere in the name;
   anchor it with `$`). The config's `mesh.rules` are tried first, then `BUILTIN_RULES`, the
   Megatron tensor-parallel layout of GPT-2 and the Llama family. A spec has one entry per
   leading dimension: None, an axis name, or a tuple of axis names; missing trailing entries are
   None. Axes the mesh does not have (or has with size 1) are dropped, so the built-in rules are
   no-ops without tensor parallelism. A dimension that a rule's axes do not divide is an error
   naming the parameter and the rule.
2. fsdp by size: unless the spec already uses `fsdp`, an array with at least `mesh.fsdp_min_size`
   elements gets `fsdp` on its largest dimension that is not split yet and that fsdp divides
   (so c_attn's (None, tensor) becomes (fsdp, tensor), the usual fsdp + tensor layout), else on
   the largest split one whose shards it divides. With no tensor axis and no rules this is
   exactly the plain fsdp layout.
3. Everything else is replicated.

`make_mesh(config.mesh)` records the config's rules for the mesh it returns, and
`state_shardings(tree, mesh, min_size)` uses them, so every stage picks up the rules without
passing them around (`state_shardings(..., rules=...)` overrides). `check_mesh_config` is the
config validation (called by `config.validate`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Megatron-LM layout (Shoeybi et al., 2019). Flax kernels are [in, out]. Column-parallel layers
# (the first matmul of attention and MLP) split their outputs, row-parallel ones (the second)
# split their inputs, so each block needs one all-reduce of the activations per half. Embeddings
# are split over the hidden size, which every tensor size that divides n_embd divides (GPT-2's
# vocabulary of 50257 is odd); a vocab-parallel alternative is a config rule away:
# ("wte/embedding$", ("tensor", None)).
BUILTIN_RULES = (
    # GPT-2 (HF names: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, wte, wpe)
    (r"attn/c_attn/kernel$", (None, "tensor")),
    (r"attn/c_attn/bias$", ("tensor",)),
    (r"mlp/c_fc/kernel$", (None, "tensor")),
    (r"mlp/c_fc/bias$", ("tensor",)),
    (r"(attn|mlp)/c_proj/kernel$", ("tensor", None)),
    (r"(wte|wpe)/embedding$", (None, "tensor")),
    # Llama family (Llama, Qwen2, SmolLM: self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj)
    (r"self_attn/[qkv]_proj/kernel$", (None, "tensor")),
    (r"self_attn/[qkv]_proj/bias$", ("tensor",)),
    (r"self_attn/o_proj/kernel$", ("tensor", None)),
    (r"mlp/(gate|up)_proj/kernel$", (None, "tensor")),
    (r"mlp/(gate|up)_proj/bias$", ("tensor",)),
    (r"mlp/down_proj/kernel$", ("tensor", None)),
    (r"embed_tokens/embedding$", (None, "tensor")),
    (r"lm_head/kernel$", ("tensor", None)),
)


@dataclasses.dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    spec: tuple[tuple[str, ...], ...]  # per dimension: the mesh axes it is split over
    source: str  # "config.mesh.rules[2]" or "sharding.BUILTIN_RULES[0]", for error messages


def _spec_entry(entry, where: str) -> tuple[str, ...]:
    axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
    if not isinstance(axes, (tuple, list)) or not all(isinstance(a, str) for a in axes):
        raise ValueError(f"{where}: a spec entry must be None, an axis name or a tuple of axis "
                         f"names, got {entry!r}")
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise ValueError(f"{where}: unknown mesh axis {unknown[0]!r} (axes: {', '.join(AXES)})")
    return tuple(axes)


def parse_rules(rules, where: str = "config.mesh.rules") -> tuple[Rule, ...]:
    """Checks and compiles (regex, spec) pairs; errors name the rule's index."""
    out = []
    for i, item in enumerate(rules or ()):
        at = f"{where}[{i}]"
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], (tuple, list))):
            raise ValueError(f"{at}: expected a (regex, spec) pair with spec a tuple, got "
                             f"{item!r}")
        try:
            pattern = re.compile(item[0])
        except re.error as e:
            raise ValueError(f"{at}: invalid regex {item[0]!r}: {e}") from None
        spec = tuple(_spec_entry(entry, at) for entry in item[1])
        used = [a for axes in spec for a in axes]
        if len(used) != len(set(used)):
            raise ValueError(f"{at}: spec {tuple(item[1])!r} uses a mesh axis twice")
        out.append(Rule(pattern, spec, at))
    return tuple(out)


_BUILTIN = parse_rules(BUILTIN_RULES, "sharding.BUILTIN_RULES")
# Rules of the config each mesh was made from (see make_mesh). Meshes are interned by JAX: two
# make_mesh calls over the same devices and axes return the same object, the later rules win.
_MESH_RULES: dict = {}


def mesh_sizes(mesh_cfg, n_devices: int) -> dict[str, int]:
    """{data, fsdp, tensor} with the one -1 resolved to the devices left over."""
    sizes = {"data": int(mesh_cfg.data), "fsdp": int(mesh_cfg.fsdp),
             "tensor": int(getattr(mesh_cfg, "tensor", 1))}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1 or any(v < 1 for k, v in sizes.items() if k not in free):
        raise ValueError(f"config.mesh: sizes must be >= 1, with at most one -1; got {sizes}")
    if free:
        fixed = math.prod(v for k, v in sizes.items() if k not in free)
        if n_devices % fixed:
            raise ValueError(f"config.mesh: {sizes} does not divide {n_devices} devices")
        sizes[free[0]] = n_devices // fixed
    if math.prod(sizes.values()) != n_devices:
        raise ValueError(
            "config.mesh: " + " x ".join(f"{k}={v}" for k, v in sizes.items())
            + f" = {math.prod(sizes.values())} devices, but {n_devices} are available")
    return sizes


def _device_grid(devices: list, shape: tuple[int, ...]) -> np.ndarray:
    """Devices as an array of `shape`; on TPUs in the physical topology's order."""
    if devices and devices[0].platform == "tpu":
        from jax.experimental import mesh_utils
        try:
            return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):
            pass  # an unusual slice: fall back to the enumeration order
    return np.asarray(devices).reshape(shape)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """The (data, fsdp[, tensor]) mesh of `config.mesh`; one size may be -1 (the rest).

    The tensor axis exists only when its size is above 1. The config's `rules` are recorded for
    `state_shardings`.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_sizes(mesh_cfg, len(devices))
    names = BATCH_AXES + (("tensor",) if sizes["tensor"] > 1 else ())
    mesh = Mesh(_device_grid(devices, tuple(sizes[n] for n in names)), names)
    _MESH_RULES[mesh] = parse_rules(getattr(mesh_cfg, "rules", ()))
    return mesh


def batch_size_multiple(mesh: Mesh) -> int:
    """Global batch sizes must be divisible by this (the number of batch shards)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def param_name(path) -> str:
    """A pytree path as the "/"-joined name the rules match."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _as_spec(entries) -> P:
    entries = [None if not e else e[0] if len(e) == 1 else tuple(e) for e in entries]
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def spec_for(name: str, shape: tuple[int, ...], sizes: dict[str, int], rules, min_size: int) -> P:
    """The PartitionSpec of one array (the three steps of the module docstring)."""
    entries = [()] * len(shape)
    rule = next((r for r in rules if r.pattern.search(name)), None)
    if rule is not None:
        if len(rule.spec) > len(shape):
            raise ValueError(f"{rule.source} ({rule.pattern.pattern!r}) gives {len(rule.spec)} "
                             f"dimensions to {name} of shape {shape}")
        for dim, axes in enumerate(rule.spec):
            axes = tuple(a for a in axes if sizes.get(a, 1) > 1)
            split = math.prod(sizes[a] for a in axes)
            if shape[dim] % split:
                raise ValueError(
                    f"{rule.source} ({rule.pattern.pattern!r}) splits dimension {dim} of {name} "
                    f"(shape {shape}) over {axes} = {split} devices, which does not divide "
                    f"{shape[dim]}")
            entries[dim] = axes
    fsdp = sizes.get("fsdp", 1)
    used = {a for axes in entries for a in axes}
    if fsdp > 1 and "fsdp" not in used and shape and math.prod(shape) >= min_size:
        per_shard = [shape[d] // math.prod(sizes[a] for a in entries[d])
                     for d in range(len(shape))]
        # Dimensions not split yet first (XLA reshards a stacked (tensor, fsdp) dimension
        # poorly), each group largest first.
        for dim in sorted(range(len(shape)), key=lambda d: (bool(entries[d]), -per_shard[d])):
            if per_shard[dim] % fsdp == 0:
                entries[dim] = entries[dim] + ("fsdp",)
                break
    return _as_spec(entries)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    """Shards the largest dimension divisible by `fsdp_size` over `fsdp`, if the array is big."""
    return spec_for("", tuple(shape), {"fsdp": fsdp_size}, (), min_size)


def state_shardings(abstract_tree, mesh: Mesh, min_size: int, rules=None):
    """NamedShardings for a pytree of arrays (params, optimizer state, scalars, PRNG keys).

    `rules`: (regex, spec) pairs tried before the built-in ones; None = the rules of the config
    `mesh` was made from.
    """
    user = _MESH_RULES.get(mesh, ()) if rules is None else parse_rules(rules)
    all_rules, sizes = user + _BUILTIN, dict(mesh.shape)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(
            mesh, spec_for(param_name(path), tuple(x.shape), sizes, all_rules, min_size)),
        abstract_tree)


def batch_sharding(mesh: Mesh, batch_dim: int = 0, ndim: int = 2) -> NamedSharding:
    """Splits dimension `batch_dim` of an `ndim`-array over every batch-parallel device."""
    spec = [None] * ndim
    spec[batch_dim] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_batch(batch: dict, mesh: Mesh, batch_dim: int = 0) -> dict:
    """Places a dict of host arrays (the same global batch on every host) on the mesh, split
    along `batch_dim`. With several processes each host contributes only its own rows
    (`distributed.global_batch`)."""
    if jax.process_count() > 1:
        from rlaif_jax import distributed
        return {k: distributed.global_batch(v, mesh, batch_dim) for k, v in batch.items()}
    return {k: jax.device_put(v, batch_sharding(mesh, batch_dim, v.ndim)) for k, v in batch.items()}


def bytes_per_device(tree) -> dict:
    """Bytes of `tree` held by each device (to check that fsdp shrinks per-device memory)."""
    out: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out


def planned_bytes_per_device(abstract_tree, shardings) -> int:
    """Bytes per device that `shardings` give `abstract_tree` (ShapeDtypeStructs), without
    allocating anything: each array's size divided by the devices it is split over."""
    total = 0
    for x, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
        total += math.prod(s.shard_shape(tuple(x.shape))) * np.dtype(x.dtype).itemsize
    return total


# --- config validation -------------------------------------------------------------------------


def model_dims(model_cfg) -> dict[str, int]:
    """The sizes a tensor-parallel split must divide, from `model.hf_path`'s config.json (if
    readable) or the config's own sizes."""
    m = model_cfg
    if m.hf_path:
        try:
            hf = json.loads((pathlib.Path(m.hf_path) / "config.json").read_text())
        except (OSError, ValueError):
            return {}  # validate() reports the unreadable directory itself
        if hf.get("model_type") == "gpt2":
            d = hf.get("n_embd", 768)
            return {"n_head": hf.get("n_head", 12), "n_embd": d,
                    "mlp width": hf.get("n_inner") or 4 * d}
        heads, d = hf.get("num_attention_heads", 0), hf.get("hidden_size", 0)
        head_dim = hf.get("head_dim") or (d // heads if heads else 0)
        return {"n_head": heads, "n_embd": d, "mlp width": hf.get("intermediate_size", 0),
                "n_kv_head * head_dim": hf.get("num_key_value_heads", heads) * head_dim}
    dims = {"n_head": m.n_head, "n_embd": m.n_embd}
    if m.family == "llama":
        from rlaif_jax.models.llama import default_inner
        dims["mlp width"] = default_inner(m.n_embd)
        dims["n_kv_head * head_dim"] = (m.n_kv_head or m.n_head) * (m.n_embd // m.n_head)
    else:
        dims["mlp width"] = 4 * m.n_embd
    return dims


def check_mesh_config(mesh_cfg, model_cfg) -> None:
    """Raises ValueError("mesh.KEY: ...") for an invalid `config.mesh`.

    Checks: sizes are >= 1 with at most one -1; fsdp_min_size >= 0; multihost is auto/on/off;
    every rule is a (regex, spec) pair whose regex compiles and whose spec names only the axes
    data/fsdp/tensor, each at most once; and a tensor size above 1 divides the model's heads,
    hidden size, MLP width and (Llama) key/value width, which the built-in rules split.
    """
    sizes = {k: mesh_cfg[k] for k in ("data", "fsdp", "tensor")}
    for key, v in sizes.items():
        if not isinstance(v, int) or not (v >= 1 or v == -1):
            raise ValueError(f"mesh.{key}: must be a positive integer or -1 (the remaining "
                             f"devices), got {v!r}")
    if list(sizes.values()).count(-1) > 1:
        raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got {sizes}")
    if mesh_cfg.fsdp_min_size < 0:
        raise ValueError("mesh.fsdp_min_size: must be >= 0")
    if mesh_cfg.multihost not in ("auto", "on", "off"):
        raise ValueError(f"mesh.multihost: {mesh_cfg.multihost!r} is not one of auto, on, off")
    try:
        parse_rules(mesh_cfg.rules)
    except ValueError as e:
        raise ValueError(str(e).removeprefix("config.")) from None
    tensor = sizes["tensor"]
    if tensor > 1:
        for what, size in model_dims(model_cfg).items():
            if size % tensor:
                raise ValueError(f"mesh.tensor: {tensor} does not divide the model's {what} "
                                 f"({size})")
