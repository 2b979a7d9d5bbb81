"""ECGInstruct -> training batches: tfds.data_source -> grain -> anyres tiles + llava_v1 tokens -> padded batches.

  per mixture split: tfds.data_source (array_record, random access)
      -> this process's share (examples p, p + P, ... of P processes)
      -> shuffle (reshuffled every epoch) -> repeat
  -> mix the splits by weight
  -> decode the image, anyres views, llava_v1 ids and loss mask (PreprocessExample; bad examples skipped, counted)
  -> batch, right-padded to the shortest length bucket that fits the batch's longest example
  -> in `data.workers` worker processes (grain mp_prefetch), or in this process when 0.

The result is a grain DatasetIterator of host batches (dicts of numpy arrays, this process's rows of the global
batch): pulse_jax.parallel.global_batch turns one into global jax.Arrays (make_array_from_process_local_data),
after agree_on_length on several processes (their buckets may differ). Its position is checkpointable
(get_state / set_state, or grain.checkpoint.CheckpointSave / CheckpointRestore inside an Orbax Composite): a
restored iterator continues with exactly the next batch. Each bucket length compiles the train step once.

A batch (B rows, T = a bucket length, V = config.max_views, S = tile size, F = max_image_tokens(config)):
  input_ids      int32[B, T]           <s>, prompt, one image placeholder per image feature, answers, </s>; padding
  attention_mask bool[B, T]            True for real tokens (right padding)
  loss_mask      bool[B, T]            True on the answer tokens and their </s>
  pixel_values   float32[B, V, 3, S, S] global view + anyres tiles, CLIP-normalised; views past the image's are 0
  layout         int32[B, F]           pulse_jax.models.llava.feature_layout of the image sizes
  image_sizes    int32[B, 2]           (height, width) of the images in px
  example_id     int64[B]              a stable 63-bit hash of the example's id, to audit data order (host only:
                                       JAX's default 32-bit mode would truncate it on device)

Mixtures. A training run reads the splits named in `data.mixture` ({split: weight}); ECGInstruct's splits are its
collections (ptbxl, mimic, code15, and ecgqa when released). An example of split s is drawn at a rate
proportional to its weight w_s, so the share of s is w_s n_s / sum(w n): all weights 1 is the union in natural
proportions (one epoch = every example once), weight 0 leaves a split out, 2 doubles it. The paper's ablations
are one override each: P = {ptbxl: 1}, P+M = {ptbxl: 1, mimic: 1}, P+M+C, and all four. A key "<split>:labelled"
mixes in only that split's examples with gold labels (ECGInstruct's label-list questions, the benchmarks'
abnormality-detection format) as a part of its own: {code15:labelled: 1} trains on nothing else (the demo's
alignment stage), {ptbxl: 1, mimic: 1, code15: 1, code15:labelled: 2} counts CODE-15%'s label lists three times.

Config keys (config.data, beside the trainer's seq_len and seed): builder ("ecg_instruct/synthetic"), data_dir
(TFDS data_dir; "" for the TFDS default), tokenizer (the SentencePiece model; its piece count must equal the
model's image_token_id), mixture, eval_split, buckets (padded lengths besides seq_len), workers.
"""

import dataclasses
import functools
import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from pulse_jax.data import label_index
from pulse_jax.data.conversation import encode_conversation
from pulse_jax.data.examples import conversations_of, decode_text
from pulse_jax.data.image_processor import for_model, load_image, preprocess
from pulse_jax.data.tokenizer import Tokenizer
from pulse_jax.ecg.skips import SkipCounter
from pulse_jax.errors import ConfigError, DataError, ImageError
from pulse_jax.models.config import PulseConfig
from pulse_jax.models.llava import feature_layout, num_image_tokens

_logger = logging.getLogger(__name__)

# Threads per process that read and preprocess examples ahead of the batcher. They buffer at most one batch
# (an example is ~7 MB of pixel_values at PULSE's 5 x 336 px views; grain's default buffer of 500 is 3.4 GB).
_READ_THREADS = 2


def example_hash(example_id: str) -> int:
  """A stable non-negative int64 for an example id (blake2b, 63 bits)."""
  return int.from_bytes(hashlib.blake2b(example_id.encode(), digest_size=8).digest(), "little") >> 1


def source(data: Mapping[str, Any], split: str) -> Sequence[dict[str, Any]]:
  """Random access to one split of `data.builder` in `data.data_dir` (built beforehand: pulse-jax build-data)."""
  try:
    return tfds.data_source(data["builder"], split=split, data_dir=data["data_dir"] or None)
  except (ValueError, FileNotFoundError) as e:  # unknown dataset (DatasetNotFoundError) or split
    raise ConfigError(f"cannot open split {split!r} of {data['builder']!r} in data_dir {data['data_dir']!r}: "
                      f"{str(e).splitlines()[0]} (build it with `pulse-jax build-data`)") from e


def mixture_weights(data: Mapping[str, Any]) -> dict[str, float]:
  """The splits with a positive weight in `data.mixture` (ConfigError if none, or a weight is negative)."""
  weights = {str(split): float(weight) for split, weight in dict(data["mixture"]).items()}
  if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
    raise ConfigError(f"data.mixture {weights} needs non-negative weights, at least one positive")
  return {split: w for split, w in weights.items() if w > 0}


LABELLED = ":labelled"  # a mixture key "<split>:labelled" draws from that split's labelled examples only


class Labelled(Sequence):
  """The examples of a data source that have gold labels (ECGInstruct's label-list questions, whose answers are
  the benchmarks' abnormality-detection format), in source order; found through the index the build saved
  (pulse_jax.data.label_index)."""

  def __init__(self, examples: Sequence[Mapping[str, Any]]):
    self.examples = examples
    self.indices = label_index.labelled_indices(examples)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    return self.examples[int(self.indices[index])]


def training_splits(data: Mapping[str, Any], weights: Mapping[str, float]) -> dict[str, Sequence[dict[str, Any]]]:
  """The examples behind each mixture key of `weights`: a split's, or for "<split>:labelled" its labelled ones."""
  splits = {}
  for key in weights:
    split = key.removesuffix(LABELLED)
    splits[key] = Labelled(source(data, split)) if key != split else source(data, split)
    if key != split and not len(splits[key]):
      raise ConfigError(f"data.mixture key {key!r}: split {split!r} of {data['builder']!r} holds no example with "
                        "gold labels (label-list questions)")
  return splits


def epoch_size(splits: Mapping[str, Sequence], weights: Mapping[str, float]) -> int:
  """Examples in one epoch of a mixture: sum of weight x split size (all processes together)."""
  return round(sum(w * len(splits[split]) for split, w in weights.items()))


def mixed_examples(splits: Mapping[str, Sequence[dict[str, Any]]], weights: Mapping[str, float], *,
                   seed: int | None, process_index: int, process_count: int,
                   dataset: str | None = None) -> grain.MapDataset:
  """This process's stream of raw examples (as tfds.data_source returns them) from `splits` (training_splits): each
  sharded, shuffled per epoch (unless seed is None), repeated forever, and mixed at rates proportional to weight
  (see module docstring). `dataset` names the data in the error raised when a split has no example for this
  process (ConfigError)."""
  parts, rates = [], []
  for index, (split, weight) in enumerate(sorted(weights.items())):
    part = grain.MapDataset.source(splits[split])[process_index::process_count]
    if len(part) == 0:
      raise ConfigError(f"{f'{dataset}: ' if dataset else ''}split {split!r} holds {len(splits[split])} "
                        f"example(s), none for process {process_index} of {process_count}; every process needs one "
                        "(build more data, or drop the split from data.mixture)")
    if seed is not None:
      part = part.shuffle(seed=seed * 1009 + index)
    parts.append(part.repeat())
    rates.append(weight * len(part))
  return grain.MapDataset.mix(parts, rates) if len(parts) > 1 else parts[0]


class PreprocessExample:
  """One raw example -> one unpadded training example (the batch fields, one row), or None to skip it.

  Skipped, counted in `skipped` (per process) and logged with the example id: malformed conversations (no <image>,
  roles out of order, empty answer...), conversations whose image does not fit seq_len, undecodable images.
  Picklable for grain's worker processes: the tokenizer is loaded where it is first used.
  """

  def __init__(self, config: PulseConfig, tokenizer_path: str, seq_len: int):
    self.config = config
    self.tokenizer_path = tokenizer_path
    self.seq_len = seq_len
    self.image_config = for_model(config)
    self.skipped = SkipCounter()

  @functools.cached_property
  def tokenizer(self) -> Tokenizer:
    return Tokenizer(self.tokenizer_path)

  def __getstate__(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k != "tokenizer"}

  def __call__(self, example: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    example_id = decode_text(example["id"])
    try:
      image = preprocess(load_image(example["image"]), self.image_config, name=example_id)
      encoded = encode_conversation(conversations_of(example), self.tokenizer,
                                    num_image_tokens=num_image_tokens(image.image_size, self.config),
                                    max_length=self.seq_len, record_id=example_id)
    except (DataError, ImageError) as e:
      self.skipped.add(example_id, e)
      _logger.warning("skipping example %s: %s", example_id, e)
      return None
    tile = self.config.vision.image_size
    pixel_values = np.zeros((self.config.max_views, 3, tile, tile), np.float32)
    pixel_values[:len(image.pixel_values)] = image.pixel_values
    return {"input_ids": encoded.input_ids, "loss_mask": encoded.loss_mask, "pixel_values": pixel_values,
            "layout": feature_layout(np.array([image.image_size]), self.config)[0],
            "image_sizes": np.asarray(image.image_size, np.int32), "example_id": np.int64(example_hash(example_id))}


def bucket_lengths(seq_len: int, buckets: Sequence[int]) -> tuple[int, ...]:
  """The padded lengths a batch may have: the configured buckets below seq_len, and seq_len."""
  return tuple(sorted({int(b) for b in buckets if 0 < int(b) < seq_len} | {seq_len}))


def pad_batch(examples: Sequence[Mapping[str, np.ndarray]], *, buckets: Sequence[int], pad_id: int) -> dict:
  """Stacks examples into a batch, input_ids and loss_mask right-padded to the shortest bucket >= the longest."""
  longest = max(len(e["input_ids"]) for e in examples)
  length = next(b for b in buckets if b >= longest)
  input_ids = np.full((len(examples), length), pad_id, np.int32)
  attention_mask = np.zeros((len(examples), length), bool)
  loss_mask = np.zeros((len(examples), length), bool)
  for row, example in enumerate(examples):
    n = len(example["input_ids"])
    input_ids[row, :n], attention_mask[row, :n], loss_mask[row, :n] = example["input_ids"], True, example["loss_mask"]
  stacked = {name: np.stack([e[name] for e in examples])
             for name in ("pixel_values", "layout", "image_sizes", "example_id")}
  return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask, **stacked}


def pad_tokens(batch: Mapping[str, np.ndarray], length: int, pad_id: int) -> dict[str, np.ndarray]:
  """`batch` with input_ids (pad_id), attention_mask and loss_mask (False) right-padded to `length` tokens."""
  widths = ((0, 0), (0, length - batch["input_ids"].shape[1]))
  return {**batch, "input_ids": np.pad(batch["input_ids"], widths, constant_values=pad_id),
          "attention_mask": np.pad(batch["attention_mask"], widths), "loss_mask": np.pad(batch["loss_mask"], widths)}


def agree_on_length(batch: Mapping[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
  """`batch` padded to the longest of all processes' batches of this step, which a global array needs (each
  process picks its own bucket). One small all-gather per step; nothing to do on a single process."""
  if jax.process_count() == 1:
    return dict(batch)
  lengths = multihost_utils.process_allgather(np.int32(batch["input_ids"].shape[1]))
  return pad_tokens(batch, int(np.max(lengths)), pad_id)


@dataclasses.dataclass
class Batches:
  """A batch iterator and what it was built from.

  Attributes:
    iterator: the grain DatasetIterator of host batches; checkpoint this.
    epoch_size: examples per epoch over all processes (sum of weight x split size).
    pad_id: the padding token (for agree_on_length).
    preprocess: the per-example transform; its `skipped` counts this process's skips (with workers = 0).
  """
  iterator: grain.DatasetIterator
  epoch_size: int
  pad_id: int
  preprocess: PreprocessExample


def batches(data: Mapping[str, Any], config: PulseConfig, *, split: str, batch_size: int, seed: int | None,
            process_index: int | None = None, process_count: int | None = None) -> Batches:
  """This process's batches of `batch_size` rows.

  Args:
    data: the experiment config's data section (module docstring).
    config: the model config (tile size, grid pinpoints, image_token_id, max_views).
    split: "train" (the data.mixture splits) or "eval" (data.eval_split).
    batch_size: rows per batch on this process (the global batch / process count).
    seed: shuffles every split differently each epoch; None keeps file order (evaluation).
    process_index, process_count: this process and how many share the data (default: JAX's).
  """
  tokenizer = Tokenizer(data["tokenizer"])
  if tokenizer.image_token_id != config.image_token_id:
    raise ConfigError(f"tokenizer {data['tokenizer']} has {tokenizer.image_token_id} pieces, so its <image> id is "
                      f"{tokenizer.image_token_id}; the model's image_token_id is {config.image_token_id}")
  weights = mixture_weights(data) if split == "train" else {data["eval_split"]: 1.0}
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  transform = PreprocessExample(config, data["tokenizer"], int(data["seq_len"]))
  splits = training_splits(data, weights)
  stream = mixed_examples(splits, weights, seed=seed, process_index=process_index, process_count=process_count,
                          dataset=data["builder"])
  read = grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=max(2, batch_size))
  pipeline = stream.map(transform).to_iter_dataset(read).batch(
      batch_size, drop_remainder=True, batch_fn=functools.partial(
          pad_batch, buckets=bucket_lengths(int(data["seq_len"]), data["buckets"]), pad_id=tokenizer.pad_id))
  if int(data["workers"]) > 0:
    pipeline = pipeline.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(data["workers"])))
  return Batches(iterator=iter(pipeline), epoch_size=epoch_size(splits, weights), pad_id=tokenizer.pad_id,
                 preprocess=transform)
