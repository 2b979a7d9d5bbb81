"""Helpers for the trainer and checkpoint tests: the smallest PULSE that still exercises every code path.

The model is configs/tiny.py shrunk to 2 + 2 layers, 64 / 32 hidden, 28 px tiles (4 features per view, up to 5
views) and 48-token sequences, so a train step compiles in seconds; every dimension divides the 8 fake devices'
mesh axes.
"""

import pathlib
import struct

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
