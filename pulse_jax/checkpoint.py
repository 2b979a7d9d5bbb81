"""Training checkpoints: Orbax, model state and data-iterator position together, resumable on any mesh.

Layout of `DIR/<step>/` (written atomically by Orbax: a step directory appears only once complete):
  state/  the train state as a plain dict {"params": ..., "opt_state": ..., "step": ...} of arrays, where
          params and opt_state are nested dicts keyed by module path (nnx.to_pure_dict): no class names, so any
          program that can build the same dict can read it;
  data/   the grain iterator's position, one JSON file per process (process_<i>-of-<n>.json).

Saves are asynchronous (the arrays are copied to host memory before `save` returns, so the next step may
overwrite the device buffers) and the last `keep` are kept. Restoring reads into an abstract target whose
leaves carry the *current* mesh's shardings, so a run may resume on a different mesh or slice count. A latest
checkpoint that cannot be read (truncated or deleted files) is moved aside to `<step>.unreadable` and the one
before it is used, with a warning; a checkpoint that reads fine but does not fit the current model is an error.
"""

import dataclasses
import logging
import os
import signal
from collections.abc import Mapping

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from pulse_jax.config import model_config
from pulse_jax.convert import hf
from pulse_jax.errors import CheckpointError
from pulse_jax.models.config import PulseConfig

_logger = logging.getLogger(__name__)

STATE, DATA = "state", "data"
MODEL_METADATA_KEY = "model"  # a converted checkpoint's model configuration, in state/'s custom metadata


class Checkpointer:
  """Periodic, asynchronous saving of (train state, data iterator) and restoring the latest readable pair."""

  def __init__(self, directory: str, *, keep: int):
    self.directory = epath.Path(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={STATE: ocp.StandardCheckpointHandler(), DATA: grain.checkpoint.CheckpointHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True))

  def save(self, step: int, state: Mapping, data_iterator: grain.DatasetIterator) -> None:
    """Starts saving `state` (the train-state dict) and the iterator's position as checkpoint `step`."""
    self._manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state), DATA: grain.checkpoint.CheckpointSave(data_iterator)}))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_latest(self, abstract_state, data_iterator: grain.DatasetIterator) -> tuple[dict, int] | None:
    """(state, step) from the newest readable checkpoint, with `data_iterator` moved to its position in place.

    Args:
      abstract_state: the train-state dict as jax.ShapeDtypeStructs carrying the target shardings.
      data_iterator: a fresh iterator over the same data; its position is restored in place.

    Returns None when the directory holds no checkpoint. Unreadable checkpoints are moved aside, newest first.
    Raises CheckpointError when a readable checkpoint does not match abstract_state or this process count.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      self._check_compatible(step, abstract_state)
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state), DATA: grain.checkpoint.CheckpointRestore(data_iterator)}))
      except Exception as e:  # Orbax/tensorstore raise many types (ValueError, OSError, JSON errors) for bad files.
        self._set_aside(step, e)
        continue
      return dict(restored[STATE]), step
    return None

  def _check_compatible(self, step: int, abstract_state) -> None:
    """Raises CheckpointError if checkpoint `step` is readable but holds a different tree or process count."""
    path = self.directory / str(step)
    data_file = path / DATA / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    written = sorted(p.name for p in (path / DATA).glob("process_*.json"))
    if written and not data_file.exists():
      raise CheckpointError(f"checkpoint {path} was written by a different number of processes ({written[0]} ...); "
                            f"resume with the same number of processes ({jax.process_count()} now)")
    try:
      stored = self._manager.item_metadata(step)[STATE].tree
    except Exception:  # Unreadable metadata: the restore attempt that follows reports and sets it aside.
      return
    stored_shapes = {_key(key): tuple(leaf.shape) for key, leaf in jax.tree_util.tree_leaves_with_path(stored)}
    wanted_shapes = {_key(key): tuple(leaf.shape)
                     for key, leaf in jax.tree_util.tree_leaves_with_path(abstract_state)}
    if stored_shapes != wanted_shapes:
      differing = sorted((k for k in stored_shapes.keys() | wanted_shapes.keys()
                          if stored_shapes.get(k) != wanted_shapes.get(k)), key=lambda k: (k.startswith("opt"), k))
      details = ", ".join(f"{k}: stored {stored_shapes.get(k)} vs model {wanted_shapes.get(k)}"
                          for k in differing[:3])
      raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer ({len(differing)} arrays "
                            f"differ: {details}); was it written with another config?")

  def _set_aside(self, step: int, error: Exception) -> None:
    path = self.directory / str(step)
    aside = self.directory / f"{step}.unreadable"
    copies = 1
    while aside.exists():  # the step was written again after an earlier fallback, and is unreadable again
      aside, copies = self.directory / f"{step}.unreadable.{copies}", copies + 1
    remaining = [s for s in self._manager.all_steps() if s < step]
    fallback = f"falling back to step {max(remaining)}" if remaining else "no earlier checkpoint; starting afresh"
    _logger.warning("checkpoint %s is unreadable (%s: %s); moved to %s, %s", path, type(error).__name__,
                    str(error).splitlines()[0][:300], aside, fallback)
    if jax.process_index() == 0:
      path.rename(aside)
    multihost_utils.sync_global_devices(f"pulse_jax set aside checkpoint {step}")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """True at the step every process agrees to save at after a preemption notice (multi-process runs)."""
    return self._manager.reached_preemption(step)

  def close(self) -> None:
    self._manager.close()


def _key(path) -> str:
  """A tree path as a dotted string, the same for int keys (in memory) and str keys (stored metadata)."""
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


class PreemptionWatch:
  """Notices SIGTERM (how TPU VMs, SLURM and Kubernetes announce preemption) so the loop can save and stop.

  In a single process the handler sets a flag. In multi-process runs JAX's own preemption service receives the
  signal and all processes agree on a step to stop at (Checkpointer.reached_preemption); installing a Python
  handler there would hide the signal from it, so none is installed.
  """

  def __init__(self):
    self.signalled = False
    self._previous = None

  def __enter__(self) -> "PreemptionWatch":
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.signalled = True


def is_hf_folder(path: epath.Path) -> bool:
  """Whether `path` is a transformers checkpoint folder (it holds config.json)."""
  return (path / "config.json").is_file()


def stored_config(step_dir: epath.Path) -> PulseConfig | None:
  """The model configuration an Orbax step folder stores: a converted checkpoint's (pulse_jax.convert.orbax_params
  writes it as the state item's custom metadata); None for a training checkpoint, which stores none."""
  metadata = ocp.StandardCheckpointHandler().metadata(step_dir / STATE).custom_metadata or {}
  if MODEL_METADATA_KEY not in metadata:
    return None
  return model_config(ml_collections.ConfigDict(metadata[MODEL_METADATA_KEY]))


def load_params(path: str | os.PathLike, config: PulseConfig, shardings: Mapping) -> tuple[dict, epath.Path]:
  """The parameters (only) of any checkpoint of `config`'s model, placed with `shardings`; and what was read.

  `path` is a local transformers LLaVA-NeXT folder (config.json + *.safetensors), or an Orbax checkpoint (local
  or gs://): one written by `pulse-jax convert from-hf / from-llava`, a training workdir, its checkpoints/ folder
  or a step folder (the latest step is taken; the optimizer state is never read). Each device receives just its
  shard (Orbax: reads just it), cast to config.param_dtype, so a 7B model never sits whole on one accelerator.

  Returns:
    (params in the nnx.to_pure_dict layout, the folder read: the Hugging Face folder or the Orbax step folder).

  Raises:
    CheckpointError: no checkpoint at `path`, or one whose architecture (from config.json or a converted
      checkpoint's stored config; shapes otherwise) differs from `config`.
  """
  path = epath.Path(path)  # an Orbax checkpoint may be on gs://
  if is_hf_folder(path):
    if "://" in str(path):
      raise CheckpointError(f"{path}: a Hugging Face folder is read from a local disk: copy it first "
                            "(gcloud storage cp -r)")
    cpu = jax.local_devices(backend="cpu")[0]
    with jax.default_device(cpu):
      model, imported = hf.load(path, merge_mode=config.merge_mode, param_dtype=config.param_dtype)
    _check_architecture(path, imported, config)
    host = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    return jax.tree.map(
        lambda array, sharding: jax.make_array_from_callback(array.shape, sharding, lambda index: array[index]),
        host, dict(shardings)), path
  step_dir = orbax_step_dir(path)
  stored = stored_config(step_dir)
  if stored is not None:
    _check_architecture(step_dir, stored, config)
  target = jax.tree.map(lambda a, sharding: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        hf.abstract_params(config), dict(shardings))
  return restore_params(step_dir, target), step_dir


def _check_architecture(path: epath.Path, stored: PulseConfig, config: PulseConfig) -> None:
  differing = _architecture_differences(stored, config)
  if differing:
    raise CheckpointError(f"{path} does not hold the configured model (checkpoint vs config: "
                          f"{'; '.join(differing)})")


def _architecture_differences(imported: PulseConfig, config: PulseConfig) -> list[str]:
  """'field: imported vs configured' for every architecture field that differs (dtypes and remat may)."""
  pairs = [(f"{part}.{field.name}", getattr(getattr(imported, part), field.name),
            getattr(getattr(config, part), field.name))
           for part in ("vision", "text") for field in dataclasses.fields(getattr(config, part))]
  pairs += [(name, getattr(imported, name), getattr(config, name))
            for name in ("image_token_id", "projector_hidden_act", "projector_bias")]
  return [f"{name}: {a!r} vs {b!r}" for name, a, b in pairs if a != b]


def orbax_step_dir(path: epath.Path) -> epath.Path:
  """The Orbax step folder `path` names: itself (it holds state/), or the latest step in it or its checkpoints/.

  Raises:
    CheckpointError: `path` holds no checkpoint.
  """
  if (path / STATE).is_dir():
    return path
  for folder in (path, path / "checkpoints"):
    steps = [int(p.name) for p in folder.glob("*") if p.name.isdigit() and (p / STATE).is_dir()]
    if steps:
      return folder / str(max(steps))
  raise CheckpointError(f"{path}: no checkpoint: expected a Hugging Face folder (config.json + *.safetensors), an "
                        "Orbax step folder (<step>/state), or a training workdir or checkpoints/ folder holding steps")


def restore_params(step_dir: epath.Path, abstract_params: Mapping) -> dict:
  """The parameters of an Orbax training checkpoint (pulse_jax.checkpoint layout), without its optimizer state.

  Args:
    step_dir: DIR/<step>, holding state/ = {"params", "opt_state", "step"}.
    abstract_params: the params tree (nnx.to_pure_dict layout) as jax.ShapeDtypeStructs with the target shardings
      and dtypes: each device reads only its shard, cast to the target dtype (so bfloat16 inference works from
      float32 training weights).
  """
  target = {"params": abstract_params}
  reader = ocp.PyTreeCheckpointer()
  try:
    restored = reader.restore(step_dir / STATE, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
  except Exception as e:  # Orbax/tensorstore raise many types (ValueError, OSError, ...) for bad or foreign files.
    raise CheckpointError(f"{step_dir}: cannot restore the parameters ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:300]}); was it written with another model config?") from e
  finally:
    reader.close()
  return restored["params"]
