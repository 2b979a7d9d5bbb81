"""PulseModel: CLIP vision tower -> mlp2x_gelu projector -> LLaMA, with LLaVA-1.6 anyres image features.

The prompt carries one image placeholder token per image feature (transformers' convention), so every shape is
static and a batch jit-compiles once. Each batch row holds at most one image (an ECG): pixel_values
[B, V, 3, S, S] are its views (view 0 = the squashed global view, then the anyres tiles row-major, zero-padded to
V). The vision tower runs on all B * V views; the projected features are then gathered into the placeholder
positions through a per-row *feature layout*: layout[b, k] is the index, in row b's buffer of V * P projected
features followed by one image_newline slot, of the k-th feature the prompt expects. The layout depends only
on the image size and the config, so it is computed on the host in numpy (`feature_layout`), exactly like
transformers' float arithmetic, and passed into jit as a plain int array:

  * `flat` (PULSE-7B): the valid views' features concatenated, P per view, no newline;
  * `spatial_unpad` (llava-v1.6, transformers): the global view's P features, then the tile features arranged
    as one (rows * p) x (cols * p) map, cropped to the image's aspect ratio, each map row followed by the
    image_newline embedding.
"""

import numpy as np
import jax
import jax.numpy as jnp
from flax import nnx

from pulse_jax.data.image_processor import anyres_grid_shape, unpadded_features_shape
from pulse_jax.errors import ConfigError
from pulse_jax.models.clip import CLIPVisionTower
from pulse_jax.models.common import activation, dense, sharding_context
from pulse_jax.models.config import PulseConfig
from pulse_jax.models.llama import KVCache, LlamaForCausalLM


class Projector(nnx.Module):
  """mlp2x_gelu: linear_1 (vision hidden -> text hidden), GELU, linear_2 (HF names)."""

  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    kw = dict(use_bias=config.projector_bias, param_dtype=config.jnp_param_dtype, dtype=config.jnp_dtype,
              rngs=rngs, std=config.text.initializer_range)  # as transformers' LLaVA-NeXT
    self.act = activation(config.projector_hidden_act)
    self.linear_1 = dense(config.vision.hidden_size, config.text.hidden_size, ("vision_embed", "mlp"), **kw)
    self.linear_2 = dense(config.text.hidden_size, config.text.hidden_size, ("mlp", "embed"), **kw)

  def __call__(self, x):
    return self.linear_2(self.act(self.linear_1(x)))


def num_views(image_size: tuple[int, int], config: PulseConfig) -> int:
  """Views (global + tiles) the anyres processor makes for an image of (height, width)."""
  rows, cols = anyres_grid_shape(image_size, config.grid_pinpoints, config.vision.image_size)
  return 1 + rows * cols


def image_layout(image_size: tuple[int, int], config: PulseConfig) -> np.ndarray:
  """int32[F]: for each of the F feature tokens of one image, its index in the row's feature buffer.

  The buffer is the V * P projected view features (V = config.max_views) followed by the image_newline
  slot at index V * P. F is the number of placeholder tokens the prompt must hold for this image.
  """
  per_view = config.vision.tokens_per_view
  views = num_views(image_size, config)
  if config.merge_mode == "flat":
    return np.arange(views * per_view, dtype=np.int32)
  if config.vision.feature_select != "default":
    raise ConfigError("spatial_unpad needs the CLS token dropped (vision feature_select='default')")
  side = config.vision.patches_per_side
  tile_px = config.vision.image_size
  rows, cols = anyres_grid_shape(image_size, config.grid_pinpoints, tile_px)
  height, width = unpadded_features_shape(image_size, config.grid_pinpoints, tile_px, config.vision.patch_size)
  top, left = (rows * side - height) // 2, (cols * side - width) // 2  # unpadding crops both ends equally
  y, x = np.mgrid[top:top + height, left:left + width]
  tile = 1 + (y // side) * cols + (x // side)
  grid = tile * per_view + (y % side) * side + (x % side)  # [h, w] buffer indices of the kept features
  newline = np.full((grid.shape[0], 1), config.max_views * per_view)
  return np.concatenate([np.arange(per_view), np.concatenate([grid, newline], 1).ravel()]).astype(np.int32)


def max_image_tokens(config: PulseConfig) -> int:
  """An upper bound on feature tokens per image for this config (the width of a feature layout)."""
  per_view, side, tile = config.vision.tokens_per_view, config.vision.patches_per_side, config.vision.image_size
  if config.merge_mode == "flat":
    return config.max_views * per_view
  return per_view + max((h // tile * side) * (w // tile * side + 1) for h, w in config.grid_pinpoints)


def feature_layout(image_sizes, config: PulseConfig) -> np.ndarray:
  """int32[B, max_image_tokens] layouts for a batch of (height, width) sizes, zero-padded on the right."""
  image_sizes = np.asarray(image_sizes)
  out = np.zeros((len(image_sizes), max_image_tokens(config)), np.int32)
  for row, size in enumerate(image_sizes):
    layout = image_layout((int(size[0]), int(size[1])), config)
    out[row, :len(layout)] = layout
  return out


class PulseModel(nnx.Module):
  """The PULSE / LLaVA-NeXT model.

  Submodules (usable alone): `vision_tower` (CLIPVisionTower), `multi_modal_projector` (Projector),
  `language_model` (LlamaForCausalLM); `image_newline` exists in spatial_unpad mode only.
  """

  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    with sharding_context():
      self.config = config
      self.vision_tower = CLIPVisionTower(config, rngs=rngs)
      self.multi_modal_projector = Projector(config, rngs=rngs)
      self.language_model = LlamaForCausalLM(config, rngs=rngs)
      if config.merge_mode == "spatial_unpad":
        self.image_newline = nnx.Param(
            nnx.initializers.normal(config.text.hidden_size**-0.5)(
                rngs.params(), (config.text.hidden_size,), config.jnp_param_dtype), out_sharding=("norm",))

  def image_features(self, pixel_values: jax.Array) -> jax.Array:
    """pixel_values [B, V, 3, S, S] -> projected features [B, V * P, E_text] (views in order)."""
    b, v = pixel_values.shape[:2]
    feats = self.multi_modal_projector(self.vision_tower(pixel_values.reshape(b * v, *pixel_values.shape[2:])))
    return feats.reshape(b, v * feats.shape[1], feats.shape[2])

  def embed(self, input_ids, pixel_values=None, image_sizes=None, *, layout=None) -> jax.Array:
    """Token embeddings [B, T, E] with image features placed at the image-placeholder positions."""
    is_image = input_ids == self.config.image_token_id
    embeds = self.language_model.embed(jnp.where(is_image, 0, input_ids))
    if pixel_values is None:
      return embeds
    if pixel_values.shape[1] != self.config.max_views:
      raise ConfigError(f"pixel_values hold {pixel_values.shape[1]} views; this config pads to "
                        f"{self.config.max_views} (global view + largest grid)")
    if layout is None:
      if image_sizes is None:
        raise ConfigError("pass image_sizes (host values) or a precomputed layout=feature_layout(...)")
      if isinstance(image_sizes, jax.core.Tracer):
        raise ConfigError("image_sizes is traced: under jit, pass layout=feature_layout(image_sizes, config) "
                          "computed on the host")
      layout = feature_layout(image_sizes, self.config)
      _check_placeholders(np.asarray(input_ids) if not isinstance(input_ids, jax.core.Tracer) else None,
                          image_sizes, self.config)
    feats = self.image_features(pixel_values).astype(embeds.dtype)
    newline = (self.image_newline[...] if self.config.merge_mode == "spatial_unpad"
               else jnp.zeros((feats.shape[-1],)))
    buffer = jnp.concatenate([feats, jnp.broadcast_to(newline.astype(feats.dtype), feats[:, :1].shape)], 1)
    k = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, layout.shape[1] - 1)
    source = jnp.take_along_axis(jnp.asarray(layout), k, axis=1)
    gathered = jnp.take_along_axis(buffer, source[..., None], axis=1)
    return jnp.where(is_image[..., None], gathered, embeds)

  def __call__(self, input_ids, pixel_values=None, image_sizes=None, attention_mask=None, *, layout=None,
               positions=None) -> jax.Array:
    """Logits float32[B, T, V] for a full sequence.

    Args:
      input_ids: int[B, T], with one image_token_id per image feature token (see `num_image_tokens`).
      pixel_values: float[B, max_views, 3, S, S] from pulse_jax.data.image_processor, or None (text only).
      image_sizes: int[B, 2] original (height, width) of each row's image, as host values; or
      layout: int[B, F] from `feature_layout(image_sizes, config)`, required under jit.
      attention_mask: bool/int[B, T], 1 for real tokens (padding may be on either side).
      positions: int[B, T] RoPE positions (default: the count of real tokens before each token).
    """
    embeds = self.embed(input_ids, pixel_values, image_sizes, layout=layout)
    return self.language_model(attention_mask=attention_mask, positions=positions, inputs_embeds=embeds)[0]

  def extend(self, input_ids, cache: KVCache, pixel_values=None, image_sizes=None, attention_mask=None, *,
             layout=None) -> tuple[jax.Array, KVCache]:
    """Appends tokens to a KV cache (prefill with the prompt, then one token at a time): (logits, cache)."""
    embeds = self.embed(input_ids, pixel_values, image_sizes, layout=layout)
    return self.language_model(attention_mask=attention_mask, cache=cache, inputs_embeds=embeds)


def num_image_tokens(image_size: tuple[int, int], config: PulseConfig) -> int:
  """Placeholder tokens the prompt must hold for one image of (height, width)."""
  return len(image_layout(image_size, config))


def _check_placeholders(input_ids: np.ndarray | None, image_sizes, config: PulseConfig) -> None:
  """On concrete inputs: each row holds exactly as many placeholders as its image has features."""
  if input_ids is None:
    return
  for row, size in enumerate(np.asarray(image_sizes)):
    have = int((input_ids[row] == config.image_token_id).sum())
    want = num_image_tokens((int(size[0]), int(size[1])), config)
    if have != want:
      raise ConfigError(f"row {row}: {have} image placeholder tokens but an image of {tuple(size)} has {want} "
                        f"features in {config.merge_mode} mode")
