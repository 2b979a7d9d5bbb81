"""Hugging Face LLaVA-NeXT checkpoints (config.json + safetensors) in and out of PulseModel.

Parameter names mirror transformers', so conversion is a reversible name rule plus transposes:
  * our path           -> canonical HF name (transformers >= 4.52 layout, `model.language_model.*`);
  * kernel [in, out]   -> weight [out, in]; conv kernel [kh, kw, in, out] -> weight [out, in, kh, kw];
  * scale / embedding  -> weight;
  * stacked layers [L, ...] <-> one tensor per layer (`...layers.{i}...`).
Older checkpoints (`language_model.model.*`, `vision_tower.vision_model.*`, top-level `multi_modal_projector.*`)
are mapped onto the canonical names first. Only safetensors are read: a pickle-based file is never opened.
"""

import json
import os
import pathlib
from collections.abc import Iterator

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


def _to_hf(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """Our layout -> torch layout for one (unstacked) tensor."""
  if path[-1] == "kernel":
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def _from_hf(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


def _is_stacked(path: tuple[str, ...]) -> bool:
  return "layers" in path


# --------------------------------------------------------------------------------------------------- config


def config_from_hf(hf: dict, *, merge_mode: str = "spatial_unpad", **overrides) -> PulseConfig:
  """PulseConfig from a LLaVA-NeXT config.json dict; absent fields take transformers' defaults.

  merge_mode defaults to spatial_unpad, the only mode transformers' LLaVA-NeXT implements; PULSE-7B itself was
  trained in flat mode (pass merge_mode="flat" for it).
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
  feature_layer = hf.get("vision_feature_layer", -2)
  if not isinstance(feature_layer, int):
    raise ConversionError(f"vision_feature_layer {feature_layer!r}: only a single layer is supported")
  pinpoints = hf.get("image_grid_pinpoints") or [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
  return PulseConfig(
      vision=VisionConfig(
          hidden_size=vision.get("hidden_size", 768), intermediate_size=vision.get("intermediate_size", 3072),
          num_layers=vision.get("num_hidden_layers", 12), num_heads=vision.get("num_attention_heads", 12),
          image_size=vision.get("image_size", 224), patch_size=vision.get("patch_size", 32),
          num_channels=vision.get("num_channels", 3), layer_norm_eps=vision.get("layer_norm_eps", 1e-5),
          hidden_act=vision.get("hidden_act", "quick_gelu"), feature_layer=feature_layer,
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
          eos_token_id=text.get("eos_token_id", 2), pad_token_id=text.get("pad_token_id") or 0),
      image_token_id=hf.get("image_token_index", hf.get("image_token_id", 32000)),
      merge_mode=merge_mode,
      grid_pinpoints=tuple(tuple(p) for p in pinpoints),
      projector_hidden_act=hf.get("projector_hidden_act", "gelu"),
      projector_bias=hf.get("multimodal_projector_bias", True),
      **overrides)


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
          "hidden_act": v.hidden_act},
      "text_config": {
          "model_type": "llama", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
          "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_layers,
          "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads, "head_dim": t.head_dim,
          "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"}, "rms_norm_eps": t.rms_norm_eps,
          "max_position_embeddings": t.max_position_embeddings, "hidden_act": t.hidden_act,
          "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id, "pad_token_id": t.pad_token_id,
          "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False},
  }


# --------------------------------------------------------------------------------------------------- tensors


class _SafetensorsFolder:
  """Lazy, tensor-at-a-time access to every *.safetensors file of a folder, by canonical name."""

  def __init__(self, folder: pathlib.Path):
    files = sorted(folder.glob("*.safetensors"))
    if not files:
      pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
      hint = f" (found {', '.join(pickled)}: pickle files are never loaded; convert them to safetensors)" \
          if pickled else ""
      raise ConversionError(f"{folder}: no .safetensors files{hint}")
    self._where: dict[str, tuple[pathlib.Path, str]] = {}
    self._handles = {}
    for file in files:
      try:
        handle = safe_open(str(file), framework="np")
      except Exception as e:  # safetensors raises its own SafetensorError for truncated/corrupt headers.
        raise ConversionError(f"{file}: not a readable safetensors file ({e})") from e
      self._handles[file] = handle
      for key in handle.keys():
        self._where[canonical_name(key)] = (file, key)

  def names(self) -> set[str]:
    return set(self._where)

  def get(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise ConversionError(f"tensor {name} is missing from the checkpoint")
    file, key = self._where[name]
    try:
      return self._handles[file].get_tensor(key)
    except Exception as e:
      raise ConversionError(f"{file}: tensor {key} cannot be read ({e}); is the file truncated?") from e


def _abstract_model(config: PulseConfig):
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: PulseModel(config, rngs=nnx.Rngs(0)))


def load(path: str | os.PathLike, *, merge_mode: str = "spatial_unpad", **config_overrides
         ) -> tuple[PulseModel, PulseConfig]:
  """Loads a transformers LLaVA-NeXT folder (config.json + *.safetensors) into a PulseModel.

  Tensors are read one at a time and cast to the config's param_dtype. Every model parameter must be present
  with the expected shape; checkpoint tensors the model does not use (image_newline in flat mode) are ignored.
  """
  folder = pathlib.Path(path)
  config_file = folder / "config.json"
  if not config_file.is_file():
    raise ConversionError(f"{folder}: no config.json")
  config = config_from_hf(json.loads(config_file.read_text()), merge_mode=merge_mode, **config_overrides)
  tensors = _SafetensorsFolder(folder)
  model = _abstract_model(config)
  graphdef, state = nnx.split(model)
  flat = []
  for path_, variable in nnx.to_flat_state(state):
    path_ = tuple(str(p) for p in path_)
    name = hf_name(path_)
    if _is_stacked(path_):
      layers = [_from_hf(path_, tensors.get(name.format(i=i))) for i in range(variable.shape[0])]
      value = np.stack(layers)
    else:
      value = _from_hf(path_, tensors.get(name))
    if value.shape != variable.shape:
      raise ConversionError(f"tensor {name}: shape {value.shape} (after layout change) does not match the "
                            f"model's {variable.shape}")
    flat.append((path_, variable.replace(jnp.asarray(value, dtype=variable.dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(flat)), config


def hf_tensors(model: PulseModel) -> Iterator[tuple[str, np.ndarray]]:
  """(canonical HF name, torch-layout numpy array) for every parameter, one layer at a time."""
  for path_, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    path_ = tuple(str(p) for p in path_)
    value = np.asarray(jax.device_get(variable[...]))
    if _is_stacked(path_):
      for i in range(value.shape[0]):
        yield hf_name(path_).format(i=i), _to_hf(path_, value[i])
    else:
      yield hf_name(path_), _to_hf(path_, value)


def save(model: PulseModel, config: PulseConfig, path: str | os.PathLike) -> None:
  """Writes config.json and model.safetensors in transformers' LLaVA-NeXT layout (canonical key names).

  A flat-mode model has no image_newline; transformers' LLaVA-NeXT always uses one, so saving a flat model here
  would silently change its behaviour: refused (the original LLaVA format can express flat mode).
  """
  if config.merge_mode != "spatial_unpad":
    raise ConversionError("transformers' LLaVA-NeXT always unpads and adds image_newline; a flat-mode model "
                          "cannot be expressed in it")
  folder = pathlib.Path(path)
  folder.mkdir(parents=True, exist_ok=True)
  tensors = {name: np.ascontiguousarray(value) for name, value in hf_tensors(model)}
  save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(config_to_hf(config), indent=2))
