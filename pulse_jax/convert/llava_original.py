"""The original LLaVA checkpoint format (haotian-liu/LLaVA), in which llava-v1.6-vicuna-7b and PULSE-7B are published.

A LlavaLlamaForCausalLM folder holds config.json (a LlamaConfig plus LLaVA's mm_* fields), *.safetensors with the
keys model.embed_tokens.*, model.layers.*, model.norm.*, lm_head.*, model.mm_projector.{0,2}.*, usually
model.vision_tower.vision_tower.vision_model.* and, in spatial_unpad mode, model.image_newline; and the tokenizer.

Names: one prefix table between LLaVA's keys and the canonical Hugging Face names of pulse_jax.convert.hf, read in
either direction (hf's rule then maps canonical names onto our parameters), so there is a single name map per
format. Config: the mm_* fields are translated into the LLaVA-NeXT fields hf.config_from_hf reads, with LLaVA's
own defaults where a field is absent (llava/model/llava_arch.py and multimodal_projector/builder.py):
  mm_patch_merge_type   'flat' (PULSE-7B, whose training script never set it) or 'spatial_unpad' (llava-v1.6);
  image_aspect_ratio    must be 'anyres' (LLaVA's default 'square' and LLaVA-1.5's 'pad' are not implemented);
  image_grid_pinpoints  (width, height) pairs in LLaVA, (height, width) everywhere in pulse-jax;
  mm_projector_type     must be 'mlp2x_gelu' (LLaVA's default is 'linear');
  mm_vision_select_feature 'patch' (CLS dropped, the default) or 'cls_patch'.
The image placeholder is not a vocabulary entry in LLaVA (it uses id -200); here it is the first id after the
tokenizer's pieces, as pulse_jax.data.tokenizer assigns it (the config's vocab_size when no tokenizer.model).

Vision tower: LLaVA builds it from `mm_vision_tower`, a hub name or a local folder. Its configuration comes from
--vision-tower DIR if given, else from mm_vision_tower when that is a local folder, else from the table of CLIP
towers LLaVA uses (no download). Its weights are the checkpoint's own when present (llava-v1.6 and PULSE-7B include
them); otherwise they are read from the vision tower folder, a CLIPVisionModel (or CLIPModel) in safetensors.
"""

import json
import logging
import pathlib
from collections.abc import Mapping

from pulse_jax.convert import hf
from pulse_jax.data.image_processor import CLIP_MEAN, CLIP_STD, pinpoints_from_llava
from pulse_jax.data.tokenizer import MODEL_FILE_NAME, Tokenizer
from pulse_jax.errors import ConversionError
from pulse_jax.models.config import PulseConfig, VisionConfig

# (LLaVA key prefix, canonical HF prefix); the first match wins in either direction, so the catch-all "model."
# comes last.
LLAVA_PREFIXES = (
    ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower."),
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.image_newline", "model.image_newline"),
    ("lm_head.", "lm_head."),
    ("model.", "model.language_model."),
)
# A CLIP checkpoint's vision tower: "vision_model.*" (CLIPModel, and CLIPVisionModel before transformers 5) or
# the tower's own parts (CLIPVisionModel from transformers 5).
_CLIP_VISION_PREFIX = "vision_model."
_CLIP_VISION_PARTS = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
_VISION_TOWER = "model.vision_tower."  # the canonical prefix of the tower's tensors

# LLaVA's mm_vision_select_feature <-> transformers' vision_feature_select_strategy.
_SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
_MERGE_MODES = ("flat", "spatial_unpad")

# The CLIP towers of LLaVA-1.5/1.6 and PULSE (transformers' CLIPVisionConfig fields), so that their checkpoints
# convert without a download. Any other tower is described by --vision-tower DIR.
KNOWN_VISION_TOWERS: dict[str, dict] = {
    "openai/clip-vit-large-patch14-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                              num_attention_heads=16, image_size=336, patch_size=14,
                                              hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "openai/clip-vit-large-patch14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          num_attention_heads=16, image_size=224, patch_size=14,
                                          hidden_act="quick_gelu", layer_norm_eps=1e-5),
}

_logger = logging.getLogger(__name__)


def _swap_prefix(name: str, table, source: int) -> str | None:
  for prefixes in table:
    if name.startswith(prefixes[source]):
      return prefixes[1 - source] + name[len(prefixes[source]):]
  return None


def canonical_name(key: str) -> str:
  """A LLaVA checkpoint key as the canonical HF name (keys outside the table are kept, and reported unused)."""
  return _swap_prefix(key, LLAVA_PREFIXES, 0) or key


def llava_name(name: str) -> str:
  """A canonical HF name as LLaVA's checkpoint key (inverse of canonical_name)."""
  llava = _swap_prefix(name, LLAVA_PREFIXES, 1)
  if llava is None:
    raise AssertionError(name)
  return llava


def _clip_vision_name(key: str) -> str | None:
  """A CLIP checkpoint key as the canonical name of the tower tensor (None for the text tower and heads)."""
  key = key.removeprefix(_CLIP_VISION_PREFIX)
  return _VISION_TOWER + key if key.startswith(_CLIP_VISION_PARTS) else None


# --------------------------------------------------------------------------------------------------- config


def _require(config: Mapping, field: str, folder: pathlib.Path):
  if field not in config:
    raise ConversionError(f"{folder}/config.json has no {field}; LLaVA cannot load it either")
  return config[field]


def config_from_llava(llava: Mapping, vision: Mapping, *, image_token_id: int,
                      folder: pathlib.Path = pathlib.Path(".")) -> PulseConfig:
  """PulseConfig from a LLaVA config.json dict and the CLIPVisionConfig dict of its vision tower.

  Raises:
    ConversionError: a LLaVA variant pulse-jax does not implement (naming the field and value), or a field LLaVA
      itself requires is missing.
  """
  where = f"{folder}/config.json"
  if llava.get("model_type") not in ("llava_llama", "llava"):
    raise ConversionError(f"{where}: model_type {llava.get('model_type')!r}, expected 'llava_llama' (LLaVA on "
                          "LLaMA/Vicuna)")
  projector = llava.get("mm_projector_type", "linear")
  if projector != "mlp2x_gelu":
    raise ConversionError(f"{where}: mm_projector_type {projector!r}; only 'mlp2x_gelu' (LLaVA-1.5/1.6) is supported")
  aspect = llava.get("image_aspect_ratio", "square")
  if aspect != "anyres":
    raise ConversionError(f"{where}: image_aspect_ratio {aspect!r}; only 'anyres' (LLaVA-1.6, PULSE) is supported")
  merge_mode = llava.get("mm_patch_merge_type", "flat")
  if merge_mode not in _MERGE_MODES:
    raise ConversionError(f"{where}: mm_patch_merge_type {merge_mode!r}; supported: {', '.join(_MERGE_MODES)}")
  select = llava.get("mm_vision_select_feature", "patch")
  if select not in _SELECT_FEATURE:
    raise ConversionError(f"{where}: mm_vision_select_feature {select!r}; supported: {', '.join(_SELECT_FEATURE)}")
  pinpoints = pinpoints_from_llava(_require(llava, "image_grid_pinpoints", folder))
  hidden = llava.get("mm_hidden_size", vision.get("hidden_size"))
  if hidden != vision.get("hidden_size"):
    raise ConversionError(f"{where}: mm_hidden_size {hidden} differs from the vision tower's hidden_size "
                          f"{vision.get('hidden_size')}")
  return hf.config_from_hf({
      "model_type": "llava_next", "text_config": {**llava, "model_type": "llama"}, "vision_config": dict(vision),
      "image_token_index": image_token_id, "image_grid_pinpoints": [list(p) for p in pinpoints],
      "vision_feature_layer": _require(llava, "mm_vision_select_layer", folder),
      "vision_feature_select_strategy": _SELECT_FEATURE[select], "projector_hidden_act": "gelu",
      "multimodal_projector_bias": True, "dtype": llava.get("torch_dtype") or llava.get("dtype")},
      merge_mode=merge_mode)


def config_to_llava(config: PulseConfig, vision_tower: str) -> dict:
  """LLaVA's config.json dict for a PulseConfig whose vision tower LLaVA will build from `vision_tower`."""
  if config.projector_hidden_act != "gelu" or not config.projector_bias:
    raise ConversionError(f"LLaVA's mlp2x_gelu projector is exact GELU with biases; this model's projector uses "
                          f"{config.projector_hidden_act!r}, bias={config.projector_bias}")
  if (config.image_mean, config.image_std) != (CLIP_MEAN, CLIP_STD):
    raise ConversionError(f"LLaVA normalises images with its CLIP tower's statistics; this model expects "
                          f"image_mean {config.image_mean}, image_std {config.image_std} (export it with "
                          "`convert to-hf`, whose preprocessor_config.json carries them)")
  text = dict(hf.config_to_hf(config)["text_config"])
  del text["model_type"]
  rope = text.pop("rope_parameters")
  v = config.vision
  return {
      "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", **text,
      "rope_theta": rope["rope_theta"], "rope_scaling": None, "torch_dtype": config.param_dtype, "use_cache": True,
      "mm_vision_tower": vision_tower, "mm_hidden_size": v.hidden_size, "mm_projector_type": "mlp2x_gelu",
      "mm_vision_select_layer": v.feature_layer,
      "mm_vision_select_feature": {value: key for key, value in _SELECT_FEATURE.items()}[v.feature_select],
      "mm_patch_merge_type": config.merge_mode, "image_aspect_ratio": "anyres",
      "image_grid_pinpoints": [[width, height] for height, width in config.grid_pinpoints],
      "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "use_mm_proj": True,
      # LLaVA then builds the tower when loading and takes its weights from this checkpoint, which holds them.
      "unfreeze_mm_vision_tower": True,
      "tokenizer_model_max_length": config.text.max_position_embeddings, "tokenizer_padding_side": "right",
  }


# --------------------------------------------------------------------------------------------------- vision tower


def _local_folder(name: str) -> pathlib.Path | None:
  path = pathlib.Path(name)
  return path if (path / "config.json").is_file() else None


def _clip_vision_config(folder: pathlib.Path) -> dict:
  """The CLIPVisionConfig dict of a CLIPVisionModel or CLIPModel folder."""
  config = json.loads((folder / "config.json").read_text())
  if config.get("model_type") == "clip":
    return config.get("vision_config") or {}
  if config.get("model_type") != "clip_vision_model":
    raise ConversionError(f"{folder}/config.json: model_type {config.get('model_type')!r} is not a CLIP vision "
                          "tower ('clip_vision_model' or 'clip')")
  return config


def _tower_architecture(vision: Mapping, like: VisionConfig) -> VisionConfig:
  """`vision` (CLIPVisionConfig fields) as a VisionConfig, feature selection taken from `like` for comparison."""
  return hf.vision_config_from_hf(vision, feature_layer=like.feature_layer, feature_select=like.feature_select)


def default_vision_tower(vision: VisionConfig) -> str | None:
  """The known CLIP tower with this architecture (what to write as mm_vision_tower), if any."""
  for name, fields in KNOWN_VISION_TOWERS.items():
    if _tower_architecture(fields, vision) == vision:
      return name
  return None


def check_vision_tower(name: str, vision: VisionConfig) -> None:
  """Raises ConversionError if the tower LLaVA would build from `name` differs from the model's.

  A local folder or a known tower is checked; another hub name cannot be checked offline (a warning says so).
  """
  folder = _local_folder(name)
  fields = _clip_vision_config(folder) if folder else KNOWN_VISION_TOWERS.get(name)
  if fields is None:
    _logger.warning("cannot check vision tower %r offline (not a local folder nor a known CLIP tower); make sure "
                    "its architecture is %s", name, vision)
    return
  if _tower_architecture(fields, vision) != vision:
    raise ConversionError(f"vision tower {name!r} is {_tower_architecture(fields, vision)}, but the model's is "
                          f"{vision}")


# --------------------------------------------------------------------------------------------------- checkpoints


def open_checkpoint(folder: pathlib.Path, *, vision_tower: pathlib.Path | None = None
                    ) -> tuple[PulseConfig, hf.TensorSource]:
  """The PulseConfig of a LLaVA checkpoint folder and its tensors (under canonical HF names), nothing read yet.

  Args:
    folder: config.json, *.safetensors and, normally, tokenizer.model.
    vision_tower: a CLIPVisionModel/CLIPModel folder (config.json + *.safetensors) giving the tower's
      configuration, and its weights where the checkpoint has none. Default: mm_vision_tower when it is a local
      folder, else the table of known towers (configuration only).

  Raises:
    ConversionError: no config.json, an unsupported LLaVA variant, or a tower that cannot be described or has no
      weights, with what to pass instead.
  """
  config_file = folder / "config.json"
  if not config_file.is_file():
    raise ConversionError(f"{folder}: no config.json")
  llava = json.loads(config_file.read_text())
  tower_name = llava.get("mm_vision_tower", llava.get("vision_tower"))
  if tower_name is None:
    raise ConversionError(f"{config_file} has no mm_vision_tower: not a LLaVA checkpoint")
  tower_folder = vision_tower or _local_folder(tower_name)
  if tower_folder is not None:
    vision = _clip_vision_config(tower_folder)
  elif tower_name in KNOWN_VISION_TOWERS:
    vision = KNOWN_VISION_TOWERS[tower_name]
  else:
    raise ConversionError(f"vision tower {tower_name!r} is neither a local folder nor a known CLIP tower "
                          f"({', '.join(KNOWN_VISION_TOWERS)}): pass --vision-tower DIR, a CLIPVisionModel folder "
                          "(config.json + *.safetensors)")
  tokenizer_file = folder / MODEL_FILE_NAME
  image_token_id = (Tokenizer(tokenizer_file).image_token_id if tokenizer_file.is_file()
                    else llava.get("vocab_size", 32000))  # LlamaConfig's default vocabulary
  config = config_from_llava(llava, vision, image_token_id=image_token_id, folder=folder)

  source = hf.TensorSource()
  source.add_folder(folder, canonical_name)
  if not any(name.startswith(_VISION_TOWER) for name in source.names()):
    if tower_folder is None:
      raise ConversionError(f"{folder} holds no vision tower weights (model.vision_tower.vision_tower.vision_model.*) "
                            f"and its mm_vision_tower {tower_name!r} is not a local folder: pass --vision-tower DIR, "
                            f"a CLIPVisionModel folder (config.json + *.safetensors) of {tower_name}")
    source.add_folder(tower_folder, _clip_vision_name)
  return config, source


def save_params(params: Mapping, config: PulseConfig, path: pathlib.Path, *, vision_tower: str,
                max_shard_bytes: int = hf.DEFAULT_MAX_SHARD_BYTES) -> None:
  """Writes config.json and the (sharded) safetensors of a pure-dict params tree in LLaVA's layout, with the
  vision tower's weights included and `vision_tower` (checked by check_vision_tower) as mm_vision_tower."""
  check_vision_tower(vision_tower, config.vision)
  llava_config = config_to_llava(config, vision_tower)
  hf.write_safetensors(((llava_name(name), value) for name, value in hf.hf_tensors(params)), path,
                       max_shard_bytes=max_shard_bytes)
  (path / "config.json").write_text(json.dumps(llava_config, indent=2))
