"""Which examples of a built split carry gold labels, saved once beside the data.

A mixture key "<split>:labelled" (pulse_jax.data.pipeline) trains on the examples of a split whose `labels` are
not empty (ECGInstruct's label-list questions). Finding them means reading every example, image bytes and all:
~0.4 ms each, minutes for the released ECGInstruct's CODE-15% questions, on every host at every (re)start of a
run. So the builders write the answer when they build (EcgDatasetBuilder.download_and_prepare, which also writes
it for a dataset built before this file existed), as `labelled-<split>.npy` in the dataset's version folder: the
int64 positions, ascending, of the split's labelled examples. A run reads that file and falls back to reading the
examples, with a warning, where it is missing (a dataset built by an earlier pulse-jax, or one whose folder was
read-only) or does not fit the split.
"""

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from pulse_jax import processes

_logger = logging.getLogger(__name__)

# Examples one worker reads as a unit when an index is written (~8 s of reading each).
EXAMPLES_PER_CHUNK = 20_000


def index_path(version_dir: epath.PathLike, split: str) -> epath.Path:
  return epath.Path(version_dir) / f"labelled-{split}.npy"


def scan(examples: Sequence[Mapping[str, Any]], start: int = 0, stop: int | None = None) -> np.ndarray:
  """int64 positions in [start, stop) of the examples with labels, read one by one."""
  stop = len(examples) if stop is None else stop
  return np.array([i for i in range(start, stop) if len(examples[i]["labels"])], np.int64)


def _scan_chunk(version_dir: str, split: str, start: int, stop: int) -> np.ndarray:
  """scan() of one chunk of a split, in a worker process that opens the built dataset itself."""
  return scan(tfds.builder_from_directory(version_dir).as_data_source(split), start, stop)


def write(builder: tfds.core.DatasetBuilder) -> list[epath.Path]:
  """Writes the index of every split of a built dataset that lacks one (atomically: a run never reads half a
  file); the paths written. Splits are read in chunks over this machine's cores. A folder that cannot be written
  is warned about, not an error: the dataset is usable without the index."""
  if "labels" not in builder.info.features:
    return []
  version_dir = str(builder.data_dir)
  written = []
  with processes.Workers() as workers:
    for split, info in builder.info.splits.items():
      path = index_path(version_dir, split)
      if path.exists():
        continue
      chunks = [(version_dir, split, start, min(start + EXAMPLES_PER_CHUNK, info.num_examples))
                for start in range(0, info.num_examples, EXAMPLES_PER_CHUNK)]
      partial = path.with_name(f"{path.name}.incomplete-{os.getpid()}")
      try:
        with partial.open("wb") as f:  # opened first: a read-only folder is found before the split is read
          np.save(f, np.concatenate([np.zeros(0, np.int64), *workers.map(_scan_chunk, chunks)]))
        partial.rename(path)
      except OSError as e:  # a read-only dataset folder: runs will read the split instead
        _logger.warning("cannot save the index of the labelled examples of split %r at %s: %s", split, path, e)
        return written
      finally:
        if partial.exists():  # a failed write leaves nothing behind
          partial.unlink()
      written.append(path)
  return written


def read(path: epath.Path, num_examples: int) -> np.ndarray:
  """The index at `path` for a split of `num_examples`; ValueError saying what is wrong when it does not fit."""
  with path.open("rb") as f:
    try:
      indices = np.load(f, allow_pickle=False)
    except (ValueError, EOFError) as e:  # not a .npy file, or a truncated one
      raise ValueError(f"cannot be read as an array: {e}") from e
  if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
    raise ValueError(f"holds {indices.dtype}{list(indices.shape)}, not a list of positions")
  if len(indices) and (indices[0] < 0 or indices[-1] >= num_examples or np.any(np.diff(indices) <= 0)):
    raise ValueError(f"is not a set of ascending positions below the split's {num_examples} examples")
  return indices.astype(np.int64)


def labelled_indices(examples: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """int64 positions of the labelled examples of `examples`: a split as tfds.data_source returns it (its saved
  index when there is a good one) or any sequence of examples (read one by one)."""
  info, split = getattr(examples, "dataset_info", None), getattr(examples, "split", None)
  if info is None or not isinstance(split, str):
    return scan(examples)
  path = index_path(info.data_dir, split)
  try:
    return read(path, len(examples))
  except FileNotFoundError:
    problem = "there is none"
  except ValueError as e:
    problem = f"it {e}"
  _logger.warning("no usable index of the labelled examples of split %r at %s (%s): reading all %d examples "
                  "(~0.4 ms each); `pulse-jax build-data` on this dataset writes it", split, path, problem,
                  len(examples))
  return scan(examples)
