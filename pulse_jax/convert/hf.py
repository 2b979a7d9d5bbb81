"""Hugging Face LLaVA-NeXT checkpoints (config.json + safetensors) in and out of PulseModel.

Parameter names mirror transformers', so conversion is a reversible name rule plus transposes:
  * our path           -> canonical HF name (transformers >= 4.52 layout, `model.language_model.*`);
  * kernel [in, out]   -> weight [out, in]; conv kernel [kh, kw, in, out] -> weight [out, in, kh, kw];
  * scale / embedding  -> weight;
  * stacked layers [L, ...] <-> one tensor per layer (`...layers.{i}...`).
Older checkpoints (`language_model.model.*`, `vision_tower.vision_model.*`, top-level `multi_modal_projector.*`)
are mapped onto the canonical names first; other formats (pulse_jax.convert.llava_original) bring their own
renaming onto the same canonical names. Only safetensors are read: a pickle-based file is never opened.

Reading and writing stream: `read_params` copies one tensor at a time out of the memory-mapped files into its
parameter, and `write_safetensors` holds one output shard at a time, so converting a 7B model needs about one
copy of its weights in host memory.
"""

import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from pulse_jax.errors import ConversionError
from pulse_jax.models.config import PulseConfig, TextConfig, VisionConfig
from pulse_jax.models.llava import PulseModel

# Legacy prefix -> canonical prefix, tried in order (the first match wins).
_LEGACY_PREFIXES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("image_newline", "model.image_newline"),
)
# Our module path prefix -> canonical HF prefix; "{i}" marks a stacked-layer axis.
_PATH_PREFIXES = (
    (("vision_tower", "layers"), "model.vision_tower.encoder.layers.{i}."),
    (("vision_tower",), "model.vision_tower."),
    (("multi_modal_projector",), "model.multi_modal_projector."),
    (("language_model", "model", "layers"), "model.language_model.layers.{i}."),
    (("language_model", "model"), "model.language_model."),
    (("language_model", "lm_head"), "lm_head."),
    ((), "model."),  # image_newline
)
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
# Axis order of a torch weight in terms of our kernel's axes: Linear [in, out] -> [out, in]; the patch
# convolution [kh, kw, in, out] -> [out, in, kh, kw].
_KERNEL_TO_HF = {2: (1, 0), 4: (3, 2, 0, 1)}

# transformers' own default shard size for save_pretrained in the 4.x series: files small enough for any hub.
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
SAFETENSORS_INDEX = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_DTYPES = ("float32", "bfloat16", "float16")

_logger = logging.getLogger(__name__)


def canonical_name(key: str) -> str:
  """Maps any supported HF key layout onto the canonical one."""
  key = key.replace("vision_tower.vision_model.", "vision_tower.")
  if key.startswith(("model.", "lm_head.")):
    return key
  for old, new in _LEGACY_PREFIXES:
    if key.startswith(old):
      return new + key[len(old):]
  return key


def hf_name(path: tuple[str, ...]) -> str:
  """Canonical HF name (with '{i}' for stacked layers) of one of our parameter paths."""
  for prefix, hf_prefix in _PATH_PREFIXES:
    if path[:len(prefix)] == prefix:
      rest = list(path[len(prefix):])
      rest[-1] = _LEAF_NAMES.get(rest[-1], rest[-1])
      return hf_prefix + ".".join(rest)
  raise AssertionError(path)


def _hf_axes(path: tuple[str, ...], ndim: int) -> tuple[int, ...]:
  """The permutation of our axes that gives the torch layout of one (unstacked) tensor."""
  return _KERNEL_TO_HF[ndim] if path[-1] == "kernel" else tuple(range(ndim))


def _to_hf(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """Our layout -> torch layout for one (unstacked) tensor."""
  return value.transpose(_hf_axes(path, value.ndim))


def _from_hf(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  return value.transpose(np.argsort(_hf_axes(path, value.ndim)))


def _hf_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(shape[axis] for axis in _hf_axes(path, len(shape)))


def _is_stacked(path: tuple[str, ...]) -> bool:
  return "layers" in path


def _param_paths(params: Mapping) -> Iterator[tuple[tuple[str, ...], object]]:
  """(module path, leaf) for every leaf of a pure-dict params tree (the nnx.to_pure_dict layout)."""
  for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    yield tuple(str(k.key) for k in keys), leaf


# --------------------------------------------------------------------------------------------------- config


def vision_config_from_hf(vision: Mapping, **fields) -> VisionConfig:
  """VisionConfig from a CLIPVisionConfig dict; absent fields take CLIPVisionConfig's defaults. `fields` are
  the ones the multimodal config decides (feature_layer, feature_select)."""
  return VisionConfig(
      hidden_size=vision.get("hidden_size", 768), intermediate_size=vision.get("intermediate_size", 3072),
      num_layers=vision.get("num_hidden_layers", 12), num_heads=vision.get("num_attention_heads", 12),
      image_size=vision.get("image_size", 224), patch_size=vision.get("patch_size", 32),
      num_channels=vision.get("num_channels", 3), layer_norm_eps=vision.get("layer_norm_eps", 1e-5),
      hidden_act=vision.get("hidden_act", "quick_gelu"), initializer_range=vision.get("initializer_range", 0.02),
      initializer_factor=vision.get("initializer_factor", 1.0), **fields)


def config_from_hf(hf: dict, *, merge_mode: str = "spatial_unpad", **overrides) -> PulseConfig:
  """PulseConfig from a LLaVA-NeXT config.json dict; absent fields take transformers' defaults.

  merge_mode defaults to spatial_unpad, the only mode transformers' LLaVA-NeXT implements; PULSE-7B itself was
  trained in flat mode (pass merge_mode="flat" for it). param_dtype is the checkpoint's own dtype ("dtype", or
  "torch_dtype" before transformers 5), so that a bfloat16 checkpoint stays bfloat16.
  """
  if hf.get("model_type") not in ("llava_next", None):
    raise ConversionError(f"config.json model_type is {hf.get('model_type')!r}, expected 'llava_next'")
  text, vision = hf.get("text_config") or {}, hf.get("vision_config")
  if text.get("model_type", "llama") != "llama":
    raise ConversionError(f"text model {text.get('model_type')!r} is not supported (LLaMA only)")
  if vision is None:  # LlavaNextConfig's own defaults: CLIP ViT-L/14-336.
    vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
              "image_size": 336, "patch_size": 14}
  heads = text.get("num_attention_heads", 32)
  hidden = text.get("hidden_size", 4096)
  rope = text.get("rope_parameters") or {}
  if rope.get("rope_type", "default") != "default" or text.get("rope_scaling"):
    raise ConversionError(f"RoPE scaling {text.get('rope_scaling') or rope} is not supported (plain RoPE only)")
  feature_layer = hf.get("vision_feature_layer", -2)
  if not isinstance(feature_layer, int):
    raise ConversionError(f"vision_feature_layer {feature_layer!r}: only a single layer is supported")
  dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
  if dtype not in _DTYPES:
    raise ConversionError(f"config.json dtype {dtype!r} is not supported; expected one of {_DTYPES}")
  pinpoints = hf.get("image_grid_pinpoints") or [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
  fields = dict(
      vision=vision_config_from_hf(vision, feature_layer=feature_layer,
                                   feature_select=hf.get("vision_feature_select_strategy", "default")),
      text=TextConfig(
          vocab_size=text.get("vocab_size", 32000), hidden_size=hidden,
          intermediate_size=text.get("intermediate_size", 11008), num_layers=text.get("num_hidden_layers", 32),
          num_heads=heads, num_kv_heads=text.get("num_key_value_heads") or heads,
          head_dim=text.get("head_dim") or hidden // heads,
          rope_theta=rope.get("rope_theta", text.get("rope_theta", 10000.0)),
          rms_norm_eps=text.get("rms_norm_eps", 1e-6),
          max_position_embeddings=text.get("max_position_embeddings", 2048),
          hidden_act=text.get("hidden_act", "silu"), bos_token_id=text.get("bos_token_id", 1),
          eos_token_id=text.get("eos_token_id", 2), pad_token_id=text.get("pad_token_id") or 0,
          initializer_range=text.get("initializer_range", 0.02)),
      image_token_id=hf.get("image_token_index", hf.get("image_token_id", 32000)),
      merge_mode=merge_mode,
      grid_pinpoints=tuple(tuple(p) for p in pinpoints),
      projector_hidden_act=hf.get("projector_hidden_act", "gelu"),
      projector_bias=hf.get("multimodal_projector_bias", True),
      param_dtype=dtype)
  return PulseConfig(**{**fields, **overrides})


def config_to_hf(config: PulseConfig) -> dict:
  """The LLaVA-NeXT config.json dict for a PulseConfig (inverse of config_from_hf)."""
  v, t = config.vision, config.text
  return {
      "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
      "image_token_index": config.image_token_id, "image_grid_pinpoints": [list(p) for p in config.grid_pinpoints],
      "projector_hidden_act": config.projector_hidden_act, "multimodal_projector_bias": config.projector_bias,
      "vision_feature_layer": v.feature_layer, "vision_feature_select_strategy": v.feature_select,
      "tie_word_embeddings": False, "dtype": config.param_dtype,
      "image_seq_length": v.tokens_per_view,
      "vision_config": {
          "model_type": "clip_vision_model", "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
          "num_hidden_layers": v.num_layers, "num_attention_heads": v.num_heads, "image_size": v.image_size,
          "patch_size": v.patch_size, "num_channels": v.num_channels, "layer_norm_eps": v.layer_norm_eps,
          "hidden_act": v.hidden_act, "initializer_range": v.initializer_range,
          "initializer_factor": v.initializer_factor},
      "text_config": {
          "model_type": "llama", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
          "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_layers,
          "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads, "head_dim": t.head_dim,
          "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"}, "rms_norm_eps": t.rms_norm_eps,
          "max_position_embeddings": t.max_position_embeddings, "hidden_act": t.hidden_act,
          "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id, "pad_token_id": t.pad_token_id,
          "initializer_range": t.initializer_range, "tie_word_embeddings": False, "attention_bias": False,
          "mlp_bias": False},
  }


def read_config(folder: pathlib.Path, *, merge_mode: str = "spatial_unpad", **overrides) -> PulseConfig:
  """The PulseConfig of a LLaVA-NeXT folder's config.json (see config_from_hf), with the pixel statistics of its
  preprocessor_config.json where it has one (CLIP's otherwise, as LlavaNextImageProcessor's defaults)."""
  config_file = folder / "config.json"
  if not config_file.is_file():
    raise ConversionError(f"{folder}: no config.json")
  processor_file = folder / "preprocessor_config.json"
  processor = json.loads(processor_file.read_text()) if processor_file.is_file() else {}
  statistics = {field: processor[field] for field in ("image_mean", "image_std") if field in processor}
  return config_from_hf(json.loads(config_file.read_text()), merge_mode=merge_mode, **{**statistics, **overrides})


# --------------------------------------------------------------------------------------------------- reading


class TensorSource:
  """Lazy, tensor-at-a-time access to the *.safetensors files of one or more folders, by canonical HF name.

  Each folder's keys are renamed onto canonical names by the rule of its format; a name that an earlier folder
  already provides keeps that source. The files are memory-mapped: a tensor costs memory only once `get` copies
  it out.
  """

  def __init__(self):
    self._where: dict[str, tuple[pathlib.Path, str]] = {}
    self._handles = {}
    self._read: set[str] = set()

  def add_folder(self, folder: pathlib.Path, rename: Callable[[str], str | None] = canonical_name) -> None:
    """Registers every tensor of `folder`'s *.safetensors files under `rename(key)` (None: not a model tensor,
    e.g. the text tower of a full CLIP checkpoint).

    Raises:
      ConversionError: the folder holds no safetensors (pickle files are named and refused), or a file is not
        readable (a truncated file names the first tensor cut off).
    """
    files = sorted(folder.glob("*.safetensors"))
    if not files:
      pickled = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES) if folder.is_dir() else []
      hint = f" (found {', '.join(pickled)}: pickle files are never loaded; convert them to safetensors)" \
          if pickled else ""
      raise ConversionError(f"{folder}: no .safetensors files{hint}")
    for file in files:
      try:
        handle = safe_open(str(file), framework="np")
      except Exception as e:  # safetensors raises its own SafetensorError for truncated/corrupt files.
        raise ConversionError(f"{file}: not a readable safetensors file ({_diagnose(file) or e})") from e
      self._handles[file] = handle
      for key in handle.keys():
        name = rename(key)
        if name is not None:
          self._where.setdefault(name, (file, key))

  def names(self) -> set[str]:
    return set(self._where)

  def unread(self) -> list[str]:
    """Canonical names that no `get` asked for, sorted."""
    return sorted(set(self._where) - self._read)

  def describe(self, name: str) -> str:
    """Where a tensor lives, as '<file>: tensor <key>'."""
    file, key = self._locate(name)
    return f"{file}: tensor {key}"

  def shape(self, name: str) -> tuple[int, ...]:
    """The stored shape, from the file header (nothing is read)."""
    file, key = self._locate(name)
    return tuple(self._handles[file].get_slice(key).get_shape())

  def get(self, name: str) -> np.ndarray:
    file, key = self._locate(name)
    self._read.add(name)
    try:
      return self._handles[file].get_tensor(key)
    except Exception as e:
      raise ConversionError(f"{file}: tensor {key} cannot be read ({e}); is the file truncated?") from e

  def _locate(self, name: str) -> tuple[pathlib.Path, str]:
    if name not in self._where:
      raise ConversionError(f"tensor {name} is missing from the checkpoint")
    return self._where[name]


def _diagnose(file: pathlib.Path) -> str | None:
  """Why a safetensors file does not open, when its header says: a truncation names the first tensor cut off."""
  size = file.stat().st_size
  with file.open("rb") as f:
    prefix = f.read(8)
    if len(prefix) < 8:
      return f"only {size} bytes: shorter than a safetensors header"
    header_size = int.from_bytes(prefix, "little")
    if 8 + header_size > size:
      return f"truncated inside its header ({size} bytes, the header alone needs {8 + header_size})"
    try:
      header = json.loads(f.read(header_size))
    except ValueError:
      return None
  data_size = size - 8 - header_size
  entries = sorted((info["data_offsets"][1], key) for key, info in header.items() if key != "__metadata__")
  for end, key in entries:
    if end > data_size:
      return (f"truncated: tensor {key} ends at byte {end} of the data section, but the file holds only "
              f"{data_size} bytes of data")
  return None


def _abstract_model(config: PulseConfig):
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: PulseModel(config, rngs=nnx.Rngs(0)))


def abstract_params(config: PulseConfig) -> dict:
  """The parameters of a PulseModel for `config` as jax.ShapeDtypeStructs, in the pure-dict layout (no arrays)."""
  return nnx.to_pure_dict(nnx.state(_abstract_model(config)))


def read_params(config: PulseConfig, source: TensorSource, *, to_array: Callable = np.asarray) -> dict:
  """Every parameter of a PulseModel for `config`, read tensor by tensor from `source`.

  Each tensor's stored shape is checked against the model's before it is read, then it is put in our layout,
  cast to config.param_dtype, and stacked layers are written straight into their [L, ...] array. `to_array`
  receives each finished parameter (np.asarray keeps it on the host; jnp.asarray moves it to the default
  device), so about one copy of the weights exists at any time.

  Returns:
    The parameters as a pure dict (nnx.to_pure_dict layout: nested by module path).

  Raises:
    ConversionError: a tensor is missing, unreadable, or has a shape the model does not expect (naming it).
  """
  dtype = np.dtype(config.jnp_param_dtype)

  def read(path_keys, spec):
    path = tuple(str(k.key) for k in path_keys)
    name = hf_name(path)
    if not _is_stacked(path):
      return to_array(_read_tensor(source, name, path, spec.shape, dtype))
    stacked = np.empty(spec.shape, dtype)
    for i in range(spec.shape[0]):
      stacked[i] = _read_tensor(source, name.format(i=i), path, spec.shape[1:], dtype)
    return to_array(stacked)

  params = jax.tree_util.tree_map_with_path(read, abstract_params(config))
  unread = source.unread()
  if unread:
    _logger.warning("%d checkpoint tensor(s) not used by this model (%s mode): %s%s", len(unread),
                    config.merge_mode, ", ".join(unread[:5]), ", ..." if len(unread) > 5 else "")
  return params


def _read_tensor(source: TensorSource, name: str, path: tuple[str, ...], shape: tuple[int, ...],
                 dtype: np.dtype) -> np.ndarray:
  """One stored tensor in our layout and dtype, after checking its stored shape against `shape` (ours)."""
  expected = _hf_shape(path, shape)
  if source.shape(name) != expected:
    raise ConversionError(f"{source.describe(name)}: shape {source.shape(name)}, but this model needs {expected}")
  return np.ascontiguousarray(_from_hf(path, source.get(name)), dtype=dtype)


def build_model(config: PulseConfig, params: Mapping) -> PulseModel:
  """A PulseModel for `config` holding `params` (a pure dict, as read_params or an Orbax restore give it)."""
  graphdef, state = nnx.split(_abstract_model(config))
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def load(path: str | os.PathLike, *, merge_mode: str = "spatial_unpad", **config_overrides
         ) -> tuple[PulseModel, PulseConfig]:
  """Loads a transformers LLaVA-NeXT folder (config.json + *.safetensors) into a PulseModel.

  Tensors are read one at a time and cast to the config's param_dtype (the checkpoint's own unless overridden).
  Every model parameter must be present with the expected shape; checkpoint tensors the model does not use
  (image_newline in flat mode) are reported and ignored.
  """
  folder = pathlib.Path(path)
  config = read_config(folder, merge_mode=merge_mode, **config_overrides)
  source = TensorSource()
  source.add_folder(folder)
  return build_model(config, read_params(config, source, to_array=jnp.asarray)), config


# --------------------------------------------------------------------------------------------------- writing


def hf_tensors(params: Mapping) -> Iterator[tuple[str, np.ndarray]]:
  """(canonical HF name, torch-layout numpy array) for every parameter of a pure-dict params tree, one layer at a
  time (each parameter is fetched to the host as it comes)."""
  for path, value in _param_paths(params):
    value = np.asarray(jax.device_get(value))
    if _is_stacked(path):
      for i in range(value.shape[0]):
        yield hf_name(path).format(i=i), _to_hf(path, value[i])
    else:
      yield hf_name(path), _to_hf(path, value)


def write_safetensors(tensors: Iterable[tuple[str, np.ndarray]], folder: pathlib.Path, *,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
  """Writes named tensors as save_pretrained does: one model.safetensors, or when they exceed max_shard_bytes,
  shards model-00001-of-0000N.safetensors (each at most max_shard_bytes unless one tensor alone is larger) plus
  model.safetensors.index.json mapping every name to its shard. Only the shard being filled is held in memory.

  Raises:
    ConversionError: `folder` already holds safetensors files (they would be mixed with the new ones on reading).
  """
  if max_shard_bytes <= 0:
    raise ConversionError(f"max shard size must be positive, got {max_shard_bytes} bytes")
  folder.mkdir(parents=True, exist_ok=True)
  existing = sorted(p.name for p in folder.glob("*.safetensors"))
  if existing:
    raise ConversionError(f"{folder} already holds {', '.join(existing[:3])}: write to an empty folder")
  shards: list[list[str]] = []
  pending: dict[str, np.ndarray] = {}
  pending_bytes = total_bytes = 0

  def flush():
    shards.append(list(pending))
    save_file(pending, str(folder / f"shard-{len(shards)}.partial"), metadata={"format": "pt"})
    pending.clear()

  for name, value in tensors:
    if pending and pending_bytes + value.nbytes > max_shard_bytes:
      flush()
      pending_bytes = 0
    pending[name] = np.ascontiguousarray(value)
    pending_bytes += value.nbytes
    total_bytes += value.nbytes
  flush()
  if len(shards) == 1:
    (folder / "shard-1.partial").rename(folder / "model.safetensors")
    return
  weight_map = {}
  for number, names in enumerate(shards, 1):
    file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
    (folder / f"shard-{number}.partial").rename(folder / file_name)
    weight_map.update((name, file_name) for name in names)
  index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
  (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))


def save_params(params: Mapping, config: PulseConfig, path: str | os.PathLike, *,
                max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
  """Writes config.json and the (sharded) safetensors of a pure-dict params tree in transformers' LLaVA-NeXT
  layout (canonical key names, the params' own dtype).

  A flat-mode model has no image_newline; transformers' LLaVA-NeXT always unpads and adds one, so saving a flat
  model here would silently change its behaviour: refused (the original LLaVA format can express flat mode).
  """
  if config.merge_mode != "spatial_unpad":
    raise ConversionError("transformers' LLaVA-NeXT always unpads and adds image_newline; a flat-mode model "
                          "cannot be expressed in it: export it in the original LLaVA format instead "
                          "(`pulse-jax convert to-llava`)")
  folder = pathlib.Path(path)
  write_safetensors(hf_tensors(params), folder, max_shard_bytes=max_shard_bytes)
  (folder / "config.json").write_text(json.dumps(config_to_hf(config), indent=2))


def save(model: PulseModel, config: PulseConfig, path: str | os.PathLike, *,
         max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
  """save_params for a PulseModel's parameters."""
  save_params(nnx.to_pure_dict(nnx.state(model)), config, path, max_shard_bytes=max_shard_bytes)
