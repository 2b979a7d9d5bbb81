"""Sharded training of PULSE: `pulse-jax train --config configs/X.py[:arg] --workdir DIR [--config.a.b=v ...]`.

One program for one CPU, a GPU node or a TPU pod: every process runs it, builds the same (data, fsdp, tensor)
mesh and feeds its share of each global batch. Starting again in the same workdir resumes from the newest
readable checkpoint, data position included, and continues bit-for-bit as if never stopped.

The recipe (reference/pulse_paper.md §5.3-5.4): AdamW (b1 0.9, b2 0.999, eps 1e-8, weight decay 0), learning
rate 2e-5 with linear warmup over the first 3% of steps then cosine decay to 0 (transformers' schedule: the first
update uses lr 0), gradients clipped to global norm 1.0, bf16 compute on fp32 master weights, the vision tower
frozen (`train.frozen` regex over parameter paths: no gradient is taken for those parameters, so no backward
pass runs through the tower, and the optimizer keeps no state for them), projector and LM trained.

Loss: cross-entropy of logits[:, t - 1] against input_ids[:, t] where loss_mask[:, t], averaged over the
assistant tokens of the whole global batch. Gradient accumulation is a scan over micro-batches that sums the
token losses and their gradients and divides once by the global token count, so accumulating changes memory
use, never the result (optax.MultiSteps would average per-micro-batch means, weighting tokens unequally).

Batch contract (numpy per process, global jax arrays inside the step):
  input_ids int32[B, T], attention_mask bool[B, T], loss_mask bool[B, T], pixel_values float32[B, V, 3, S, S],
  layout int32[B, F] (feature_layout), image_sizes int32[B, 2]; the data sources add example_id int[B].

Workdir (a local folder or a gs:// URI, read and written through etils.epath; gs:// needs the `tpu` or `gpu`
extra): checkpoints/ (pulse_jax.checkpoint), tensorboard/ (loss, learning_rate, grad_norm, tokens_per_second,
step_time, mfu, eval/loss), data_order.txt (with train.log_data_order, local workdirs only: "step id id ..."
per step).
"""

import argparse
import contextlib
import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorboardX
import tqdm
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pulse_jax import checkpoint, flops, parallel
from pulse_jax.config import accept_config_overrides, apply_overrides, load_config, model_config
from pulse_jax.data import pipeline, standin
from pulse_jax.ecg.skips import SkipCounter
from pulse_jax.errors import ConfigError
from pulse_jax.models.config import PulseConfig
from pulse_jax.models.llava import PulseModel, max_image_tokens

# The batch entries the step consumes (image_sizes is only needed on the host, to build `layout`).
STEP_INPUTS = ("input_ids", "attention_mask", "loss_mask", "pixel_values", "layout")
PREEMPTED_EXIT_STATUS = 143  # 128 + SIGTERM: the run stopped early, with a checkpoint to resume from


# ------------------------------------------------------------------------------------------- optimizer


def learning_rate_schedule(train: Mapping, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over ceil(warmup_ratio * total_steps) steps, then cosine decay to 0 at total_steps."""
  warmup = math.ceil(train["warmup_ratio"] * total_steps)
  return optax.warmup_cosine_decay_schedule(0.0, train["learning_rate"], warmup, max(total_steps, warmup + 1))


def make_optimizer(train: Mapping, total_steps: int) -> optax.GradientTransformation:
  """clip_by_global_norm, then AdamW with the schedule (PyTorch AdamW's update, as PULSE trained with)."""
  return optax.chain(
      optax.clip_by_global_norm(train["grad_clip"]),
      optax.adamw(learning_rate_schedule(train, total_steps), b1=train["adam_b1"], b2=train["adam_b2"],
                  eps=train["adam_eps"], weight_decay=train["weight_decay"]))


def _frozen_path(frozen: str) -> Callable[[str], bool]:
  """Whether a '/'-joined parameter path (e.g. 'vision_tower/layers/mlp/fc1/kernel') matches the regex `frozen`
  (searched, so '^vision_tower/' freezes the tower; '' freezes nothing)."""
  pattern = re.compile(frozen) if frozen else None
  return lambda path: pattern is not None and bool(pattern.search(path))


def trainable_filter(frozen: str):
  """nnx filter: the Params whose path `frozen` does not match (_frozen_path)."""
  is_frozen = _frozen_path(frozen)
  return nnx.All(nnx.Param, nnx.Not(lambda path, _: is_frozen("/".join(map(str, path)))))


# ------------------------------------------------------------------------------------------- the step


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """The jitted functions of a training run and the shapes/shardings they take, for one mesh.

  The train state is the checkpoint's plain dict {"params", "opt_state", "step"} of global arrays.

  Attributes:
    step: (state, batch) -> (state, metrics); state is donated. Metrics are replicated scalars: loss (global
      mean over loss tokens), grad_norm (before clipping), learning_rate (the one this update used), tokens
      (real tokens in the batch).
    eval_loss: (state, batch) -> (summed token loss, loss-token count), for held-out loss.
    init: (seed int32[]) -> a fresh state with randomly initialised parameters.
    init_from_params: (params) -> a fresh state around given parameters (donated), e.g. an imported checkpoint.
    state_shardings: NamedShardings of the state, the same tree.
    abstract_state: jax.ShapeDtypeStructs of the state, with shardings: the restore target, and with
      abstract_batch the inputs for ahead-of-time compilation (`step.lower(abstract_state, abstract_batch)`).
    abstract_batch: jax.ShapeDtypeStructs of the STEP_INPUTS of one global batch.
  """
  step: Callable
  eval_loss: Callable
  init: Callable
  init_from_params: Callable
  state_shardings: dict
  abstract_state: dict
  abstract_batch: dict


def loss_sum(model: PulseModel, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(sum of next-token cross-entropies over the loss tokens, number of loss tokens) for one (micro-)batch."""
  logits = model(batch["input_ids"], batch["pixel_values"], attention_mask=batch["attention_mask"],
                 layout=batch["layout"])
  targets, weights = batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:]
  token_losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
  return jnp.sum(token_losses * weights), jnp.sum(weights, dtype=jnp.int32)


def _state_dict(model: PulseModel, optimizer: nnx.Optimizer) -> dict:
  """The checkpoint schema: {"params": model state, "opt_state": optax state, "step": update count}."""
  return {"params": nnx.to_pure_dict(nnx.state(model)), **nnx.to_pure_dict(nnx.state(optimizer))}


def _micro_batches(x: jax.Array, accum_steps: int, mesh: Mesh) -> jax.Array:
  """[B, ...] -> [accum_steps, B / accum_steps, ...], micro-batch i = rows i, i + accum_steps, ...

  Strided rather than contiguous so that every device keeps holding its own rows (the batch axis stays sharded
  over (data, fsdp) in each micro-batch) and no data moves.
  """
  x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
  spec = PartitionSpec(None, ("data", "fsdp"), *([None] * (x.ndim - 2)))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def make_train_step(config: PulseConfig, mesh: Mesh, *, rules: parallel.Rules, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, frozen: str, global_batch: int, seq_len: int,
                    accum_steps: int = 1) -> TrainStep:
  """Builds and jits the train step for `config` on `mesh` (see TrainStep)."""
  data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % (accum_steps * data_parallel):
    raise ConfigError(f"train.global_batch {global_batch} must be a multiple of grad_accum_steps {accum_steps} x "
                      f"data x fsdp = {data_parallel}, so every micro-batch splits evenly over the devices")
  trainable = trainable_filter(frozen)

  def new_model_and_optimizer(seed):
    model = PulseModel(config, rngs=nnx.Rngs(jax.random.key(seed)))
    return model, nnx.Optimizer(model, tx, wrt=trainable)

  # Structure and logical axes only (the sharded abstract state comes from the jitted init below).
  with nnx.use_eager_sharding(False):
    abstract_model, abstract_optimizer = nnx.eval_shape(lambda: new_model_and_optimizer(0))
  model_graphdef, model_state = nnx.split(abstract_model)
  optimizer_graphdef, optimizer_state = nnx.split(abstract_optimizer)
  state_shardings = {"params": parallel.state_shardings(model_state, mesh, rules),
                     **parallel.state_shardings(optimizer_state, mesh, rules)}
  replicated = NamedSharding(mesh, PartitionSpec())

  def merge(state):
    model = nnx.merge(model_graphdef, state["params"])
    optimizer = nnx.merge(optimizer_graphdef, {"opt_state": state["opt_state"], "step": state["step"]})
    return model, optimizer

  def init(seed):
    with nnx.use_eager_sharding(False):  # out_shardings place every array; eager constraints would be redundant
      return _state_dict(*new_model_and_optimizer(seed))

  def init_from_params(params):
    model = nnx.merge(model_graphdef, params)
    return _state_dict(model, nnx.Optimizer(model, tx, wrt=trainable))

  def train_step(state, batch):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # the model's attention reads it (models.kernels)
      return _update(state, batch)

  def _update(state, batch):
    model, optimizer = merge(state)
    graphdef, trained, rest = nnx.split(model, trainable, ...)

    def accumulate(carry, micro_batch):
      def micro_loss(trained):
        return loss_sum(nnx.merge(graphdef, trained, rest), micro_batch)
      (total, count), grads = jax.value_and_grad(micro_loss, has_aux=True)(trained)
      grad_sum, loss_total, token_count = carry
      return (jax.tree.map(jnp.add, grad_sum, grads), loss_total + total, token_count + count), None

    micro = {name: _micro_batches(batch[name], accum_steps, mesh) for name in STEP_INPUTS}
    zeros = (jax.tree.map(jnp.zeros_like, trained), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    (grad_sum, loss_total, token_count), _ = jax.lax.scan(accumulate, zeros, micro)
    denominator = jnp.maximum(token_count, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / denominator, grad_sum)
    learning_rate = schedule(state["step"])
    optimizer.update(model, grads)
    metrics = {"loss": loss_total / denominator, "grad_norm": optax.tree.norm(grads),
               "learning_rate": learning_rate, "tokens": jnp.sum(batch["attention_mask"], dtype=jnp.int32)}
    return _state_dict(model, optimizer), metrics

  def eval_loss(state, batch):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return loss_sum(merge(state)[0], batch)

  abstract_batch = _abstract_batch(config, mesh, global_batch, seq_len)
  batch_shardings = {name: spec.sharding for name, spec in abstract_batch.items()}
  jitted_init = jax.jit(init, out_shardings=state_shardings)
  return TrainStep(
      step=jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=0),
      eval_loss=jax.jit(eval_loss, in_shardings=(state_shardings, batch_shardings), out_shardings=replicated),
      init=jitted_init,
      init_from_params=jax.jit(init_from_params, in_shardings=(state_shardings["params"],),
                               out_shardings=state_shardings, donate_argnums=0),
      state_shardings=state_shardings,
      abstract_state=jitted_init.eval_shape(jax.ShapeDtypeStruct((), jnp.int32)),
      abstract_batch=abstract_batch)


def _abstract_batch(config: PulseConfig, mesh: Mesh, batch: int, seq_len: int) -> dict:
  tile = config.vision.image_size
  shapes = {"input_ids": ((batch, seq_len), jnp.int32), "attention_mask": ((batch, seq_len), jnp.bool_),
            "loss_mask": ((batch, seq_len), jnp.bool_),
            "pixel_values": ((batch, config.max_views, 3, tile, tile), jnp.float32),
            "layout": ((batch, max_image_tokens(config)), jnp.int32)}
  return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh, len(shape)))
          for name, (shape, dtype) in shapes.items()}


# ------------------------------------------------------------------------------------------- input


@dataclasses.dataclass
class Input:
  """One split's host batches, as `input_batches` opens them.

  Attributes:
    iterator: yields this process's rows of each global batch (dicts of numpy arrays, the batch contract);
      its position is what checkpoints save.
    epoch_size: examples per epoch over all processes.
    pad_id: the token the batches are right-padded with (to agree on one length across processes).
    skipped: the examples this process skipped and why (data.source "tfds" without workers), else None.
  """
  iterator: grain.DatasetIterator
  epoch_size: int
  pad_id: int
  skipped: SkipCounter | None = None

  def next_global(self, mesh: Mesh) -> tuple[dict[str, jax.Array], np.ndarray]:
    """The next global batch of STEP_INPUTS, and this process's example ids (for the data-order log).

    Each process pads to the longest bucket any process drew this step: a global array has one shape.
    """
    local = pipeline.agree_on_length(next(self.iterator), self.pad_id)
    return parallel.global_batch({k: local[k] for k in STEP_INPUTS}, mesh), local["example_id"]


def input_batches(data: Mapping, config: PulseConfig, *, split: str, batch_size: int, seed: int | None) -> Input:
  """This process's batches of `split` ("train" or "eval") from `data.source`.

  "tfds": the ECGInstruct build named by data.builder through the grain pipeline (pulse_jax.data.pipeline:
  the data.mixture splits for "train", data.eval_split for "eval"), batches padded to length buckets, so the
  step compiles once per bucket. "standin": deterministic random examples of data.seq_len tokens (no files).
  seed=None keeps the examples in order (evaluation).
  """
  if data["source"] == "tfds":
    batches = pipeline.batches(data, config, split=split, batch_size=batch_size, seed=seed)
    skipped = batches.preprocess.skipped if not int(data["workers"]) else None
    return Input(batches.iterator, batches.epoch_size, batches.pad_id, skipped)
  if data["source"] == "standin":
    train = split == "train"
    examples = standin.standin_dataset(config, num_examples=data["num_examples"] if train else data["eval_examples"],
                                       seq_len=data["seq_len"], seed=data["seed"] if train else data["seed"] + 1)
    return Input(batch_iterator(examples, batch_size=batch_size, seed=seed), len(examples), pad_id=0)
  raise ConfigError(f"unknown data.source {data['source']!r}; known: 'tfds', 'standin'")


def batch_iterator(examples: grain.MapDataset, *, batch_size: int, seed: int | None) -> grain.DatasetIterator:
  """This process's share of each global batch, epoch after epoch, as dicts of numpy arrays.

  Process p takes examples p, p + P, ... (P processes), reshuffled every epoch when `seed` is given. The
  iterator's position is what checkpoints save (pulse_jax.checkpoint).
  """
  mine = examples[jax.process_index()::jax.process_count()]
  if seed is not None:
    mine = mine.shuffle(seed)
  return iter(mine.repeat().batch(batch_size, drop_remainder=True).to_iter_dataset())


# ------------------------------------------------------------------------------------------- main


def train(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Trains (or resumes) the run `config` describes in `workdir`; returns the exit status (0, or 143 when a
  preemption notice stopped it after saving)."""
  # ----------------------------------------------------------------------------------------- mesh
  parallel.initialize_distributed()
  mesh = parallel.mesh_from_config(config.mesh)
  rules = parallel.logical_rules(config.mesh.rules)
  model_cfg = model_config(config.model)
  is_main = jax.process_index() == 0
  t = config.train
  if t.log_data_order and "://" in str(workdir):
    raise ConfigError(f"train.log_data_order appends to {workdir}/data_order.txt every step, which object stores "
                      "cannot do: use a local workdir (or a mounted bucket) for it")
  workdir = epath.Path(workdir)  # not pathlib, which reads gs://bucket/run as the local folder gs:/bucket/run
  workdir.mkdir(parents=True, exist_ok=True)

  # ----------------------------------------------------------------------------------------- input
  if t.global_batch % jax.process_count():
    raise ConfigError(f"train.global_batch {t.global_batch} does not split over {jax.process_count()} processes")
  local_batch = t.global_batch // jax.process_count()
  train_input = input_batches(config.data, model_cfg, split="train", batch_size=local_batch, seed=config.data.seed)
  total_steps = t.steps or t.epochs * (train_input.epoch_size // t.global_batch)
  if total_steps <= 0:
    raise ConfigError(f"{train_input.epoch_size} examples make no batch of {t.global_batch}; set train.steps or "
                      "add data")

  # ----------------------------------------------------------------------------------------- model, shardings
  schedule = learning_rate_schedule(t, total_steps)
  step_fns = make_train_step(model_cfg, mesh, rules=rules, tx=make_optimizer(t, total_steps), schedule=schedule,
                             frozen=t.frozen, global_batch=t.global_batch, seq_len=config.data.seq_len,
                             accum_steps=t.grad_accum_steps)

  # ----------------------------------------------------------------------------------------- init or resume
  checkpointer = checkpoint.Checkpointer(str(workdir / "checkpoints"), keep=config.checkpoint.keep)
  restored = checkpointer.restore_latest(step_fns.abstract_state, train_input.iterator)
  if restored is not None:
    state, step = restored
    _say(is_main, f"resumed from {workdir / 'checkpoints' / str(step)}")
  elif config.checkpoint.init_from:
    params, source = checkpoint.load_params(config.checkpoint.init_from, model_cfg,
                                            step_fns.state_shardings["params"])
    state, step = step_fns.init_from_params(params), 0
    _say(is_main, f"initialised from {source}")
  else:
    state, step = step_fns.init(jnp.int32(t.seed)), 0

  # ----------------------------------------------------------------------------------------- eval hook
  eval_input, eval_start = None, None

  def evaluate(state) -> float:
    """Mean loss per loss token over the first train.eval_batches global batches of the eval split (opened once,
    rewound each time: its reading threads and worker processes are started once per run)."""
    nonlocal eval_input, eval_start
    if eval_input is None:
      eval_input = input_batches(config.data, model_cfg, split="eval", batch_size=local_batch, seed=None)
      eval_start = eval_input.iterator.get_state()
    else:
      eval_input.iterator.set_state(eval_start)
    total = count = 0.0
    for _ in range(t.eval_batches):
      summed, tokens = step_fns.eval_loss(state, eval_input.next_global(mesh)[0])
      total, count = total + float(summed), count + int(tokens)
    return total / max(count, 1)

  # ----------------------------------------------------------------------------------------- loop
  status = 0
  vision_trained = trains_any(step_fns.abstract_state["params"]["vision_tower"], t.frozen, "vision_tower")
  with checkpoint.PreemptionWatch() as preemption, _Progress(
      workdir / "tensorboard", start=step, total=total_steps, log_every=t.log_every, is_main=is_main) as progress:
    while step < total_steps:
      batch, example_ids = train_input.next_global(mesh)
      state, metrics = step_fns.step(state, batch)
      step += 1
      # The batch's own padded length (a bucket), which the step computes over, not data.seq_len.
      progress.record(step, metrics, flops.train_step_flops(
          model_cfg, batch=t.global_batch, seq_len=batch["input_ids"].shape[1], vision_trained=vision_trained))
      if t.log_data_order:
        _log_data_order(workdir / "data_order.txt", step, example_ids, is_main)
      evaluating = t.eval_every and (step % t.eval_every == 0 or step == total_steps)
      preempted = preemption.signalled or checkpointer.reached_preemption(step)
      saving = preempted or step % config.checkpoint.every == 0 or step == total_steps
      if evaluating or saving:
        with progress.paused(state):
          if evaluating:
            progress.scalars(step, {"eval/loss": evaluate(state)}, announce=True)
          if saving:
            checkpointer.save(step, state, train_input.iterator)
      if preempted:
        progress.say(f"preempted at step {step}: checkpoint saved; run the same command to resume")
        status = PREEMPTED_EXIT_STATUS
        break
  checkpointer.wait()
  checkpointer.close()
  if train_input.skipped is not None and train_input.skipped.total:
    _say(True, f"process {jax.process_index()} {train_input.skipped.summary()}")
  return status


def trains_any(params: Mapping, frozen: str, prefix: str) -> bool:
  """Whether any parameter of `params` (the subtree at `prefix`) escapes the `frozen` regex, as trainable_filter
  decides it."""
  is_frozen = _frozen_path(frozen)
  return any(not is_frozen("/".join([prefix, *(str(getattr(key, "key", key)) for key in path)]))
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0])


def _say(is_main: bool, message: str) -> None:
  if is_main:
    tqdm.tqdm.write(message)


class _Progress:
  """The progress bar and TensorBoard scalars (process 0 only), fetching metrics every `log_every` steps.

  Per step: loss, grad_norm, learning_rate. Per logging interval: step_time (seconds per step, wall clock,
  without the compiling first step, evaluations and the blocking part of checkpoint saves), tokens_per_second
  (real tokens, padding excluded) and mfu (the steps' model FLOPs, pulse_jax.flops at each batch's padded length,
  over the devices' bf16 peak; not on CPUs, whose peak is unknown). The bar shows loss, tokens/s, s/step and MFU.
  """

  def __init__(self, logdir: epath.Path, *, start: int, total: int, log_every: int, is_main: bool,
               clock: Callable[[], float] = time.perf_counter):
    self._is_main, self._log_every, self._total, self._clock = is_main, log_every, total, clock
    self._peak = flops.peak_flops(jax.devices()[0].device_kind)
    self._pending, self._first_step, self._timer = [], start + 1, (clock(), start)
    self._flops = 0.0  # model FLOPs of the steps since the timer started
    self._bar = tqdm.tqdm(total=total, initial=start, disable=not is_main, unit="step", dynamic_ncols=True)
    self._writer = tensorboardX.SummaryWriter(str(logdir)) if is_main else None

  def __enter__(self) -> "_Progress":
    return self

  def __exit__(self, *exc) -> None:
    self._bar.close()
    if self._writer is not None:
      self._writer.close()

  def record(self, step: int, metrics: Mapping[str, jax.Array], step_flops: float) -> None:
    """Takes the step's metrics (device arrays) and model FLOPs, and reports at logging steps.

    Waits for the previous step first: one step stays queued behind the running one (the device never idles on
    the host), and the bar advances at the rate steps finish, not at the rate they are dispatched.
    """
    if self._pending:
      jax.block_until_ready(self._pending[-1])
    self._bar.update(1)
    self._pending.append(metrics)
    self._flops += step_flops
    if not (step == self._first_step or step % self._log_every == 0 or step == self._total):
      return
    fetched, self._pending = jax.device_get(self._pending), []  # waits for this step only
    for offset, m in enumerate(fetched):
      self.scalars(step - len(fetched) + 1 + offset,
                   {name: float(m[name]) for name in ("loss", "grad_norm", "learning_rate")})
    postfix = {"loss": f"{float(fetched[-1]['loss']):.4f}"}
    if step > self._first_step:  # the first step includes compilation: time from its end
      elapsed = self._clock() - self._timer[0]
      step_time = elapsed / (step - self._timer[1])
      throughput = {"step_time": step_time, "tokens_per_second": sum(int(m["tokens"]) for m in fetched) / elapsed}
      postfix.update(tok_s=f"{throughput['tokens_per_second']:,.0f}", s_step=f"{step_time:.3f}")
      if self._peak:
        throughput["mfu"] = self._flops / (elapsed * jax.device_count() * self._peak)
        postfix.update(mfu=f"{throughput['mfu']:.1%}")
      self.scalars(step, throughput)
    self._bar.set_postfix(postfix)
    self._timer, self._flops = (self._clock(), step), 0.0

  @contextlib.contextmanager
  def paused(self, state):
    """Leaves the time spent inside out of the step time (after waiting for `state`, the step's own work)."""
    jax.block_until_ready(state)
    start = self._clock()
    yield
    self._timer = (self._timer[0] + self._clock() - start, self._timer[1])

  def scalars(self, step: int, values: Mapping[str, float], *, announce: bool = False) -> None:
    if self._writer is not None:
      for name, value in values.items():
        self._writer.add_scalar(name, value, step)
    if announce:
      self.say(f"step {step}: " + ", ".join(f"{name} {value:.4f}" for name, value in values.items()))

  def say(self, message: str) -> None:
    if self._is_main:
      self._bar.write(message)


def _log_data_order(path: epath.Path, step: int, local_ids: np.ndarray, is_main: bool) -> None:
  """Appends "step id id ..." with the example ids of the whole global batch (all processes' rows).

  The int64 ids travel as pairs of int32 halves: the gather goes through devices, where JAX's default 32-bit mode
  would cut them to their low halves.
  """
  halves = np.ascontiguousarray(local_ids, np.int64).view(np.int32).reshape(-1, 2)
  ids = np.ascontiguousarray(multihost_utils.process_allgather(halves, tiled=True), np.int32).view(np.int64).ravel()
  if is_main:
    with path.open("a") as f:
      f.write(f"{step} {' '.join(map(str, ids.tolist()))}\n")


# ------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", required=True, metavar="FILE.py[:ARG]", help="experiment config, e.g. "
                      "configs/pulse_7b.py:fsdp; further `--config.a.b=value` arguments override its fields")
  parser.add_argument("--workdir", required=True, help="checkpoints, TensorBoard events; rerun to resume")
  accept_config_overrides(parser)


def run(args: argparse.Namespace) -> int:
  config = apply_overrides(load_config(args.config), args.overrides)
  return train(config, args.workdir)
