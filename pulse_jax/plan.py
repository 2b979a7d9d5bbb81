"""`pulse-jax plan --config configs/pulse_7b.py --topology v5p-64`: will a run fit on a TPU slice, and how long
will it take? Answered on this machine, before renting the slice.

The real train step (pulse_jax.train.make_train_step: same mesh, shardings, optimizer, frozen tower, remat and
batch shapes as `pulse-jax train` with the same config) is compiled ahead of time for the slice's topology
through libtpu, which describes TPU chips without any being attached (`pip install -e '.[tpu]'`). XLA's memory
analysis of that program gives the bytes each chip holds; its cost analysis gives the FLOPs each chip executes.

XLA's cost analysis counts the body of a while loop once, however many times the loop runs, and the model scans
its decoder layers and its vision layers (one loop each; that is also what keeps a 32-layer compile short). So
the step is compiled twice more, once without decoder layers and once running no vision layer: each difference
from the full program is one loop body as XLA counts it, which then counts as many times as the loop runs. Two
things stay uncounted, so on a large mesh XLA's figure is a lower bound: loops XLA adds itself (PULSE-7B's step
on v5p-64 held 28 while loops against 3 on v5p-8 in a one-off count, from collective matmuls over the 32-way FSDP
axis), and the splash attention kernel, a Mosaic custom call (pulse_jax.models.splash).

The time estimate divides the model FLOPs of a step (pulse_jax.flops, the convention `pulse-jax train` reports
MFU in) by the slice's peak at an assumed MFU. Every batch is padded to `data.seq_len` tokens, so that is the
length planned for; `--config.data.seq_len=N` plans for another.
"""

import argparse
import dataclasses
import math
import os
import time

import jax
import ml_collections
from flax import nnx

from pulse_jax import flops, parallel, train
from pulse_jax.config import accept_config_overrides, apply_overrides, load_config, model_config
from pulse_jax.errors import ConfigError
from pulse_jax.models import kernels
from pulse_jax.models.llava import PulseModel

ECGINSTRUCT_EXAMPLES = 1_156_110
DEFAULT_MFU = 0.4
PULSE_REFERENCE = "about 10 h on 32 H100s (PULSE's README)"
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
  """A TPU generation as plan needs it.

  Attributes:
    name: the prefix of its slice and topology names ("v5p").
    cores_per_chip: what the N of a slice name "v5p-N" counts per chip (TensorCores on v4 and v5p, whose chips
      have two; chips on v5e and v6e).
    torus_dims: 3 (v4, v5p) or 2 (v5e, v6e).
    hbm_bytes: high-bandwidth memory per chip (Google's published figures).
    chip_config: libtpu's chip configuration giving one JAX device per chip, as JAX runs on it ("megacore":
      v4's two TensorCores as one device; v5p is megacore by default).
  """
  name: str
  cores_per_chip: int
  torus_dims: int
  hbm_bytes: int
  chip_config: str = "default"


GENERATIONS = {g.name: g for g in (Generation("v4", 2, 3, 32 * GIB, "megacore"), Generation("v5e", 1, 2, 16 * GIB),
                                   Generation("v5p", 2, 3, 95 * GIB), Generation("v6e", 1, 2, 32 * GIB))}
CHIPS_PER_HOST = (2, 2, 1)  # every generation here: 4 chips per host in its largest-slice VM type


def slice_grid(generation: Generation, chips: int) -> tuple[int, ...]:
  """The chip grid Google builds a slice of `chips` (a power of two) as: v4 / v5p 2x2x1, 2x2x2, 2x2x4, 2x4x4,
  4x4x4, 4x4x8, ... ; v5e / v6e 1x1, 1x2, 2x2, 2x4, 4x4, 4x8, ... 16x16 (double the last of the smallest sides)."""
  if chips < 1 or chips & (chips - 1):
    raise ConfigError(f"{chips} {generation.name} chips: plan knows the power-of-two slices; "
                      f"give the topology instead, e.g. {generation.name}:2x4x4")
  grid = [2, 2, 1] if generation.torus_dims == 3 and chips >= 4 else [1] * generation.torus_dims
  while math.prod(grid) < chips:
    smallest = min(grid)
    grid[max(i for i, side in enumerate(grid) if side == smallest)] *= 2
  if math.prod(grid) != chips:
    raise ConfigError(f"no {generation.name} slice has {chips} chips")
  return tuple(grid)


def resolve_topology(spec: str) -> tuple[Generation, tuple[int, ...]]:
  """(generation, chip grid) from a slice name as gcloud's accelerator types ('v5p-64', 'v5e-256') or a
  topology ('v5p:2x4x4', 'v5e:16x16')."""
  examples = ", ".join(f"{g.name}:" + "x".join(["2"] * g.torus_dims) for g in GENERATIONS.values())
  unknown = ConfigError(f"unknown TPU topology {spec!r}: give a slice (v5p-64, v5e-256, v4-64, v6e-256) or a "
                        f"topology ({examples})")
  name, _, grid_text = spec.partition(":")
  if grid_text:
    generation, sides = GENERATIONS.get(name), grid_text.split("x")
    if generation is None or len(sides) != generation.torus_dims or not all(s.isdigit() and int(s) for s in sides):
      raise unknown
    return generation, tuple(map(int, sides))
  name, _, cores = spec.partition("-")
  generation = GENERATIONS.get(name)
  if generation is None or not cores.isdigit() or int(cores) % generation.cores_per_chip:
    raise unknown
  return generation, slice_grid(generation, int(cores) // generation.cores_per_chip)


def tpu_devices(generation: Generation, grid: tuple[int, ...], num_slices: int) -> list:
  """Abstract devices of `num_slices` slices of `grid` chips, described by libtpu (no TPU needed)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # plan only compiles, so it may load libtpu while another process (a second plan, a test run) holds its lock.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  grid3 = (*grid, 1) if len(grid) == 2 else grid
  name = f"{generation.name}:{'x'.join(map(str, grid))}"
  try:
    return topologies.get_topology_desc(
        platform="tpu", topology_name=name, chip_config_name=generation.chip_config, num_slices=num_slices,
        chips_per_host_bounds=tuple(min(host, side) for host, side in zip(CHIPS_PER_HOST, grid3))).devices
  except (RuntimeError, jax.errors.JaxRuntimeError) as e:
    raise ConfigError(f"cannot describe TPU topology {name}: {e} (ahead-of-time compilation needs libtpu: "
                      f"pip install -e '.[tpu]')") from e


# ----------------------------------------------------------------------------------------------- the step


def compile_train_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, total_steps: int):
  """`pulse-jax train`'s step for `config` on `mesh`, compiled ahead of time (jax.stages.Compiled)."""
  t = config.train
  step_fns = train.make_train_step(
      model_config(config.model), mesh, rules=parallel.logical_rules(config.mesh.rules),
      tx=train.make_optimizer(t, total_steps), schedule=train.learning_rate_schedule(t, total_steps),
      frozen=t.frozen, global_batch=t.global_batch, seq_len=config.data.seq_len, accum_steps=t.grad_accum_steps)
  return step_fns.step.lower(step_fns.abstract_state, step_fns.abstract_batch).compile()


def _variant(config: ml_collections.ConfigDict, override: str) -> ml_collections.ConfigDict:
  return apply_overrides(config.copy_and_resolve_references(), [override])


def _chip_flops(compiled) -> float:
  return float(compiled.cost_analysis()["flops"])


def xla_step_flops(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, total_steps: int,
                   full) -> float:
  """FLOPs of one step as XLA counts them, summed over the chips, with every loop iteration counted.

  `full` is the compiled step. Within a micro-batch: full + (L - 1) (full - no decoder layers) + (V - 1) (full -
  no vision layers), for L decoder layers and V vision layers that run (see the module docstring). Gradient
  accumulation is a loop over train.grad_accum_steps micro-batches around all of that, so the sum is multiplied
  by their number; the optimizer update outside that loop then counts that many times too, an overcount of
  about 15 FLOPs per parameter against 6 per parameter and token, i.e. well under 0.1%.
  """
  model = model_config(config.model)
  per_chip = full_flops = _chip_flops(full)
  loops = ((model.text.num_layers, "model.text.num_layers=0"),
           (model.vision.layers_needed, "model.vision.feature_layer=0"))  # feature layer 0: the embeddings
  for count, without_loop in loops:
    if count > 1:  # a single layer is not a loop for XLA: it is counted once, correctly
      body = full_flops - _chip_flops(compile_train_step(_variant(config, without_loop), mesh, total_steps))
      per_chip += (count - 1) * body
  return per_chip * config.train.grad_accum_steps * mesh.size


def _abstract_model(config: ml_collections.ConfigDict) -> PulseModel:
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: PulseModel(model_config(config.model), rngs=nnx.Rngs(0)))


def trained_parameters(config: ml_collections.ConfigDict) -> int:
  """Parameters the optimizer updates (all but those train.frozen matches): the N of 6 N tokens."""
  trained = nnx.to_pure_dict(nnx.state(_abstract_model(config), train.trainable_filter(config.train.frozen)))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(trained))


# ----------------------------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `plan` found. Bytes are per chip; FLOPs are per step, summed over all chips.

  memory: XLA's memory analysis: arguments (parameters, optimizer state, batch), outputs, aliased (outputs
    written in place of donated arguments), temporaries, program (generated code); None when XLA could not fit
    the step into HBM, with its message in out_of_memory.
  xla_flops: XLA's count for the compiled program; None when it did not fit, or when a variant compiled to count
    its loops (xla_step_flops) did not.
  model_flops: pulse_jax.flops.train_step_flops, the MFU convention.
  epochs: of `examples` examples; None when the config fixes train.steps instead.
  attention: the decoder's attention in this program (pulse_jax.models.kernels.resolve): "splash" (the Pallas
    kernel, whose FLOPs XLA's cost analysis does not see) or "xla" ("cudnn" is refused on TPUs).
  """
  topology: str
  chips: int
  num_slices: int
  device_kind: str
  mesh_shape: dict[str, int]
  hbm_bytes: int
  memory: dict[str, int] | None
  out_of_memory: str | None
  xla_flops: float | None
  model_flops: float
  trained_params: int
  global_batch: int
  seq_len: int
  examples: int
  epochs: int | None
  total_steps: int
  mfu: float
  peak_flops: float
  compile_seconds: float
  attention: str

  @property
  def bytes_per_chip(self) -> int | None:
    if self.memory is None:
      return None
    m = self.memory
    return m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["program"]

  @property
  def fits(self) -> bool:
    return self.memory is not None and self.bytes_per_chip <= self.hbm_bytes

  @property
  def six_n_tokens(self) -> float:
    return 6.0 * self.trained_params * self.global_batch * self.seq_len

  @property
  def step_seconds(self) -> float:
    return self.model_flops / (self.chips * self.peak_flops * self.mfu)

  @property
  def total_hours(self) -> float:
    return self.total_steps * self.step_seconds / 3600


def make_plan(config: ml_collections.ConfigDict, topology: str, *, examples: int = ECGINSTRUCT_EXAMPLES,
              mfu: float = DEFAULT_MFU) -> Plan:
  """Compiles `config`'s train step for `topology` (num_slices = the product of config.mesh.dcn) and plans a
  run of train.epochs epochs over `examples` examples (or of train.steps steps when set)."""
  generation, grid = resolve_topology(topology)
  num_slices = math.prod(config.mesh.dcn)
  devices = tpu_devices(generation, grid, num_slices)
  peak = flops.peak_flops(devices[0].device_kind)
  if peak is None:
    raise ConfigError(f"no peak FLOP/s known for {devices[0].device_kind!r} (pulse_jax.flops.PEAK_FLOPS)")
  mesh = parallel.make_mesh(config.mesh.ici, devices=devices, dcn_shape=config.mesh.dcn)
  t, model = config.train, model_config(config.model)
  total_steps = t.steps or t.epochs * (examples // t.global_batch)
  if total_steps <= 0:
    raise ConfigError(f"{examples} examples make no batch of {t.global_batch}")
  tower = nnx.to_pure_dict(nnx.state(_abstract_model(config)))["vision_tower"]
  vision_trained = train.trains_any(tower, t.frozen, "vision_tower")  # counted as training counts it

  start = time.perf_counter()
  memory = out_of_memory = xla_flops = None
  try:
    compiled = compile_train_step(config, mesh, total_steps)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    out_of_memory = str(e).strip().splitlines()[0]
  else:
    stats = compiled.memory_analysis()
    memory = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
              "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes,
              "program": stats.generated_code_size_in_bytes}
    try:
      xla_flops = xla_step_flops(config, mesh, total_steps, compiled)
    except jax.errors.JaxRuntimeError as e:  # a variant without a loop can need more HBM than the step itself
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise

  return Plan(
      topology=f"{generation.name}:{'x'.join(map(str, grid))}", chips=len(devices), num_slices=num_slices,
      device_kind=devices[0].device_kind, mesh_shape=dict(mesh.shape), hbm_bytes=generation.hbm_bytes,
      memory=memory, out_of_memory=out_of_memory, xla_flops=xla_flops,
      model_flops=flops.train_step_flops(model, batch=t.global_batch,
                                         seq_len=config.data.seq_len, vision_trained=vision_trained),
      trained_params=trained_parameters(config), global_batch=t.global_batch, seq_len=config.data.seq_len,
      examples=examples, epochs=None if t.steps else t.epochs, total_steps=total_steps, mfu=mfu, peak_flops=peak,
      compile_seconds=time.perf_counter() - start,
      attention=kernels.resolve(model.attention, devices[0].platform, model.dtype, model.text.head_dim))


def format_plan(plan: Plan, title: str) -> str:
  """The report `pulse-jax plan` prints, under the heading `title`."""
  gib = lambda n: f"{n / GIB:8.2f} GiB"
  ratio = lambda f: f"{f / plan.six_n_tokens:.2f} x 6 N tokens"
  hbm = f"{plan.hbm_bytes / GIB:.0f} GiB HBM"
  mesh = " ".join(f"{axis}={size}" for axis, size in plan.mesh_shape.items())
  slices = f" in {plan.num_slices} slices" if plan.num_slices > 1 else ""
  outcome = "compiled" if plan.memory is not None else "refused by XLA (too large for HBM)"
  lines = [f"{title}: {plan.topology}, {plan.chips} chips{slices} ({plan.device_kind}), mesh {mesh}, "
           f"{plan.attention} attention",
           f"train step {outcome} after {plan.compile_seconds:.0f} s of ahead-of-time compilation through libtpu",
           "", "memory per chip (XLA memory analysis)"]
  if plan.memory is None:
    lines += [f"  does NOT fit in {hbm}: {plan.out_of_memory}"]
  else:
    m = plan.memory
    verdict = f"fits ({plan.bytes_per_chip / plan.hbm_bytes:.0%} used)" if plan.fits else "does NOT fit"
    lines += [f"  arguments     {gib(m['arguments'])}   parameters, optimizer state, batch",
              f"  outputs       {gib(m['outputs'])}",
              f"  aliased       {gib(-m['aliased'])}   outputs written over the donated state",
              f"  temporaries   {gib(m['temporaries'])}   activations, gradients, communication buffers",
              f"  program       {gib(m['program'])}",
              f"  total         {gib(plan.bytes_per_chip)}   of {hbm}: {verdict}"]
  lines += ["", f"FLOPs per step: batch {plan.global_batch} x {plan.seq_len:,} tokens (every batch is padded to "
                "data.seq_len)"]
  if plan.memory is not None and plan.xla_flops is None:
    lines += ["  XLA cost analysis  not counted: a variant of the step compiled to count its loops (without decoder "
              "or vision layers) does not fit in HBM"]
  if plan.xla_flops is not None:
    unseen = "; not the splash kernel's attention" if plan.attention == "splash" else ""
    lines += [f"  XLA cost analysis  {plan.xla_flops:9.3e}   each scanned layer counted every time it runs{unseen} "
              f"({ratio(plan.xla_flops)}); a lower bound where XLA adds loops of its own (collective matmuls on "
              "large meshes)"]
  lines += [f"  model FLOPs        {plan.model_flops:9.3e}   pulse_jax.flops: matmuls + attention, frozen vision "
            f"forward only ({ratio(plan.model_flops)})",
            f"  6 N tokens         {plan.six_n_tokens:9.3e}   N = {plan.trained_params:,} trained parameters", "",
            f"time at an assumed MFU of {plan.mfu:.0%} of {plan.peak_flops / 1e12:.0f} TFLOP/s per chip (bf16 peak)",
            f"  one step           {plan.step_seconds:9.2f} s"]
  run = (f"{plan.epochs} epochs of {plan.examples:,} examples" if plan.epochs is not None else "train.steps")
  lines += [f"  whole run          {plan.total_hours:9.1f} h   {plan.total_steps:,} steps ({run}), "
            f"{plan.total_hours * plan.chips:,.0f} chip-hours",
            f"  PULSE, for scale   {PULSE_REFERENCE}"]
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", required=True, metavar="FILE.py[:ARG]",
                      help="experiment config; further `--config.a.b=value` arguments override its fields")
  parser.add_argument("--topology", required=True,
                      help="TPU slice (v5p-64, v5e-256, v4-64, v6e-256: v4 / v5p count TensorCores, 2 per chip) "
                           "or topology (v5p:2x4x4, v5e:16x16)")
  parser.add_argument("--examples", type=int, default=ECGINSTRUCT_EXAMPLES,
                      help="training examples per epoch (default: ECGInstruct's 1,156,110)")
  parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                      help="model FLOPs utilisation assumed for the time estimate (default: %(default)s)")
  accept_config_overrides(parser)


def run(args: argparse.Namespace) -> int:
  """Prints the plan; exit status 1 when the step does not fit in HBM."""
  config = apply_overrides(load_config(args.config), args.overrides)
  plan = make_plan(config, args.topology, examples=args.examples, mfu=args.mfu)
  print(format_plan(plan, f"{args.config} on {args.topology}"))
  return 0 if plan.fits else 1
