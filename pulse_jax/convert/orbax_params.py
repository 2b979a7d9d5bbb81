"""Converted checkpoints: a model's parameters in the Orbax layout of training checkpoints (pulse_jax.checkpoint).

A converted checkpoint CKPT is laid out like a training run's checkpoints/ folder, without optimizer or data state:
  CKPT/0/state/          {"params": ...}, the plain dict of nnx.to_pure_dict (keyed by module path, stacked
                         layers as one array), written by Orbax (the PyTree format of checkpoint.py) with the model's
                         configuration as the item's custom metadata: {"model": the fields of a config's `model`
                         section}, so `pulse_jax.config.model_config` rebuilds the PulseConfig;
  CKPT/tokenizer.model   the source checkpoint's SentencePiece model, when it had one.
Everything that reads the parameters of training checkpoints therefore reads it: evaluation and chat
(pulse_jax.checkpoint.restore_params: a partial restore of "params", each device reading only its shard of the mesh it
restores onto, cast to the wanted dtype), and `restore` below. Arrays are stored in chunks of at most CHUNK_BYTES,
so a device restoring its shard on a large mesh reads about its share rather than whole stacked arrays (one
stacked MLP weight of a 7B model is 5.8 GB in float32). Writing holds about one copy of the weights (`save`).
"""

import dataclasses
import pathlib
import shutil
from collections.abc import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from pulse_jax import checkpoint
from pulse_jax.convert import hf
from pulse_jax.data.tokenizer import MODEL_FILE_NAME
from pulse_jax.errors import ConversionError
from pulse_jax.models.config import PulseConfig

STEP = 0  # a converted checkpoint is where fine-tuning starts
CHUNK_BYTES = 64 * 2**20


def save(directory: str | pathlib.Path, params: Mapping, config: PulseConfig, *,
         tokenizer: pathlib.Path | None = None) -> None:
  """Writes `params` (a pure dict of numpy arrays) and `config` as the converted checkpoint `directory`.

  Raises:
    ConversionError: `directory` exists and is not empty (a checkpoint is never overwritten).
  """
  directory = pathlib.Path(directory)
  if directory.exists() and any(directory.iterdir()):
    raise ConversionError(f"{directory} already exists and is not empty; choose a new folder for the checkpoint")
  # About one copy of the weights: by default Orbax copies numpy arrays first (so that a caller may change them
  # during an asynchronous save; this one is synchronous), writes up to 96 GB at once and gathers 2 GiB data files
  # in memory. Here nothing is copied, 1 GB is in flight and data files are CHUNK_BYTES.
  handler = ocp.PyTreeCheckpointHandler(
      save_concurrent_gb=1, type_handler_registry=ocp.type_handlers.create_type_handler_registry(
          (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False))))
  manager = ocp.CheckpointManager(directory.absolute(), item_handlers={checkpoint.STATE: handler},
                                  options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False))
  state = {"params": params}
  manager.save(STEP, args=ocp.args.Composite(**{checkpoint.STATE: ocp.args.PyTreeSave(
      state, save_args=jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), state),
      custom_metadata={checkpoint.MODEL_METADATA_KEY: dataclasses.asdict(config)}, ocdbt_target_data_file_size=CHUNK_BYTES)}))
  manager.close()
  if tokenizer is not None:
    shutil.copyfile(tokenizer, directory / MODEL_FILE_NAME)


def restore(path: str | pathlib.Path, config: PulseConfig | None = None) -> tuple[dict, PulseConfig, pathlib.Path]:
  """The parameters of a converted or training checkpoint, on the host (numpy, in config.param_dtype).

  Args:
    path: a converted checkpoint, a training workdir, its checkpoints/ folder or one step folder (the latest step
      is taken, as pulse_jax.checkpoint.orbax_step_dir picks it).
    config: the model; None takes the configuration stored with a converted checkpoint.

  Returns:
    (params as a pure dict, the config, the step folder read).

  Raises:
    ConversionError: no config given for a checkpoint that stores none.
    CheckpointError: no checkpoint at `path`, or parameters that do not fit `config`.
  """
  step_dir = checkpoint.orbax_step_dir(pathlib.Path(path))
  config = config or checkpoint.stored_config(step_dir)
  if config is None:
    raise ConversionError(f"{step_dir} is a training checkpoint, which stores no model configuration: pass the "
                          "run's --config")
  return checkpoint.restore_params(step_dir, hf.abstract_params(config)), config, step_dir
