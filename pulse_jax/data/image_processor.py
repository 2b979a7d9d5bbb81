"""LLaVA-1.6 "anyres" image preprocessing: any PIL image -> CLIP-normalised tile views for the vision tower.

PULSE fine-tunes llava-v1.6 with `image_aspect_ratio anyres` (reference/pulse_paper.md §5.1). For an image of
(h, w) pixels:
  1. choose the grid pinpoint (h, w), a multiple of the tile size, that keeps the most image pixels after an
     aspect-preserving resize, least padding as tie-break (`select_best_resolution`);
  2. resize the image into that pinpoint keeping its aspect ratio, paste it centred on black and cut it into
     rows x cols tiles of tile_size px, row-major;
  3. prepend a global view: the whole image squashed (aspect ratio not kept) to tile_size x tile_size;
  4. scale to [0, 1] and normalise with the CLIP mean/std.
Resizing is Pillow bicubic on uint8 (LLaVA calls `Image.resize` with its default filter, bicubic for RGB; CLIP
uses bicubic too), normalisation is one numpy pass over the stacked views. No JAX: this runs in data-loader
workers.

The reference is the original LLaVA code PULSE trained with (llava/mm_utils.py `process_anyres_image`);
transformers' LlavaNextImageProcessorPil is the test oracle. Both agree on black padding, ceil in the fitted
size, floor-left/top centring and the squashed global view (transformers' shortest-edge resize and 336 centre
crop are no-ops on views that are already 336 x 336). Where they differ, or where both are poor:
- Pinpoint axes. LLaVA reads `image_grid_pinpoints` as (width, height), transformers as (height, width). The
  llava-v1.6 list is symmetric, so the candidate shapes are the same, but ties go to the first in list order:
  for an image no larger than one tile on both sides LLaVA picks 336 w x 672 h (2 rows x 1 col), transformers
  672 w x 336 h. Pinpoints here are always (height, width); the default is llava-v1.6's list transposed
  (`pinpoints_from_llava`), which reproduces LLaVA's choice. Pass transformers' list unchanged to get its choice.
- Transparency. LLaVA's loader calls `.convert("RGB")`, which drops alpha: transparent pixels take whatever
  colour is stored under them (often black, which hides black traces). transformers composites onto white.
  Default here: `transparency="white"`, what any viewer shows; it equals LLaVA on opaque images (every image
  PULSE trained on is opaque), and `"drop"` reproduces LLaVA exactly.
- 16-bit greyscale (modes I;16*). LLaVA and transformers clip values above 255, so a 16-bit scan turns white;
  here the 16-bit range is scaled to 8 bits. Modes I and F (bit depth unknown) keep Pillow's conversion.
- EXIF orientation is applied by `load_image` (as transformers' `load_image` does; LLaVA did not, but PULSE's
  rendered images carry no orientation tag), so phone photos come out upright; `preprocess` itself takes the
  pixels it is given.
"""

import dataclasses
import io
import math
import os
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageOps

from pulse_jax.errors import ConfigError, ImageError

if TYPE_CHECKING:
  from pulse_jax.models.config import PulseConfig

# The RGB statistics of CLIP's training images, with which every CLIP tower (and so LLaVA and PULSE) normalises.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# `image_grid_pinpoints` exactly as llava-v1.6's config.json writes it, which LLaVA reads as (width, height).
LLAVA_V16_GRID_PINPOINTS_WH: tuple[tuple[int, int], ...] = ((336, 672), (672, 336), (672, 672), (1008, 336),
                                                           (336, 1008))

MergeType = Literal["flat", "spatial_unpad"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# What Pillow raises on unreadable, truncated or absurdly large files (fuzzing the real images gives OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def pinpoints_from_llava(pinpoints_wh) -> tuple[tuple[int, int], ...]:
  """Original-LLaVA pinpoints, (width, height) pairs, as the (height, width) pairs used everywhere here."""
  return tuple((int(height), int(width)) for width, height in pinpoints_wh)


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
  """How images become views. Defaults are PULSE's (llava-v1.6, CLIP ViT-L/14-336).

  Attributes:
    tile_size: side of every view in px (the vision tower's input size).
    grid_pinpoints: candidate (height, width) canvases in px, multiples of tile_size, in tie-break order.
    image_mean, image_std: per-channel RGB normalisation of [0, 1] pixels.
    resample: Pillow filter name for every resize ('bicubic', 'bilinear', 'lanczos', 'nearest', ...).
    transparency: 'white' composites transparent pixels onto white (transformers); 'drop' discards alpha and
      keeps the colour stored under it (original LLaVA).
  """
  tile_size: int = 336
  grid_pinpoints: tuple[tuple[int, int], ...] = pinpoints_from_llava(LLAVA_V16_GRID_PINPOINTS_WH)
  image_mean: tuple[float, float, float] = CLIP_MEAN
  image_std: tuple[float, float, float] = CLIP_STD
  resample: str = "bicubic"
  transparency: Literal["white", "drop"] = "white"

  def __post_init__(self):
    # Accept lists (config files, JSON) but store tuples so the config stays hashable.
    object.__setattr__(self, "grid_pinpoints", tuple((int(h), int(w)) for h, w in self.grid_pinpoints))
    object.__setattr__(self, "image_mean", tuple(float(m) for m in self.image_mean))
    object.__setattr__(self, "image_std", tuple(float(s) for s in self.image_std))
    if self.tile_size <= 0:
      raise ConfigError(f"image processor: tile_size must be positive, got {self.tile_size}")
    if not self.grid_pinpoints:
      raise ConfigError("image processor: grid_pinpoints is empty")
    for height, width in self.grid_pinpoints:
      if height <= 0 or width <= 0 or height % self.tile_size or width % self.tile_size:
        raise ConfigError(f"image processor: grid pinpoint {(height, width)} is not a positive multiple of "
                          f"tile_size {self.tile_size}")
    if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
      raise ConfigError(f"image processor: need 3 means and 3 positive stds, got {self.image_mean}, "
                        f"{self.image_std}")
    if self.resample.upper() not in Image.Resampling.__members__:
      raise ConfigError(f"image processor: unknown resample filter {self.resample!r}; choose from "
                        f"{', '.join(name.lower() for name in Image.Resampling.__members__)}")
    if self.transparency not in ("white", "drop"):
      raise ConfigError(f"image processor: transparency must be 'white' or 'drop', got {self.transparency!r}")


def for_model(config: "PulseConfig") -> ImageProcessorConfig:
  """The processing a model expects: its tower's tile size, its grid pinpoints and its pixel statistics."""
  return ImageProcessorConfig(tile_size=config.vision.image_size, grid_pinpoints=config.grid_pinpoints,
                              image_mean=config.image_mean, image_std=config.image_std)


@dataclasses.dataclass(frozen=True, eq=False)
class ProcessedImage:
  """One image ready for the vision tower.

  Attributes:
    pixel_values: float32[1 + rows * cols, 3, tile, tile]; view 0 is the squashed global view, then the tiles
      row-major. Channels-first and float32 as transformers and LLaVA produce them, so parity checks compare
      arrays directly; the model casts to its compute dtype on device.
    image_size: (height, width) of the image in px, before any resize; the model needs it for spatial_unpad.
    grid_shape: (rows, cols) of tiles.
  """
  pixel_values: np.ndarray
  image_size: tuple[int, int]
  grid_shape: tuple[int, int]


def select_best_resolution(image_size: tuple[int, int], grid_pinpoints) -> tuple[int, int]:
  """The (height, width) pinpoint that shows the image at the highest resolution, LLaVA's rule exactly.

  Effective resolution = pixels of the image after an aspect-preserving resize into the pinpoint, capped at the
  original pixel count (upscaling adds nothing); ties go to the least wasted (padded) area, then to the first
  pinpoint in order.

  Args:
    image_size: (height, width) in px, both positive.
    grid_pinpoints: (height, width) candidates in px.
  """
  height, width = image_size
  if height <= 0 or width <= 0:
    raise ValueError(f"image size {tuple(image_size)} has a side <= 0")
  best_fit = None
  max_effective, min_wasted = 0, math.inf
  for pin_height, pin_width in grid_pinpoints:
    scale = min(pin_width / width, pin_height / height)
    effective = min(int(width * scale) * int(height * scale), width * height)
    wasted = pin_height * pin_width - effective
    if effective > max_effective or (effective == max_effective and wasted < min_wasted):
      best_fit, max_effective, min_wasted = (pin_height, pin_width), effective, wasted
  return best_fit


def anyres_grid_shape(image_size: tuple[int, int], grid_pinpoints, tile_size: int) -> tuple[int, int]:
  """(rows, cols) of tiles for an image of (height, width) px: transformers' `get_anyres_image_grid_shape`."""
  pin_height, pin_width = select_best_resolution(image_size, grid_pinpoints)
  return pin_height // tile_size, pin_width // tile_size


def unpadded_features_shape(image_size: tuple[int, int], grid_pinpoints, tile_size: int,
                            patch_size: int) -> tuple[int, int]:
  """(height, width) of the tile feature map after spatial_unpad removes the rows/columns of black padding.

  The tile features form a [rows * n, cols * n] map with n = tile_size // patch_size. transformers'
  `unpad_image` trims the same number of rows (or columns) from both ends, so the model crops
  (full - unpadded) // 2 from the top (left). Arithmetic copied exactly, `round(..., 7)` included, because the
  model must place exactly this many features.
  """
  rows, cols = anyres_grid_shape(image_size, grid_pinpoints, tile_size)
  per_tile = tile_size // patch_size
  full_height, full_width = rows * per_tile, cols * per_tile
  height, width = image_size
  if width / height > full_width / full_height:
    fitted_height = int(round(height * (full_width / width), 7))
    return full_height - 2 * ((full_height - fitted_height) // 2), full_width
  fitted_width = int(round(width * (full_height / height), 7))
  return full_height, full_width - 2 * ((full_width - fitted_width) // 2)


def num_views(image_size: tuple[int, int], config: ImageProcessorConfig) -> int:
  """Views `preprocess` makes for an image of (height, width) px: the global view plus the tiles."""
  rows, cols = anyres_grid_shape(image_size, config.grid_pinpoints, config.tile_size)
  return 1 + rows * cols


def num_image_features(image_size: tuple[int, int], config: ImageProcessorConfig, patch_size: int,
                       merge_type: MergeType = "flat") -> int:
  """Image feature tokens the language model sees for an image of (height, width) px.

  flat (PULSE): every patch of every view, n^2 per view with n = tile_size // patch_size (576 for 336/14).
  spatial_unpad (llava-v1.6, transformers LLaVA-NeXT): the global view's n^2, then the unpadded tile map with
  one image_newline after each of its rows. Both count patch features only (the CLS token is dropped, as
  llava-v1.6's 'patch' / transformers' 'default' feature selection does).
  """
  per_tile = config.tile_size // patch_size
  if merge_type == "flat":
    return per_tile * per_tile * num_views(image_size, config)
  if merge_type == "spatial_unpad":
    height, width = unpadded_features_shape(image_size, config.grid_pinpoints, config.tile_size, patch_size)
    return per_tile * per_tile + height * (width + 1)
  raise ConfigError(f"unknown patch merge type {merge_type!r}; expected 'flat' or 'spatial_unpad'")


def load_image(source: str | os.PathLike | bytes) -> Image.Image:
  """Decodes an image file (path) or encoded bytes, fully, with its EXIF orientation applied.

  Decoding happens here rather than lazily so that truncated or corrupt files fail now, as ImageError naming
  the file, where a bulk job can skip and count them.
  """
  if isinstance(source, bytes):
    name, stream = f"<{len(source)}-byte image>", io.BytesIO(source)
  else:
    name = stream = os.fspath(source)
  try:
    with Image.open(stream) as image:
      image.load()
      ImageOps.exif_transpose(image, in_place=True)
  except _DECODE_ERRORS as err:
    raise ImageError(f"{name}: cannot decode image: {err}") from err
  if image.width == 0 or image.height == 0:
    raise ImageError(f"{name}: image has zero size ({image.width}x{image.height} px)")
  return image


def to_rgb(image: Image.Image, transparency: Literal["white", "drop"], name: str) -> Image.Image:
  """An 8-bit RGB version of any PIL image (see the module docstring for alpha and 16-bit handling)."""
  try:
    image.load()
    if image.mode in _SIXTEEN_BIT_MODES:
      grey = np.rint(np.asarray(image, dtype=np.float32) / 257.0).astype(np.uint8)
      return Image.fromarray(grey).convert("RGB")
    if image.has_transparency_data:
      rgba = image if image.mode == "RGBA" else image.convert("RGBA")
      # Most RGBA files are fully opaque; checking is cheaper than compositing.
      if transparency == "white" and rgba.getchannel("A").getextrema()[0] < 255:
        rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
      return rgba.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
  except _DECODE_ERRORS as err:
    raise ImageError(f"{name}: cannot read {image.mode} image as RGB: {err}") from err


def preprocess(image: Image.Image, config: ImageProcessorConfig = ImageProcessorConfig(),
               name: str | None = None) -> ProcessedImage:
  """Global view + anyres tiles of one image, CLIP-normalised (see ProcessedImage for the layout).

  Args:
    image: any PIL image, any mode and size (lazily opened images are decoded here).
    config: tile size, pinpoints, normalisation, filter, transparency handling.
    name: how errors name the image; defaults to the file it was opened from.

  Raises:
    ImageError: the image has a zero-size side or cannot be decoded/converted.
  """
  name = name or getattr(image, "filename", "") or "<in-memory image>"
  width, height = image.size
  if width <= 0 or height <= 0:
    raise ImageError(f"{name}: image has zero size ({width}x{height} px)")
  rgb = to_rgb(image, config.transparency, name)
  resample = Image.Resampling[config.resample.upper()]
  tile = config.tile_size

  canvas_height, canvas_width = select_best_resolution((height, width), config.grid_pinpoints)
  rows, cols = canvas_height // tile, canvas_width // tile
  # Aspect-preserving fit into the canvas; ceil keeps a 1-px-wide image at least 1 px wide (LLaVA's rounding).
  if canvas_width / width < canvas_height / height:
    fit_height, fit_width = min(math.ceil(height * (canvas_width / width)), canvas_height), canvas_width
  else:
    fit_height, fit_width = canvas_height, min(math.ceil(width * (canvas_height / height)), canvas_width)
  canvas = np.zeros((canvas_height, canvas_width, 3), np.uint8)
  top, left = (canvas_height - fit_height) // 2, (canvas_width - fit_width) // 2
  canvas[top:top + fit_height, left:left + fit_width] = np.asarray(rgb.resize((fit_width, fit_height), resample))

  views = np.empty((1 + rows * cols, tile, tile, 3), np.uint8)
  views[0] = np.asarray(rgb.resize((tile, tile), resample))
  views[1:] = canvas.reshape(rows, tile, cols, tile, 3).swapaxes(1, 2).reshape(rows * cols, tile, tile, 3)

  # (x / 255 - mean) / std as one multiply-add over all views, written straight into channels-first float32.
  std = np.asarray(config.image_std, np.float32)[:, None, None]
  mean = np.asarray(config.image_mean, np.float32)[:, None, None]
  pixel_values = np.empty((views.shape[0], 3, tile, tile), np.float32)
  np.multiply(views.transpose(0, 3, 1, 2), 1.0 / (255.0 * std), out=pixel_values)
  pixel_values -= mean / std
  return ProcessedImage(pixel_values=pixel_values, image_size=(height, width), grid_shape=(rows, cols))
