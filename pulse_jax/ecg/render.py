"""Paper-ECG renderer: an EcgRecord drawn as a printed 12-lead sheet, standard or augmented (PULSE's 1:1 mix).

Geometry is clinical paper as ecg-image-kit draws it: 25 mm/s, 10 mm/mV, 1 mm minor and 5 mm major grid, a
0.2 s x 1 mV calibration pulse at each row start, an 11 x 8.5 in page (2200 x 1700 px at 200 dpi). Layouts:
3x4 with a 10 s lead-II rhythm strip (column k shows [2.5k, 2.5k + 2.5) s), 6x2 (I-aVF | V1-V6, column k shows
[5k, 5k + 5) s) and 12x1 (10 s each). Longer records show their first 10 s; shorter ones what exists.

Speed matters (this is the hot path of a 1.16 M-image dataset), hence the structure: a sheet is two 8-bit layers,
grid strength (a raster cached per geometry) and ink coverage (traces drawn at 2x and box-reduced, which
anti-aliases them, then text), joined through a palette: index = grid level * ink levels + ink level. A standard
sheet stays that palette image (15 colours: a 4-bit PNG of ~60 KB). An augmented sheet (pulse_jax.ecg.augment
draws its plan and applies the effects) is rotated and blurred as its two layers, then converted to RGB once for
whole-image Pillow effects; resolution, aspect and position jitter are applied while drawing (another px/mm and
origin), so only rotation resamples. No per-pixel Python anywhere. Everything random comes from one numpy
Generator seeded by `seed`: the same record and seed give the same bytes.
"""

import argparse
import dataclasses
import functools
import hashlib
import io
import json
import math
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont

# Augmentation and PULSE_AUGMENTATION are also this module's API (render_page's `augmentation` argument).
from pulse_jax.ecg.augment import PULSE_AUGMENTATION, Augmentation, Plan, photo_effects, sample_plan, scanned
from pulse_jax.ecg.leads import STANDARD_LEADS
from pulse_jax.ecg.record import EcgRecord
from pulse_jax.errors import ImageError, RecordError

RGB = tuple[int, int, int]

PAPER_MM = (279.4, 215.9)  # US letter landscape, ecg-image-kit's page
MM_PER_INCH = 25.4
MM_PER_S = 25.0
MM_PER_MV = 10.0
MINOR_MM, MAJOR_MM = 1.0, 5.0
PAPER_SECONDS = 10.0
CALIBRATION_S, CALIBRATION_MV = 0.2, 1.0

# Printed order, top row first. A row of c leads splits PAPER_SECONDS into c consecutive windows.
LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "3x4": (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"), ("II",)),
    "6x2": (("I", "V1"), ("II", "V2"), ("III", "V3"), ("aVR", "V4"), ("aVL", "V5"), ("aVF", "V6")),
    "12x1": tuple((lead,) for lead in STANDARD_LEADS),
}

# (major line, minor line) colours. Red follows ecg-image-kit's scheme, softened as printed paper is; pink and
# blue are sampled from real machine printouts (ecg-image-kit sample images ecg00053 and ecg00002).
GRID_COLOURS: dict[str, tuple[RGB, RGB] | None] = {
    "red": ((232, 96, 96), (251, 214, 210)),
    "pink": ((232, 162, 170), (248, 226, 232)),
    "blue": ((150, 176, 214), (214, 227, 245)),
    "none": None,
}

# Sheet furniture, in mm from the page's top-left corner. The grid is 54 x 5 mm wide, centred; time 0 of every
# row sits _TRACE_X_MM from the page edge, after the calibration pulse.
_GRID_X_MM = ((PAPER_MM[0] - 270.0) / 2, (PAPER_MM[0] + 270.0) / 2)
_PULSE_X_MM = _GRID_X_MM[0] + 3.0
_TRACE_X_MM = _GRID_X_MM[0] + 10.0
_HEADER_BAND_MM = 40.0  # white band above the grid when a header is printed
_TOP_MARGIN_MM = 10.0
_FOOTER_MM = 12.0
_BASELINE_IN_ROW = 0.55  # 0 mV line position within its row band (R waves mostly point up)
_LABEL_DROP_MM = 4.0  # lead label top below the baseline, less where rows are tight (12x1)
_SEPARATOR_MM = 2.5  # half-height of the tick between columns
_TRACE_WIDTH_MM = 0.25  # ecg-image-kit's 0.75 pt line
_MAJOR_WIDTH_MM = 0.2
_LABEL_PT, _TEXT_PT = 10.0, 9.0

_SUPERSAMPLE = 2  # traces are drawn at 2x and box-reduced: cheap anti-aliasing
_MINOR_STRENGTH, _MAJOR_STRENGTH = 128, 255  # grid layer values; paper is 0
# (grid, ink) palette levels. Standard: paper/minor/major x the 5 coverages a 2x2 block of binary subpixels can
# have: 15 colours, a 4-bit PNG. Augmented sheets are blurred and rotated, so their layers keep finer steps.
_STANDARD_LEVELS = (3, _SUPERSAMPLE ** 2 + 1)
_AUGMENTED_LEVELS = (15, 17)
_PNG_LEVEL = {"P": 6, "RGB": 1}  # zlib level per mode: palette sheets compress well; RGB ones are noisy

# Fonts that ship with matplotlib (never a system font that may be absent). STIX General is a Times look-alike,
# the face of many machine printouts; augmented sheets draw one at random, as ecg-image-kit does.
_FONT_FILES = {"sans": "DejaVuSans.ttf", "serif": "DejaVuSerif.ttf", "mono": "DejaVuSansMono.ttf",
               "times": "STIXGeneral.ttf"}

# Header lines like a machine printout: (label, keys of the header dict, unit); the keys are measure.Measurements'
# field names. Values of several keys are joined with '/'. Other keys print as 'key: value' in a third column.
_PATIENT_LINES = (("ID", ("id",), ""), ("Age", ("age",), "yr"), ("Sex", ("sex",), ""))
_MEASUREMENT_LINES = (
    ("Vent. rate", ("heart_rate_bpm",), "BPM"),
    ("PR interval", ("pr_ms",), "ms"),
    ("QRS duration", ("qrs_ms",), "ms"),
    ("QT/QTc", ("qt_ms", "qtc_ms"), "ms"),
    ("QRS axis", ("qrs_axis_deg",), "deg"),
)


@dataclasses.dataclass(frozen=True)
class LeadPlacement:
  """Where one lead segment is printed, in output-image pixels (x right, y down; pixel i spans [i, i + 1)).

  Attributes:
    lead: standard lead name.
    box: (left, top, right, bottom), half-open: the segment's time window across its row band (after rotation,
      the axis-aligned box around the rotated band).
    baseline: (x0, y0, x1, y1), the 0 mV line over the window.
    t_start_s, t_end_s: the time window drawn, clipped to the record's length.
    start_sample, end_sample: the samples [start, end) drawn.
  """
  lead: str
  box: tuple[int, int, int, int]
  baseline: tuple[float, float, float, float]
  t_start_s: float
  t_end_s: float
  start_sample: int
  end_sample: int


@dataclasses.dataclass(frozen=True)
class RenderInfo:
  """Layout metadata of one rendered sheet (the JSON sidecar).

  Attributes:
    record_id: the record drawn.
    width, height: image size in px.
    dpi: resolution the sheet was drawn at (the requested dpi times any resolution jitter).
    px_per_mm: (x, y) scale before rotation; they differ under aspect jitter. px/s = 25 x, px/mV = 10 y.
    layout, grid: the layout and grid colour drawn (an augmented sheet may differ from the request).
    augmented, seed: whether effects were drawn, from which seed.
    effects: each augmentation that fired with its parameter(s).
    leads: one placement per printed segment (3x4 has 13: II twice).
  """
  record_id: str
  width: int
  height: int
  dpi: float
  px_per_mm: tuple[float, float]
  layout: str
  grid: str
  augmented: bool
  seed: int
  effects: dict[str, Any]
  leads: tuple[LeadPlacement, ...]

  def to_json(self) -> dict[str, Any]:
    """A JSON-ready dict: every field, plus px_per_s and px_per_mv."""
    return {**dataclasses.asdict(self), "px_per_s": self.px_per_mm[0] * MM_PER_S,
            "px_per_mv": self.px_per_mm[1] * MM_PER_MV}


@dataclasses.dataclass(frozen=True)
class RenderedEcg:
  """A rendered sheet: `image` is mode P for a standard sheet (an exact 15-colour palette, the cheap thing to
  encode) and RGB for an augmented one; `info` is its layout metadata."""
  image: Image.Image
  info: RenderInfo


@dataclasses.dataclass(frozen=True)
class _Sheet:
  """Pixel frame of one page: px = origin + mm * px_per_mm, x and y scales apart (aspect jitter)."""
  width: int
  height: int
  px_per_mm_x: float
  px_per_mm_y: float
  origin_x: float
  origin_y: float

  def x(self, mm):
    return self.origin_x + np.asarray(mm, dtype=np.float64) * self.px_per_mm_x

  def y(self, mm):
    return self.origin_y + np.asarray(mm, dtype=np.float64) * self.px_per_mm_y


@dataclasses.dataclass(frozen=True)
class _Row:
  """One printed row, in mm: its band on the page, its 0 mV line, and its (lead, t0, t1) windows."""
  top_mm: float
  bottom_mm: float
  baseline_mm: float
  cells: tuple[tuple[str, float, float], ...]


def render(record: EcgRecord, *, layout: str = "3x4", augment: bool = False, seed: int = 0, grid: str = "red",
           dpi: float = 200, header: Mapping[str, Any] | None = None,
           augmentation: Augmentation = PULSE_AUGMENTATION) -> Image.Image:
  """One paper-ECG image of `record` as an RGB PIL image; see render_page for the arguments."""
  return render_page(record, layout=layout, augment=augment, seed=seed, grid=grid, dpi=dpi, header=header,
                     augmentation=augmentation).image.convert("RGB")


def render_page(record: EcgRecord, *, layout: str = "3x4", augment: bool = False, seed: int = 0,
                grid: str = "red", dpi: float = 200, header: Mapping[str, Any] | None = None,
                augmentation: Augmentation = PULSE_AUGMENTATION) -> RenderedEcg:
  """Renders `record` as a printed 12-lead sheet, with its layout metadata.

  Args:
    record: the 12-lead ECG (signal float32[12, T] in mV); its first PAPER_SECONDS are drawn.
    layout: one of LAYOUTS ('3x4' has the lead-II rhythm strip).
    augment: draw PULSE-style augmentations (see Augmentation) from `seed`.
    seed: seeds the one numpy Generator all effects draw from; unused without `augment`.
    grid: one of GRID_COLOURS ('none': plain paper).
    dpi: page resolution; 200 gives 2200 x 1700 px.
    header: printed above the grid like a machine printout: keys 'id', 'age', 'sex', 'heart_rate_bpm',
      'pr_ms', 'qrs_ms', 'qt_ms', 'qtc_ms', 'qrs_axis_deg' (see printout_header); None values are left out,
      other keys print as 'key: value'. An augmented sheet prints it with probability p_header.
    augmentation: effect probabilities and ranges for `augment`.

  Returns:
    RenderedEcg: the image (mode P standard, RGB augmented; `encode` writes either) and a RenderInfo.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
  if grid not in GRID_COLOURS:
    raise ValueError(f"unknown grid colour {grid!r}; expected one of {', '.join(GRID_COLOURS)}")
  if not dpi >= 10:
    raise ValueError(f"dpi {dpi} is too low for a readable sheet (at least 10)")
  request = Plan(layout=layout, grid=grid, dpi=dpi, show_header=header is not None)
  if augment:
    plan_rng, texture_rng = np.random.default_rng(seed).spawn(2)
    plan, effects = sample_plan(plan_rng, augmentation, request, layouts=tuple(LAYOUTS), grids=tuple(GRID_COLOURS),
                                fonts=tuple(_FONT_FILES))
  else:
    plan, texture_rng, effects = request, None, {}

  sheet = _sheet(plan)
  grid_top = _HEADER_BAND_MM if plan.show_header else _TOP_MARGIN_MM
  grid_rect = (_GRID_X_MM[0], grid_top, _GRID_X_MM[1],
               grid_top + (PAPER_MM[1] - _FOOTER_MM - grid_top) // MAJOR_MM * MAJOR_MM)
  rows = _rows(LAYOUTS[plan.layout], grid_rect[1], grid_rect[3])
  levels = _AUGMENTED_LEVELS if augment else _STANDARD_LEVELS
  # Standard ink is drawn with value 4, so reduce() turns each 2x2 block into its coverage level 0..4: the ink's
  # part of the palette index, with no quantising pass. Augmented ink keeps 0..255 until after blurring.
  full_ink = 255 if augment else levels[1] - 1
  ink = _ink_layer(record, sheet, rows, full_ink)
  _draw_text(ink, sheet, rows, grid_rect, plan.font, header if plan.show_header else None, full_ink)
  has_grid = GRID_COLOURS[plan.grid] is not None
  if not augment:
    grid_index = _grid_index(sheet, grid_rect, levels) if has_grid else Image.new("L", ink.size, 0)
    image = _compose(grid_index, ink, plan, levels)
  else:  # the scanner's geometry acts on the layers before they are quantised: 2 L images cost less than 1 RGB
    grid_index = (scanned(_grid_strength(sheet, grid_rect), plan).point(_level_lut(*levels)) if has_grid
                  else Image.new("L", ink.size, 0))
    ink = scanned(ink, plan).point(_level_lut(levels[1], 1))
    image = photo_effects(_compose(grid_index, ink, plan, levels).convert("RGB"), plan, texture_rng)
  placements = _placements(record, sheet, rows)
  if plan.rotation_deg:
    placements = [_rotated(p, plan.rotation_deg, image.size) for p in placements]

  info = RenderInfo(record_id=record.record_id, width=image.width, height=image.height, dpi=plan.dpi,
                    px_per_mm=(sheet.px_per_mm_x, sheet.px_per_mm_y), layout=plan.layout, grid=plan.grid,
                    augmented=augment, seed=seed, effects=effects, leads=tuple(placements))
  return RenderedEcg(image=image, info=info)


def printout_header(record: EcgRecord, measurements: Any = None) -> dict[str, Any]:
  """The header a cart prints for `record`: id, age and sex, plus rate, PR, QRS, QT/QTc and QRS axis from a
  measure.Measurements when given (its other fields are not printed)."""
  header = {"id": record.record_id, "age": record.age, "sex": record.sex}
  if measurements is not None:
    header.update({key: getattr(measurements, key) for _, keys, _ in _MEASUREMENT_LINES for key in keys})
  return header


def variant_seed(record_id: str, variant: int, base_seed: int = 0) -> int:
  """A 64-bit seed from (base seed, record id, variant index): stable across runs, machines and shard orders."""
  digest = hashlib.blake2b(f"{base_seed}:{record_id}:{variant}".encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little")


def render_variants(record: EcgRecord, *, base_seed: int = 0, **kwargs: Any) -> tuple[RenderedEcg, RenderedEcg]:
  """PULSE's 1:1 mix for one record: (variant 0 standard, variant 1 augmented), each seeded by variant_seed.

  `kwargs` go to render_page (layout, grid, dpi, header, augmentation).
  """
  return tuple(render_page(record, augment=bool(variant), seed=variant_seed(record.record_id, variant, base_seed),
                           **kwargs) for variant in (0, 1))


def encode(image: Image.Image, fmt: str = "png", *, jpeg_quality: int = 90) -> bytes:
  """PNG or JPEG bytes of a rendered image, with settings chosen for a million-image dataset.

  PNG: palette (standard) sheets at zlib level 6 (~60 KB at 200 dpi, ~20 ms), RGB ones at level 1 (noise leaves
  little to compress anyway), never `optimize`. JPEG (Pillow's 4:2:0 chroma) is the container to use for
  augmented sheets: noise and resampling make their lossless PNGs ~1.7 MB and slow to write; JPEG ~0.9 MB.
  """
  buffer = io.BytesIO()
  if fmt == "png":
    image.save(buffer, "PNG", compress_level=_PNG_LEVEL.get(image.mode, 1), optimize=False)
  elif fmt == "jpeg":
    image.convert("RGB").save(buffer, "JPEG", quality=jpeg_quality)
  else:
    raise ValueError(f"unknown image format {fmt!r}; expected 'png' or 'jpeg'")
  return buffer.getvalue()


def _sheet(plan: Plan) -> _Sheet:
  px_per_mm = plan.dpi / MM_PER_INCH
  sx, sy = px_per_mm * plan.aspect, px_per_mm / plan.aspect
  return _Sheet(width=round(PAPER_MM[0] * sx), height=round(PAPER_MM[1] * sy), px_per_mm_x=sx, px_per_mm_y=sy,
                origin_x=plan.shift_mm[0] * sx, origin_y=plan.shift_mm[1] * sy)


def _rows(layout_rows: tuple[tuple[str, ...], ...], top_mm: float, bottom_mm: float) -> list[_Row]:
  """Splits the grid height evenly between the layout's rows; row i's c leads share PAPER_SECONDS in order."""
  pitch = (bottom_mm - top_mm) / len(layout_rows)
  rows = []
  for i, leads in enumerate(layout_rows):
    window = PAPER_SECONDS / len(leads)
    top = top_mm + i * pitch
    rows.append(_Row(top_mm=top, bottom_mm=top + pitch, baseline_mm=top + _BASELINE_IN_ROW * pitch,
                     cells=tuple((lead, k * window, (k + 1) * window) for k, lead in enumerate(leads))))
  return rows


def _sample_range(record: EcgRecord, t0: float, t1: float) -> tuple[int, int]:
  """Samples [start, end) whose times fall in [t0, t1), clipped to the record."""
  n = record.signal.shape[1]
  start, end = (min(math.ceil(t * record.fs - 1e-9), n) for t in (t0, t1))
  return start, end


@functools.lru_cache(maxsize=8)
def _grid_strength(sheet: _Sheet, rect_mm: tuple[float, float, float, float]) -> Image.Image:
  """L image of the grid inside rect_mm: 0 paper, _MINOR_STRENGTH on 1 mm lines, _MAJOR_STRENGTH on 5 mm lines.

  Cached per geometry, like _grid_index; callers never draw on either. Lines are whole pixels (1 px minor,
  0.2 mm major), so their spacing alternates like a real scan's (7/8 px per mm at 200 dpi) while the mean
  period is exact.
  """
  strength = np.zeros((sheet.height, sheet.width), np.uint8)
  left, top, right, bottom = rect_mm
  steps_x = np.arange(round((right - left) / MINOR_MM) + 1)
  steps_y = np.arange(round((bottom - top) / MINOR_MM) + 1)
  major_every = round(MAJOR_MM / MINOR_MM)
  major_px = max(1, round(_MAJOR_WIDTH_MM * min(sheet.px_per_mm_x, sheet.px_per_mm_y)))

  def pixels(centres: np.ndarray, width: int, limit: int) -> np.ndarray:
    first = np.round(centres - width / 2).astype(np.int64)
    index = (first[:, None] + np.arange(width)).ravel()
    return index[(index >= 0) & (index < limit)]

  x_centres, y_centres = sheet.x(left + steps_x * MINOR_MM), sheet.y(top + steps_y * MINOR_MM)
  span_x = slice(max(0, round(x_centres[0] - major_px / 2)), max(0, round(x_centres[-1] + major_px / 2)))
  span_y = slice(max(0, round(y_centres[0] - major_px / 2)), max(0, round(y_centres[-1] + major_px / 2)))
  for value, every, width in ((_MINOR_STRENGTH, 1, 1), (_MAJOR_STRENGTH, major_every, major_px)):
    strength[span_y, pixels(x_centres[steps_x % every == 0], width, sheet.width)] = value
    strength[pixels(y_centres[steps_y % every == 0], width, sheet.height), span_x] = value
  return Image.fromarray(strength)


@functools.lru_cache(maxsize=8)
def _grid_index(sheet: _Sheet, rect_mm: tuple[float, float, float, float], levels: tuple[int, int]) -> Image.Image:
  """The grid layer quantised to levels[0] steps and scaled by levels[1]: its part of the palette index."""
  return _grid_strength(sheet, rect_mm).point(_level_lut(*levels))


def _ink_layer(record: EcgRecord, sheet: _Sheet, rows: list[_Row], full: int) -> Image.Image:
  """L image of ink coverage (0 none .. `full` solid): calibration pulses, traces and column ticks drawn at
  _SUPERSAMPLE x and box-reduced."""
  ss = _SUPERSAMPLE
  canvas = Image.new("L", (sheet.width * ss, sheet.height * ss), 0)
  draw = ImageDraw.Draw(canvas)
  width = max(1, round(_TRACE_WIDTH_MM * sheet.px_per_mm_y * ss))

  def line(x_mm, y_mm) -> None:
    draw.line(np.column_stack([sheet.x(x_mm) * ss, sheet.y(y_mm) * ss]).ravel().tolist(), fill=full, width=width)

  pulse_w, pulse_h = CALIBRATION_S * MM_PER_S, CALIBRATION_MV * MM_PER_MV
  for row in rows:
    b, x = row.baseline_mm, _PULSE_X_MM
    line([x, x + 1, x + 1, x + 1 + pulse_w, x + 1 + pulse_w, x + 2 + pulse_w], [b, b, b - pulse_h, b - pulse_h, b, b])
    for k, (lead, t0, t1) in enumerate(row.cells):
      if k:
        tick_x = _TRACE_X_MM + t0 * MM_PER_S
        line([tick_x, tick_x], [b - _SEPARATOR_MM, b + _SEPARATOR_MM])
      start, end = _sample_range(record, t0, t1)
      if end - start < 2:
        continue
      x_px = sheet.x(_TRACE_X_MM + np.arange(start, end) / record.fs * MM_PER_S) * ss
      y_px = sheet.y(b - record.lead(lead)[start:end].astype(np.float64) * MM_PER_MV) * ss
      if x_px.size > 2 * (x_px[-1] - x_px[0] + 1):
        x_px, y_px = _pixel_envelope(x_px, y_px)
      draw.line(np.column_stack([x_px, y_px]).ravel().tolist(), fill=full, width=width)
  return canvas.reduce(ss)


def _pixel_envelope(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Reduces a polyline with several samples per pixel column to each column's two extremes, visited in the
  order the trace enters them: drawing cost stops growing with fs while QRS peaks survive (decimation cuts them)."""
  column = np.floor(x).astype(np.int64)
  starts = np.flatnonzero(np.diff(column, prepend=column[0] - 1))
  low, high = np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts)
  high_first = np.abs(y[starts] - high) < np.abs(y[starts] - low)
  extremes = np.where(high_first[:, None], np.column_stack([high, low]), np.column_stack([low, high]))
  return np.repeat(column[starts] + 0.5, 2), extremes.ravel()


@functools.lru_cache(maxsize=32)
def _font(family: str, size_px: int) -> ImageFont.FreeTypeFont:
  return ImageFont.truetype(str(pathlib.Path(matplotlib.get_data_path(), "fonts", "ttf", _FONT_FILES[family])),
                            size_px)


def _draw_text(ink: Image.Image, sheet: _Sheet, rows: list[_Row], grid_rect: tuple[float, float, float, float],
               family: str, header: Mapping[str, Any] | None, full: int) -> None:
  """Draws lead labels, the footer and the optional header onto the ink layer with value `full` (at full
  resolution: FreeType anti-aliases the glyphs itself)."""
  draw = ImageDraw.Draw(ink)
  pt_px = MM_PER_INCH / 72 * sheet.px_per_mm_y
  label_font, text_font = (_font(family, max(6, round(points * pt_px))) for points in (_LABEL_PT, _TEXT_PT))

  def text(x_mm: float, y_mm: float, string: str, font=text_font, anchor: str = "la") -> None:
    draw.text((float(sheet.x(x_mm)), float(sheet.y(y_mm))), string, fill=full, font=font, anchor=anchor)

  label_mm = _LABEL_PT * MM_PER_INCH / 72
  for row in rows:
    drop = min(_LABEL_DROP_MM, row.bottom_mm - row.baseline_mm - label_mm)
    for lead, t0, _ in row.cells:
      text(_TRACE_X_MM + t0 * MM_PER_S + 1.0, row.baseline_mm + drop, lead, font=label_font)
  text(grid_rect[0], grid_rect[3] + 3.0, f"{MM_PER_S:g}mm/s     {MM_PER_MV:g}mm/mV")
  if header is None:
    return
  line_mm = 1.6 * _TEXT_PT * MM_PER_INCH / 72
  known = {key for _, keys, _ in _PATIENT_LINES + _MEASUREMENT_LINES for key in keys}
  extra = [(str(key), (key,), "") for key in header if key not in known]
  for x_mm, value_x_mm, lines in ((grid_rect[0], None, _PATIENT_LINES), (80.0, 135.0, _MEASUREMENT_LINES),
                                  (160.0, None, extra)):
    y_mm = 8.0
    for label, keys, unit in lines:
      values = [_header_value(header.get(key)) for key in keys]
      if not any(values):
        continue
      value = "/".join(v or "-" for v in values) + (f" {unit}" if unit else "")
      if value_x_mm is None:
        text(x_mm, y_mm, f"{label}: {value}")
      else:
        text(x_mm, y_mm, label)
        text(value_x_mm, y_mm, value, anchor="ra")
      y_mm += line_mm


def _header_value(value: Any) -> str:
  """Printed form of one header value: numbers rounded to integers, '' for missing (None, NaN)."""
  if value is None:
    return ""
  if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
    return "" if math.isnan(float(value)) else f"{float(value):.0f}"
  return str(value)


def _placements(record: EcgRecord, sheet: _Sheet, rows: list[_Row]) -> list[LeadPlacement]:
  """Each printed segment's pixel box (time window x row band, clipped to the page), baseline and samples."""
  placements = []
  for row in rows:
    top, bottom = (round(float(sheet.y(mm))) for mm in (row.top_mm, row.bottom_mm))
    baseline_y = float(sheet.y(row.baseline_mm))
    for lead, t0, t1 in row.cells:
      x0, x1 = (float(sheet.x(_TRACE_X_MM + t * MM_PER_S)) for t in (t0, t1))
      start, end = _sample_range(record, t0, t1)
      box = (max(0, round(x0)), max(0, top), min(sheet.width, round(x1)), min(sheet.height, bottom))
      placements.append(LeadPlacement(lead=lead, box=box,
                                      baseline=(x0, baseline_y, x1, baseline_y), t_start_s=t0,
                                      t_end_s=max(t0, min(t1, end / record.fs)), start_sample=start,
                                      end_sample=end))
  return placements


@functools.lru_cache(maxsize=64)
def _level_lut(levels: int, stride: int) -> list[int]:
  """point() table quantising 0..255 to `levels` evenly spaced steps, scaled by `stride`."""
  return [round(v * (levels - 1) / 255) * stride for v in range(256)]


def _compose(grid_index: Image.Image, ink_index: Image.Image, plan: Plan, levels: tuple[int, int]) -> Image.Image:
  """The grid and ink index layers (grid level * ink levels, ink level) as one palette image.

  Palette entry (g, k) is the grid colour at strength g (paper -> minor -> major, piecewise linear) blended
  towards the ink colour by coverage k, times the paper tint; every colour is exact, no quantiser runs.
  """
  grid_levels, ink_levels = levels
  index = ImageChops.add(grid_index, ink_index)
  paper = np.full(3, 255.0)
  major, minor = (np.asarray(c, np.float64) for c in (GRID_COLOURS[plan.grid] or (paper, paper)))
  strength = np.linspace(0.0, 1.0, grid_levels)[:, None]
  grid_rgb = np.where(strength <= 0.5, paper + (minor - paper) * 2 * strength,
                      minor + (major - minor) * (2 * strength - 1))
  coverage = np.linspace(0.0, 1.0, ink_levels)[None, :, None]
  rgb = (grid_rgb[:, None, :] * (1 - coverage) + np.asarray(plan.ink) * coverage) * np.asarray(plan.tint)
  index.putpalette(np.round(rgb).clip(0, 255).astype(np.uint8).tobytes())
  return index


def _rotated(placement: LeadPlacement, angle_deg: float, size: tuple[int, int]) -> LeadPlacement:
  """The placement after Image.rotate(angle_deg) about the image centre (counter-clockwise on screen)."""
  cx, cy = size[0] / 2, size[1] / 2
  c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))

  def turn(x: float, y: float) -> tuple[float, float]:
    return cx + (x - cx) * c + (y - cy) * s, cy - (x - cx) * s + (y - cy) * c

  left, top, right, bottom = placement.box
  corners = [turn(x, y) for x in (left, right) for y in (top, bottom)]
  xs, ys = [p[0] for p in corners], [p[1] for p in corners]
  box = (max(0, math.floor(min(xs))), max(0, math.floor(min(ys))), min(size[0], math.ceil(max(xs))),
         min(size[1], math.ceil(max(ys))))
  x0, y0, x1, y1 = placement.baseline
  return dataclasses.replace(placement, box=box, baseline=(*turn(x0, y0), *turn(x1, y1)))


# --- command line -------------------------------------------------------------------------------------------

_EXTENSION_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def _dpi(text: str) -> float:
  dpi = float(text)
  if not dpi >= 10:
    raise argparse.ArgumentTypeError(f"{text} is too low for a readable sheet (at least 10)")
  return dpi


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("record", help="WFDB record path (with or without .hea)")
  parser.add_argument("--out", required=True, type=pathlib.Path, help="output image; format from .png/.jpg")
  parser.add_argument("--layout", choices=list(LAYOUTS), default="3x4")
  parser.add_argument("--augment", action="store_true", help="draw PULSE-style augmentations from --seed")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--grid", choices=list(GRID_COLOURS), default="red")
  parser.add_argument("--dpi", type=_dpi, default=200.0, help="page resolution (200: 2200 x 1700 px)")
  parser.add_argument("--no-header", action="store_true", help="leave out the printed patient/measurement header")
  parser.add_argument("--sidecar", action="store_true",
                      help="also write OUT with a .json suffix: each lead's pixel box and time window")


def run(args: argparse.Namespace) -> None:
  # readers (wfdb, pandas, h5py) and measure (scipy.signal) are imported here: the rendering API needs neither.
  from pulse_jax.ecg import measure, readers

  fmt = _EXTENSION_FORMATS.get(args.out.suffix.lower())
  if fmt is None:
    raise ImageError(f"{args.out}: unsupported image extension; use one of {', '.join(_EXTENSION_FORMATS)}")
  record = readers.read_wfdb(args.record)
  header = None
  if not args.no_header:
    try:
      measurements = measure.measure(record)
    except RecordError as e:  # an unmeasurable trace still renders; its header just lacks the intervals
      print(f"pulse-jax render: measurements left out of the header: {e}", file=sys.stderr)
      measurements = None
    header = printout_header(record, measurements)
  rendered = render_page(record, layout=args.layout, augment=args.augment, seed=args.seed, grid=args.grid,
                         dpi=args.dpi, header=header)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_bytes(encode(rendered.image, fmt))
  if args.sidecar:
    args.out.with_suffix(".json").write_text(json.dumps(rendered.info.to_json(), indent=1))
  print(f"{args.out}: {rendered.info.width}x{rendered.info.height} {rendered.info.layout}"
        f"{' augmented' if args.augment else ''}")
