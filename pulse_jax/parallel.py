"""Device mesh, logical-axis rules and sharded model creation.

The mesh has three axes, `(data, fsdp, tensor)`: `data` replicates parameters (pure data parallelism, usually
across slices over DCN), `fsdp` shards parameters and optimizer state along their `embed` axis (ZeRO-3 style,
within a slice over ICI), `tensor` shards the heads / MLP / vocabulary axes (Megatron style). Parameters carry
logical axis names (pulse_jax.models); RULES map them onto mesh axes. Axes are Auto (GSPMD) so XLA propagates
shardings through the matmuls.
"""

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pulse_jax.errors import ConfigError
from pulse_jax.models.config import PulseConfig
from pulse_jax.models.llava import PulseModel

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or None: replicated). FSDP + tensor parallelism; with tensor = 1 this is pure FSDP.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("vision_heads", "tensor"),
    ("vision_mlp", "tensor"),
    ("layers", None),
    ("norm", None),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one entry of `shape` may be -1 for "all remaining devices"."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ConfigError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ConfigError(f"mesh shape {shape}: at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ConfigError(f"{len(devices)} devices cannot fill mesh {shape}")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ConfigError(f"mesh {shape} needs {int(np.prod(shape))} devices, have {len(devices)}")
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def create_model(config: PulseConfig, mesh: Mesh, *, seed: int = 0, rules=RULES) -> PulseModel:
  """Randomly initialised PulseModel whose parameters are created already sharded over `mesh`.

  Initialisation runs under jit with every parameter constrained to its sharding, so no device ever holds a
  full unsharded copy of a large weight.
  """
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    return nnx.jit(lambda: PulseModel(config, rngs=nnx.Rngs(seed)))()


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding of a batch-major array: the leading axis over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))
