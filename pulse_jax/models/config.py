"""Model configuration: the CLIP vision tower, the LLaMA decoder and how PULSE joins them.

Frozen dataclasses rather than ConfigDicts: a model config is hashable (it parameterises jit-compiled code) and
mirrors the fields of transformers' CLIPVisionConfig / LlamaConfig / LlavaNextConfig one to one, so conversion in
pulse_jax.convert.hf is a field table.
"""

import dataclasses
from typing import Literal

import jax.numpy as jnp

from pulse_jax.data.image_processor import CLIP_MEAN, CLIP_STD
from pulse_jax.errors import ConfigError
from pulse_jax.models.cudnn import CUDNN_DTYPES

MergeMode = Literal["flat", "spatial_unpad"]
RematPolicy = Literal["none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"]
AttentionImpl = Literal["auto", "xla", "splash", "cudnn"]
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """CLIP ViT (openai/clip-vit-large-patch14-336 for PULSE: 1024 x 24 layers, 16 heads, 336 px, patch 14)."""
  hidden_size: int = 1024
  intermediate_size: int = 4096
  num_layers: int = 24
  num_heads: int = 16
  image_size: int = 336
  patch_size: int = 14
  num_channels: int = 3
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"
  # Which hidden state feeds the projector: index into (embeddings, layer 1, ..., layer N); -2 = second-to-last.
  feature_layer: int = -2
  # "default" drops the CLS token (LLaVA's mm_vision_select_feature = patch); "full" keeps it.
  feature_select: Literal["default", "full"] = "default"
  # Random initialisation as transformers' CLIPVisionModel: embeddings at initializer_range, the layers scaled by
  # width and depth (`init_stds`), everything times initializer_factor. Matters only for a tower trained from
  # scratch (the demo's); PULSE loads CLIP's weights.
  initializer_range: float = 0.02
  initializer_factor: float = 1.0

  @property
  def patches_per_side(self) -> int:
    return self.image_size // self.patch_size

  @property
  def tokens_per_view(self) -> int:
    """Feature tokens one view contributes (576 for 336 / 14 with CLS dropped)."""
    return self.patches_per_side**2 + (self.feature_select == "full")

  @property
  def layers_needed(self) -> int:
    """Encoder layers that must run to produce hidden state `feature_layer` (later layers are skipped)."""
    index = self.feature_layer % (self.num_layers + 1)
    return index

  def init_stds(self) -> dict[str, float]:
    """Standard deviations of the random initialisation by weight (transformers' CLIPPreTrainedModel scheme):
    q/k/v and fc2 at width^-1/2 (2 layers)^-1/2, out_proj at width^-1/2, fc1 at (2 width)^-1/2, the class
    embedding at width^-1/2, patch and position embeddings at initializer_range."""
    width, factor = self.hidden_size**-0.5, self.initializer_factor
    depth = (2 * self.num_layers)**-0.5
    return {"in_proj": width * depth * factor, "out_proj": width * factor, "fc1": (2 * self.hidden_size)**-0.5 * factor,
            "class_embedding": width * factor, "embedding": self.initializer_range * factor}


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """LLaMA decoder (Vicuna-7B for PULSE: 4096 x 32 layers, 32 heads, vocab 32000 + image token)."""
  vocab_size: int = 32064
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: int = 128
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-5
  max_position_embeddings: int = 4096
  hidden_act: str = "silu"
  bos_token_id: int = 1
  eos_token_id: int = 2
  pad_token_id: int = 0
  # Standard deviation of every random weight (transformers' LlamaConfig.initializer_range; LLaVA-NeXT's projector
  # uses it too). 0.02 suits widths in the thousands; a model trained from scratch at width w wants about w^-1/2.
  initializer_range: float = 0.02

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")


@dataclasses.dataclass(frozen=True)
class PulseConfig:
  """The whole model: vision tower -> mlp2x_gelu projector -> LLaMA, with LLaVA-1.6 anyres image handling.

  Attributes:
    merge_mode: "flat" (what PULSE-7B really uses: global view + tiles concatenated, no image_newline) or
      "spatial_unpad" (llava-v1.6's default and the only mode transformers' LLaVA-NeXT implements).
    grid_pinpoints: candidate anyres resolutions as (height, width).
    image_mean, image_std: per-channel RGB statistics that [0, 1] pixels are normalised with: CLIP's for a CLIP
      tower; a tower trained from scratch on ECG pages wants the pages' own (configs/tiny.py says why).
    image_token_id: the placeholder id; the prompt holds one placeholder per image feature token.
    param_dtype / dtype: storage dtype of parameters and compute dtype of activations.
    remat: rematerialisation policy for the decoder layers in training.
    attention: the decoder's full-sequence attention (training, held-out loss, a prompt's prefill; a decode step
      reads its KV cache through XLA): "splash" is the TPU flash-attention kernel (pulse_jax.models.splash),
      "cudnn" cuDNN's on NVIDIA GPUs (pulse_jax.models.cudnn; bfloat16 / float16 compute only), "xla" the plain
      XLA computation, "auto" the kernel of the mesh's platform where it applies and XLA otherwise
      (pulse_jax.models.kernels).
  """
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  image_token_id: int = 32000
  merge_mode: MergeMode = "flat"
  grid_pinpoints: tuple[tuple[int, int], ...] = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
  image_mean: tuple[float, float, float] = CLIP_MEAN
  image_std: tuple[float, float, float] = CLIP_STD
  projector_hidden_act: str = "gelu"
  projector_bias: bool = True
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: RematPolicy = "none"
  attention: AttentionImpl = "auto"

  def __post_init__(self):
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ConfigError(f"{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)!r}")
    if self.attention not in ("auto", "xla", "splash", "cudnn"):
      raise ConfigError(f"attention must be 'auto', 'xla', 'splash' or 'cudnn', got {self.attention!r}")
    if self.attention == "cudnn" and self.dtype not in CUDNN_DTYPES:
      raise ConfigError(f"attention 'cudnn' needs bfloat16 or float16 compute (cuDNN's kernel takes no float32), "
                        f"got dtype {self.dtype!r}; use 'auto' or 'xla'")
    if self.merge_mode not in ("flat", "spatial_unpad"):
      raise ConfigError(f"merge_mode must be 'flat' or 'spatial_unpad', got {self.merge_mode!r}")
    # Accept lists (config files, JSON) but store tuples so that the config stays hashable.
    object.__setattr__(self, "image_mean", tuple(float(m) for m in self.image_mean))
    object.__setattr__(self, "image_std", tuple(float(s) for s in self.image_std))
    if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
      raise ConfigError(f"image_mean and image_std must be 3 values each, the stds positive; got {self.image_mean}, "
                        f"{self.image_std}")
    for h, w in self.grid_pinpoints:
      if h % self.vision.image_size or w % self.vision.image_size:
        raise ConfigError(f"grid pinpoint {(h, w)} is not a multiple of the tile size {self.vision.image_size}")

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def max_views(self) -> int:
    """Most views one image can produce: the global view plus the largest pinpoint's tiles."""
    tile = self.vision.image_size
    return 1 + max((h // tile) * (w // tile) for h, w in self.grid_pinpoints)

  def replace(self, **changes) -> "PulseConfig":
    return dataclasses.replace(self, **changes)
