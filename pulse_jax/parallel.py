"""Device mesh, logical-axis rules, multi-host start-up, sharded state and global batches.

The mesh has three axes, `(data, fsdp, tensor)`: `data` replicates parameters (pure data parallelism, usually
across slices over DCN), `fsdp` shards parameters and optimizer state along their `embed` axis (ZeRO-3 style,
within a slice over ICI), `tensor` shards the heads / MLP / vocabulary axes (Megatron style). Parameters carry
logical axis names (pulse_jax.models); rules map them onto mesh axes. Axes are Auto (GSPMD) so XLA propagates
shardings through the matmuls.

Multi-host: every process runs the same program; `initialize_distributed` connects them before JAX touches a
device. On Cloud TPU and under SLURM JAX discovers the other processes itself; anywhere else (a GPU cluster
launched by hand or by ssh) set
  JAX_COORDINATOR_ADDRESS=host:port of process 0, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=0..N-1.
"""

import glob
import importlib.util
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pulse_jax.errors import ConfigError
from pulse_jax.models.config import PulseConfig
from pulse_jax.models.llava import PulseModel

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Logical axis -> mesh axis (or None: replicated). FSDP + tensor parallelism; with tensor = 1 this is pure FSDP.
RULES: Rules = (
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

# Pure FSDP (ZeRO-3): only the embedding axes are sharded, every other axis is whole on each device, so the mesh
# needs no tensor axis and a layer's weights are all-gathered once per use. The default for 7B on TPU pods.
FSDP_RULES: Rules = tuple((name, None if target == "tensor" else target) for name, target in RULES)

RULE_PRESETS: dict[str, Rules] = {"fsdp": FSDP_RULES, "fsdp_tensor": RULES}

# Environment variables naming the process group where JAX cannot discover it (GPU clusters).
COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def logical_rules(spec: str | Sequence) -> Rules:
  """Rules from a preset name ('fsdp', 'fsdp_tensor') or an explicit sequence of (logical, mesh axes) pairs."""
  if isinstance(spec, str):
    if spec not in RULE_PRESETS:
      raise ConfigError(f"unknown logical-axis rule preset {spec!r}; known: {sorted(RULE_PRESETS)}")
    return RULE_PRESETS[spec]
  rules = tuple((str(name), tuple(target) if isinstance(target, list) else target) for name, target in spec)
  for _, target in rules:
    for axis in (target,) if isinstance(target, str) else (target or ()):
      if axis not in MESH_AXES:
        raise ConfigError(f"logical-axis rules map onto {axis!r}, which is not a mesh axis {MESH_AXES}")
  return rules


def _resolve_shape(shape: Sequence[int], num_devices: int, what: str) -> list[int]:
  """Replaces the (at most one) -1 in a 3-axis `shape` so that the product is num_devices."""
  shape = [int(s) for s in shape]
  if len(shape) != len(MESH_AXES):
    raise ConfigError(f"{what} {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ConfigError(f"{what} {shape}: at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"{num_devices} devices cannot fill {what} {shape}")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ConfigError(f"{what} {shape} needs {int(np.prod(shape))} devices, have {num_devices}")
  return shape


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None, *,
              dcn_shape: Sequence[int] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one entry of `shape` may be -1 for "all remaining devices".

  Args:
    shape: per-slice (ICI) mesh sizes; with dcn_shape, each slice's devices fill this shape.
    devices: devices to use (default: all, in the platform's topology-aware order).
    dcn_shape: sizes across slices (DCN), e.g. (2, 1, 1) for data parallelism over two TPU slices. The final mesh
      is the elementwise product of the two shapes, with each slice kept contiguous along the DCN axes.
  """
  devices = list(jax.devices() if devices is None else devices)
  dcn = [1] * len(MESH_AXES) if dcn_shape is None else [int(s) for s in dcn_shape]
  num_slices = int(np.prod(dcn))
  if len(dcn) != len(MESH_AXES) or num_slices < 1 or len(devices) % num_slices:
    raise ConfigError(f"DCN mesh {list(dcn)} does not divide {len(devices)} devices into slices")
  ici = _resolve_shape(shape, len(devices) // num_slices, "mesh shape")
  if num_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  else:
    grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_from_config(mesh_config: Mapping) -> Mesh:
  """The mesh a config's `mesh` section describes: `ici` (per slice, -1 allowed) and `dcn` (across slices)."""
  return make_mesh(mesh_config["ici"], dcn_shape=mesh_config.get("dcn"))


def _on_cloud_tpu_vm() -> bool:
  """libtpu installed and TPU chips attached (the check JAX itself makes), without starting a backend."""
  chips = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
  return bool(chips) and importlib.util.find_spec("libtpu") is not None


def initialize_distributed(environ: Mapping[str, str] = os.environ, *,
                           shutdown_timeout_seconds: int | None = None) -> None:
  """Joins this process to its multi-host group (once); a no-op for a single process. Call before touching
  devices.

  With JAX_COORDINATOR_ADDRESS set, the group is JAX_NUM_PROCESSES processes and this one is JAX_PROCESS_ID;
  on a Cloud TPU VM or in a multi-task SLURM job JAX reads the group from the platform.

  shutdown_timeout_seconds: how long a process that is done waits at exit for the others (JAX's default, 300 s,
  when None) before all abort; a job whose process 0 works on alone at the end (evaluation's scoring) needs more.
  """
  if jax.distributed.is_initialized():
    return
  timeout = {} if shutdown_timeout_seconds is None else {"shutdown_timeout_seconds": shutdown_timeout_seconds}
  if environ.get(COORDINATOR_ENV):
    missing = [name for name in (NUM_PROCESSES_ENV, PROCESS_ID_ENV) if not environ.get(name)]
    if missing:
      raise ConfigError(f"{COORDINATOR_ENV} is set but {', '.join(missing)} is not")
    jax.distributed.initialize(coordinator_address=environ[COORDINATOR_ENV],
                               num_processes=int(environ[NUM_PROCESSES_ENV]),
                               process_id=int(environ[PROCESS_ID_ENV]), **timeout)
  elif _on_cloud_tpu_vm() or int(environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize(**timeout)


def create_model(config: PulseConfig, mesh: Mesh, *, seed: int = 0, rules=RULES) -> PulseModel:
  """Randomly initialised PulseModel whose parameters are created already sharded over `mesh`.

  Initialisation runs under jit with every parameter constrained to its sharding, so no device ever holds a
  full unsharded copy of a large weight.
  """
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    return nnx.jit(lambda: PulseModel(config, rngs=nnx.Rngs(seed)))()


def mesh_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules) -> PartitionSpec:
  """The mesh PartitionSpec for an array of `shape` whose axes have the given logical names.

  A mesh axis is used at most once per array, and only where its size divides the dimension (a 1025-token
  vocabulary stays whole on a 2-way tensor axis rather than failing): such dimensions are replicated instead.
  """
  table, used, spec = dict(rules), set(), []
  for name, size in zip(logical_axes, shape):
    target = table.get(name) if name is not None else None
    axes = tuple(a for a in ((target,) if isinstance(target, str) else (target or ())) if a not in used)
    if axes and size % int(np.prod([mesh.shape[a] for a in axes])) == 0:
      used.update(axes)
      spec.append(axes[0] if len(axes) == 1 else axes)
    else:
      spec.append(None)
  return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> dict:
  """NamedShardings (as a pure dict, the layout nnx.to_pure_dict gives) for the Variables of an (abstract) state.

  Each Variable's `out_sharding` metadata holds its logical axes; optimizer state (nnx.Optimizer) inherits its
  parameter's, so moments are sharded exactly like the weights they track. Variables without axes replicate.
  """
  def sharding(variable):
    axes = variable.get_metadata().get("out_sharding") or (None,) * len(variable.shape)
    return NamedSharding(mesh, mesh_spec(axes, variable.shape, mesh, rules))
  return nnx.to_pure_dict(state, extract_fn=sharding)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding of a batch-major array: the leading axis over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's rows of a batch (every process passes the same number of rows).

  Process p's rows become rows [p * n, (p + 1) * n) of the global batch, laid out over the devices this process
  owns; nothing crosses hosts.
  """
  count = jax.process_count()
  return {name: jax.make_array_from_process_local_data(batch_sharding(mesh, array.ndim), array,
                                                        (array.shape[0] * count, *array.shape[1:]))
          for name, array in local.items()}
