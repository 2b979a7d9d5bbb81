"""Helpers for the trainer and checkpoint tests (the smallest PULSE that still exercises every code path) and for
running `pulse-jax` commands as processes, multi-process ones included.

The model is configs/tiny.py shrunk to 2 + 2 layers, 64 / 32 hidden, 28 px tiles (4 features per view, up to 5
views) and 48-token sequences, so a train step compiles in seconds; every dimension divides the 8 fake devices'
mesh axes.
"""

import os
import pathlib
import socket
import struct
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
from tensorboardX.proto import event_pb2

from pulse_jax import parallel, train
from pulse_jax.config import apply_overrides, load_config, model_config
from tests.conftest import REPO_ROOT

SMALL_OVERRIDES = (
    "model.text.num_layers=2", "model.text.hidden_size=64", "model.text.intermediate_size=128",
    "model.text.head_dim=16", "model.text.vocab_size=256", "model.image_token_id=255",
    "model.vision.num_layers=2", "model.vision.hidden_size=32", "model.vision.intermediate_size=64",
    "model.vision.num_heads=2", "model.vision.image_size=28", "model.grid_pinpoints=((28,56),(56,28),(56,56))",
    "data.seq_len=48", "data.num_examples=32", "data.eval_examples=8", "train.global_batch=8", "train.steps=4",
    "train.eval_every=0", "train.log_every=1",
)
TINY_CONFIG = str(REPO_ROOT / "configs" / "tiny.py")


def small_config(*overrides: str) -> ml_collections.ConfigDict:
  return apply_overrides(load_config(TINY_CONFIG), [*SMALL_OVERRIDES, *overrides])


def small_train_step(config: ml_collections.ConfigDict, mesh_shape, rules: str = "fsdp_tensor",
                     accum_steps: int = 1) -> train.TrainStep:
  """The TrainStep of `config` on a mesh of the first prod(mesh_shape) devices."""
  count = mesh_shape[0] * mesh_shape[1] * mesh_shape[2]
  mesh = parallel.make_mesh(mesh_shape, jax.devices()[:count])
  t = config.train
  total = t.steps
  return train.make_train_step(
      model_config(config.model), mesh, rules=parallel.logical_rules(rules), tx=train.make_optimizer(t, total),
      schedule=train.learning_rate_schedule(t, total), frozen=t.frozen, global_batch=t.global_batch,
      seq_len=config.data.seq_len, accum_steps=accum_steps)


def first_batches(config: ml_collections.ConfigDict, count: int) -> list[dict[str, np.ndarray]]:
  """The first `count` global batches of the config's training data (numpy, as one process sees them)."""
  batches = train.input_batches(config.data, model_config(config.model), split="train",
                                batch_size=config.train.global_batch, seed=config.data.seed).iterator
  return [next(batches) for _ in range(count)]


def tensorboard_scalars(logdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] from the event files in `logdir` (TFRecord framing: length, crc, event, crc)."""
  scalars = {}
  for file in logdir.glob("events.out.tfevents.*"):
    data, position = file.read_bytes(), 0
    while position < len(data):
      (length,) = struct.unpack("<Q", data[position:position + 8])
      event = event_pb2.Event.FromString(data[position + 12:position + 12 + length])
      position += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


RUN_TIMEOUT_SECONDS = 240


def free_port() -> int:
  """A TCP port nobody listens on now (for a multi-process run's coordinator, which binds every interface)."""
  with socket.socket() as probe:
    probe.bind(("", 0))
    return probe.getsockname()[1]


def start_pulse_jax(command: str, args: list[str], log: pathlib.Path, *, cache: pathlib.Path, devices: int = 2,
                    process: tuple[int, int, int] | None = None) -> subprocess.Popen:
  """`pulse-jax COMMAND ARGS` in the background on `devices` fake CPU devices, its output going to `log`;
  process = (coordinator port, process count, this process's rank) makes it one process of a multi-process run,
  joined through the JAX_* variables as on a GPU cluster.

  Compilation dominates these short runs: LLVM optimisation is off (it halves compile time; the runs are
  equally deterministic) and the persistent compilation cache in `cache` serves runs of the same shapes.
  """
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
             "--xla_backend_optimization_level=0", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  if process is not None:
    port, count, rank = process
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(rank))
  with log.open("w") as out:
    return subprocess.Popen([sys.executable, "-m", "pulse_jax", command, *args], cwd=REPO_ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def finish_pulse_jax(process: subprocess.Popen, log: pathlib.Path, status: int = 0) -> str:
  """Waits for a start_pulse_jax run (killed after RUN_TIMEOUT_SECONDS); checks its exit status, returns its
  output."""
  try:
    returncode = process.wait(timeout=RUN_TIMEOUT_SECONDS)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()
    raise AssertionError(f"the run timed out: {log.read_text()[-3000:]}") from None
  output = log.read_text()
  assert returncode == status, output[-3000:]
  return output


def run_processes(command: str, args: list[str], logs: pathlib.Path, *, cache: pathlib.Path, count: int = 2,
                  status: int = 0) -> list[str]:
  """`pulse-jax COMMAND ARGS` as `count` processes of 2 CPU devices each, every one expected to exit with
  `status`; their outputs (logs/<rank>.log).

  All share one deadline. As soon as one exits otherwise (the others would then wait in a collective until its
  heartbeat times out) or the deadline passes, every process still running is killed and the test fails with
  every log.
  """
  logs.mkdir(parents=True, exist_ok=True)
  port, paths = free_port(), [logs / f"{rank}.log" for rank in range(count)]
  processes = [start_pulse_jax(command, args, path, cache=cache, process=(port, count, rank))
               for rank, path in enumerate(paths)]
  deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
  try:
    while any(p.poll() is None for p in processes):
      if any(p.returncode not in (None, status) for p in processes) or time.monotonic() > deadline:
        break
      time.sleep(0.1)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  outputs = [path.read_text() for path in paths]
  assert all(p.returncode == status for p in processes), "\n".join(
      f"--- process {rank} (status {p.returncode}):\n{output[-2000:]}"
      for rank, (p, output) in enumerate(zip(processes, outputs)))
  return outputs
