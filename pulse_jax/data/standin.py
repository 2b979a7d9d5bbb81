"""Deterministic synthetic training examples in the batch layout the trainer consumes.

A stand-in for the ECGInstruct pipeline (pulse_jax.data.pipeline) with the same per-example contract, so the
trainer, checkpoints and benchmarks run before (and without) the real data. Selected by `data.source =
"standin"`. Example i is a pure function of (seed, i): random text around one image block of exactly the number
of placeholders the model expects, random pixels in the image's views, right padding, and the loss on an
answer suffix closed by "</s>". Every fourth example is text-only, as the contract allows.

Per example (numpy; grain's batch stacks them into the batch contract of pulse_jax.train):
  input_ids      int32[T]            bos, prompt, image placeholders, prompt, answer, eos, padding (0)
  attention_mask bool[T]             True for real tokens
  loss_mask      bool[T]             True on the answer and its eos
  pixel_values   float32[V, 3, S, S] V = config.max_views, views past the image's own are zero
  layout         int32[F]            feature_layout of the image (zeros when text-only)
  image_sizes    int32[2]            (height, width); (0, 0) when text-only
  example_id     int64[]             i, to audit data order
"""

import functools

import grain
import numpy as np

from pulse_jax.errors import ConfigError
from pulse_jax.models.config import PulseConfig
from pulse_jax.models.llava import feature_layout, max_image_tokens, num_image_tokens, num_views

_FIRST_TEXT_ID = 3  # after <unk>, <s>, </s>


def standin_example(index: int, *, config: PulseConfig, seq_len: int, seed: int) -> dict[str, np.ndarray]:
  """Example `index` of the stand-in dataset (see the module docstring for the fields)."""
  rng = np.random.default_rng((seed, index))
  text = config.text
  words = lambda n: rng.integers(_FIRST_TEXT_ID, min(text.vocab_size, config.image_token_id), n)
  text_only = index % 4 == 3
  # Image sizes equal to the grid pinpoints, so the examples cover every anyres grid the config allows.
  size = (0, 0) if text_only else config.grid_pinpoints[rng.integers(len(config.grid_pinpoints))]
  num_image = 0 if text_only else num_image_tokens(size, config)
  before, after, answer = (int(n) for n in rng.integers(2, 9, 3))
  pieces = [[text.bos_token_id], words(before), np.full(num_image, config.image_token_id), words(after),
            words(answer), [text.eos_token_id]]
  length = sum(map(len, pieces))
  if length > seq_len:
    raise ConfigError(f"stand-in example {index} needs {length} tokens ({num_image} for its image); "
                      f"data.seq_len is {seq_len}")
  input_ids = np.zeros(seq_len, np.int32)
  input_ids[:length] = np.concatenate(pieces)
  attention_mask = np.arange(seq_len) < length
  loss_mask = attention_mask & (np.arange(seq_len) >= length - answer - 1)
  tile = config.vision.image_size
  pixel_values = np.zeros((config.max_views, 3, tile, tile), np.float32)
  if not text_only:
    views = num_views(size, config)
    pixel_values[:views] = rng.standard_normal((views, 3, tile, tile), np.float32)
  layout = (np.zeros(max_image_tokens(config), np.int32) if text_only
            else feature_layout(np.array([size]), config)[0])
  return dict(input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask, pixel_values=pixel_values,
              layout=layout, image_sizes=np.asarray(size, np.int32), example_id=np.int64(index))


def standin_dataset(config: PulseConfig, *, num_examples: int, seq_len: int, seed: int) -> grain.MapDataset:
  """A grain MapDataset of `num_examples` stand-in examples, generated on access."""
  return grain.MapDataset.range(num_examples).map(
      functools.partial(standin_example, config=config, seq_len=seq_len, seed=seed))
