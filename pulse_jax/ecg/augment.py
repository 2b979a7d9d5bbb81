"""PULSE-style augmentations of a paper-ECG sheet: what an augmented sheet draws, and the effects on its pixels.

pulse_jax.ecg.render draws every sheet from a `Plan`: the request as given for a standard sheet, or as
`sample_plan` augments it (another layout or grid colour, no grid, the header, resolution, aspect and position
jitter, font, ink and paper tint: things that change what is drawn). The scanner's effects then act on the
renderer's two 8-bit layers (`scanned`: rotation, blur) and on the composed RGB sheet (`photo_effects`: wrinkles
and creases, sensor noise, JPEG artefacts). Every random draw comes from the Generators the renderer passes in,
so the same record and seed give the same bytes.
"""

import dataclasses
import functools
import io
import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Probabilities (`p_*`) and ranges of the augmented variant's effects.

  Each effect is an independent draw from the render's one Generator; every parameter is drawn whether or not
  its effect fires, so changing one probability does not reshuffle the others. PULSE names the effects
  (rotation, noise, wrinkles and creases, background colour, resolution, aspect, position, layouts, grid removal
  with p = 0.02, header meta-info) but not their rates; these rates are ours.
  """
  p_alt_layout: float = 0.3  # another of LAYOUTS
  p_grid_colour: float = 0.25  # another grid colour
  p_no_grid: float = 0.02  # PULSE's grid removal rate
  p_header: float = 0.5  # print the caller's header
  p_resolution: float = 0.5
  resolution_scale: tuple[float, float] = (0.5, 1.0)  # x dpi
  p_aspect: float = 0.3
  aspect: tuple[float, float] = (0.85, 1.15)  # x stretch; y shrinks by the same factor
  p_shift: float = 0.3
  shift_mm: float = 6.0  # page position, each axis uniform in +-shift_mm
  p_rotation: float = 0.5
  rotation_deg: float = 5.0  # uniform in +-rotation_deg
  p_wrinkles: float = 0.3
  wrinkle_depth: tuple[float, float] = (4.0, 12.0)  # grey levels of the hard-light texture around neutral 128
  p_creases: float = 0.3
  creases: tuple[int, int] = (1, 4)
  p_tint: float = 0.5  # yellowed paper or another colour temperature
  p_blur: float = 0.2
  blur_px: tuple[float, float] = (0.4, 1.2)  # Gaussian radius
  p_noise: float = 0.3
  noise_sigma: tuple[float, float] = (2.0, 8.0)  # grey levels
  p_jpeg: float = 0.2
  jpeg_quality: tuple[int, int] = (35, 85)


PULSE_AUGMENTATION = Augmentation()


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything one sheet's drawing depends on besides the record: the request, or the request as augmented."""
  layout: str
  grid: str
  dpi: float
  aspect: float = 1.0
  shift_mm: tuple[float, float] = (0.0, 0.0)
  show_header: bool = False
  font: str = "sans"
  ink: tuple[int, int, int] = (0, 0, 0)
  tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain on every colour
  blur_px: float = 0.0
  wrinkle_depth: float = 0.0
  creases: int = 0
  rotation_deg: float = 0.0
  noise_sigma: float = 0.0
  jpeg_quality: int | None = None


def sample_plan(rng: np.random.Generator, aug: Augmentation, request: Plan, *, layouts: Sequence[str],
                grids: Sequence[str], fonts: Sequence[str]) -> tuple[Plan, dict[str, Any]]:
  """Draws one augmented sheet's plan, and the effects that fired with their parameters (for the sidecar).

  Args:
    rng: the sheet's plan Generator; the draws happen in a fixed order whatever fires.
    aug: effect probabilities and ranges.
    request: the standard sheet asked for (layout, grid, dpi, and show_header = a header was given).
    layouts, grids, fonts: the renderer's layout names, grid colour names ('none' among them: plain paper) and
      font families, in the renderer's order.
  """
  effects: dict[str, Any] = {}

  def fires(name: str, p: float, value: Any, applies: bool = True) -> bool:
    fired = bool(rng.random() < p) and applies  # drawn even where it cannot apply: a stable stream
    if fired:
      effects[name] = value
    return fired

  layout, grid, dpi = request.layout, request.grid, request.dpi
  other_layouts = [name for name in layouts if name != layout]
  alt_layout = other_layouts[rng.integers(len(other_layouts))]
  layout = alt_layout if fires("layout", aug.p_alt_layout, alt_layout) else layout
  colours = [name for name in grids if name not in (grid, "none")]
  alt_grid = colours[rng.integers(len(colours))]
  if fires("grid", aug.p_grid_colour, alt_grid, applies=grid != "none"):
    grid = alt_grid
  if fires("no_grid", aug.p_no_grid, True):
    grid = "none"
  show_header = fires("header", aug.p_header, True, applies=request.show_header)

  scale = float(rng.uniform(*aug.resolution_scale))
  dpi_drawn = round(dpi * scale) if fires("dpi", aug.p_resolution, round(dpi * scale)) else dpi
  aspect = float(rng.uniform(*aug.aspect))
  aspect = aspect if fires("aspect", aug.p_aspect, aspect) else 1.0
  shift = tuple(float(v) for v in rng.uniform(-aug.shift_mm, aug.shift_mm, size=2))
  shift = shift if fires("shift_mm", aug.p_shift, shift) else (0.0, 0.0)
  rotation = float(rng.uniform(-aug.rotation_deg, aug.rotation_deg))
  rotation = rotation if fires("rotation_deg", aug.p_rotation, rotation) else 0.0

  font = fonts[rng.integers(len(fonts))]
  ink = tuple(int(v) for v in np.clip(rng.integers(0, 60) + rng.integers(-10, 11, size=3), 0, 255))  # near-black
  tint = _paper_tint(rng)
  tint = tint if fires("tint", aug.p_tint, tint) else (1.0, 1.0, 1.0)
  blur = float(rng.uniform(*aug.blur_px))
  blur = blur if fires("blur_px", aug.p_blur, blur) else 0.0
  depth = float(rng.uniform(*aug.wrinkle_depth))
  depth = depth if fires("wrinkle_depth", aug.p_wrinkles, depth) else 0.0
  creases = int(rng.integers(aug.creases[0], aug.creases[1] + 1))
  creases = creases if fires("creases", aug.p_creases, creases) else 0
  sigma = float(rng.uniform(*aug.noise_sigma))
  sigma = sigma if fires("noise_sigma", aug.p_noise, sigma) else 0.0
  quality = int(rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1))
  quality = quality if fires("jpeg_quality", aug.p_jpeg, quality) else None
  return Plan(layout=layout, grid=grid, dpi=dpi_drawn, aspect=aspect, shift_mm=shift, show_header=show_header,
              font=font, ink=ink, tint=tint, blur_px=blur, wrinkle_depth=depth, creases=creases,
              rotation_deg=rotation, noise_sigma=sigma, jpeg_quality=quality), effects


def _paper_tint(rng: np.random.Generator) -> tuple[float, float, float]:
  """Per-channel gains: yellowed paper (blue, then green, lose most) or a cool/warm colour temperature, times a
  slight overall dimming."""
  dim = rng.uniform(0.88, 1.0)
  if rng.random() < 0.5:  # yellowing
    gains = (1.0, rng.uniform(0.92, 0.99), rng.uniform(0.72, 0.92))
  else:  # colour temperature: warm or cool by up to ~10 %
    shift = rng.uniform(-0.1, 0.1)
    gains = (1.0 + min(shift, 0.0), 1.0 - abs(shift) / 3, 1.0 - max(shift, 0.0))
  return tuple(round(float(dim * g), 4) for g in gains)


def scanned(layer: Image.Image, plan: Plan) -> Image.Image:
  """A 0..255 layer as the scanner sees it: rotated about the centre on the bed (bilinear; the uncovered corners
  are 0, so they take the paper colour), then defocused (Gaussian blur)."""
  if plan.rotation_deg:
    layer = layer.rotate(plan.rotation_deg, resample=Image.Resampling.BILINEAR)
  if plan.blur_px:
    layer = layer.filter(ImageFilter.GaussianBlur(plan.blur_px))
  return layer


def photo_effects(image: Image.Image, plan: Plan, rng: np.random.Generator) -> Image.Image:
  """Paper and sensor effects on an RGB sheet: wrinkles and creases, sensor noise, JPEG compression."""
  if plan.wrinkle_depth or plan.creases:
    texture = _paper_texture(rng, image.size, plan.wrinkle_depth, plan.creases)
    image = ImageChops.hard_light(image, Image.merge("RGB", (texture,) * 3))
  if plan.noise_sigma:
    noise = _gaussian_noise(rng, image.size, plan.noise_sigma)
    image = ImageChops.add(image, Image.merge("RGB", (noise,) * 3), scale=1.0, offset=-128)
  if plan.jpeg_quality is not None:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=plan.jpeg_quality)
    image = Image.open(buffer).convert("RGB")
  return image


def _paper_texture(rng: np.random.Generator, size: tuple[int, int], depth: float, creases: int) -> Image.Image:
  """L texture for a hard-light blend, 128 neutral: crumpled-paper shading plus fold lines.

  Built at quarter resolution and upscaled (both are smooth): wrinkles are three octaves of noise folded at their
  zero crossings (|tanh(1.5 n)|: thin dark valleys between broad facets, as crumpled paper shades); creases are a
  dark line beside a bright one (a fold's shadow and highlight), blurred, mostly along the page axes.
  """
  w, h = max(8, size[0] // 4), max(8, size[1] // 4)
  field = np.zeros((h, w), np.float32)
  if depth:
    for cells, weight in ((4, 1.0), (10, 0.6), (24, 0.35)):
      coarse = rng.standard_normal((cells * h // w + 2, cells + 2)).astype(np.float32)
      octave = np.asarray(Image.fromarray(coarse, "F").resize((w, h), Image.Resampling.BICUBIC))
      field += weight * (2.0 * np.abs(np.tanh(1.5 * octave)) - 1.0)
    field *= depth / max(float(field.std()), 1e-6)
  fold = Image.new("L", (w, h), 128)
  draw = ImageDraw.Draw(fold)
  for _ in range(creases):
    vertical = rng.random() < 0.5
    angle = math.radians(rng.uniform(-8, 8) + (90 if vertical else 0))
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    dx, dy, reach = math.cos(angle), math.sin(angle), w + h
    strength = rng.uniform(25, 60)
    for offset, value in ((-1.0, -strength), (1.0, 0.6 * strength)):
      ox, oy = -dy * offset, dx * offset
      draw.line([(cx - dx * reach + ox, cy - dy * reach + oy), (cx + dx * reach + ox, cy + dy * reach + oy)],
                fill=round(128 + value), width=1)
  field += np.asarray(fold.filter(ImageFilter.GaussianBlur(0.8)), np.float32) - 128.0
  small = Image.fromarray((128.0 + field).clip(0, 255).astype(np.uint8))
  return small.resize(size, Image.Resampling.BILINEAR)


@functools.lru_cache(maxsize=16)
def _normal_lut(sigma: float) -> list[int]:
  """Maps a uniform byte to 128 + sigma * z through the normal quantile: Gaussian noise at memcpy speed."""
  normal = statistics.NormalDist()
  return [min(255, max(0, round(128 + sigma * normal.inv_cdf((v + 0.5) / 256)))) for v in range(256)]


def _gaussian_noise(rng: np.random.Generator, size: tuple[int, int], sigma: float) -> Image.Image:
  """L image of Gaussian noise around 128 (grey levels), from rng's bytes."""
  return Image.frombytes("L", size, rng.bytes(size[0] * size[1])).point(_normal_lut(round(sigma, 2)))
