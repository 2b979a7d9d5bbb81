"""Paper-ECG renderer: geometry measured on the image, layouts, determinism, augmentations, sidecar and CLI."""

import dataclasses
import io
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pulse_jax import cli
from pulse_jax.ecg import measure, render
from pulse_jax.ecg.leads import STANDARD_LEADS
from pulse_jax.ecg.record import EcgRecord, Provenance
from pulse_jax.errors import RecordError

PX_PER_MM_200 = 200 / 25.4
NO_EFFECTS = render.Augmentation(**{f.name: 0.0 for f in dataclasses.fields(render.Augmentation)
                                    if f.name.startswith("p_")})


def make_record(signal: np.ndarray, fs: float, record_id: str = "synthetic") -> EcgRecord:
  return EcgRecord(signal=np.asarray(signal, np.float32), fs=fs, labels=(),
                   provenance=Provenance(source="synthetic", record_id=record_id, path=""))


def sine_record(fs: float = 500.0, seconds: float = 10.0, amplitude: float = 0.1, record_id: str = "sine"):
  t = np.arange(round(fs * seconds)) / fs
  return make_record(np.tile(amplitude * np.sin(2 * np.pi * 1.3 * t), (12, 1)), fs, record_id)


def ink_mask(image: Image.Image) -> np.ndarray:
  """Pixels of the (near-black) ink: red channel dark. Every grid colour keeps red >= 150."""
  return np.asarray(image.convert("RGB"))[:, :, 0] < 128


def placement(info: render.RenderInfo, lead: str) -> render.LeadPlacement:
  return next(p for p in info.leads if p.lead == lead)


def test_page_size_and_scales_at_200_dpi():
  page = render.render_page(sine_record())
  assert page.image.size == (2200, 1700)
  assert render.render(sine_record()).mode == "RGB"
  info = page.info.to_json()
  assert info["px_per_mm"] == pytest.approx([PX_PER_MM_200] * 2)
  assert info["px_per_s"] == pytest.approx(25 * PX_PER_MM_200)  # 196.85 px/s
  assert info["px_per_mv"] == pytest.approx(10 * PX_PER_MM_200)  # 78.74 px/mV


def test_step_signal_lands_on_expected_rows_and_columns():
  fs = 500.0
  t = np.arange(5000) / fs
  signal = np.tile(0.05 * np.sin(2 * np.pi * t), (12, 1))
  signal[0] = np.where(t >= 1.0, 1.0, 0.0)  # lead I: 0 mV, then 1 mV from t = 1 s
  page = render.render_page(make_record(signal, fs))
  ink = ink_mask(page.image)
  lead_i = placement(page.info, "I")
  x0, baseline, _, _ = lead_i.baseline
  px_per_s, px_per_mv = 25 * PX_PER_MM_200, 10 * PX_PER_MM_200

  def ink_rows(t_s: float) -> np.ndarray:
    column = int(x0 + t_s * px_per_s)
    return np.flatnonzero(ink[lead_i.box[1]:lead_i.box[3], column]) + lead_i.box[1]

  assert ink_rows(0.5).mean() == pytest.approx(baseline, abs=1.5)
  assert ink_rows(2.0).mean() == pytest.approx(baseline - px_per_mv, abs=1.5)
  # The step is a vertical stroke spanning both levels, at t = 1 s.
  top, bottom = round(baseline - px_per_mv) + 4, round(baseline) - 4
  stroke = np.flatnonzero(ink[top:bottom, lead_i.box[0]:lead_i.box[2]].all(axis=0)) + lead_i.box[0]
  assert stroke.size and stroke.mean() == pytest.approx(x0 + 1.0 * px_per_s, abs=2)


def test_calibration_pulse_is_10_mm_tall_and_5_mm_wide():
  page = render.render_page(sine_record(amplitude=0.02))
  lead_i = placement(page.info, "I")
  baseline = lead_i.baseline[1]
  left_of_trace = ink_mask(page.image)[lead_i.box[1]:lead_i.box[3], :lead_i.box[0] - 2]
  rows = np.flatnonzero(left_of_trace.any(axis=1)) + lead_i.box[1]
  assert baseline - rows.min() == pytest.approx(10 * PX_PER_MM_200, abs=2.5)  # 1 mV = 10 mm
  top_row = left_of_trace[rows.min() - lead_i.box[1] + 1]
  assert np.count_nonzero(top_row) == pytest.approx(5 * PX_PER_MM_200, abs=3)  # 0.2 s = 5 mm


def test_grid_period_measured_from_the_image():
  page = render.render_page(sine_record(amplitude=0.02), grid="red")
  rgb = np.asarray(page.image.convert("RGB")).astype(int)
  lead_i = placement(page.info, "I")
  y = round(lead_i.baseline[1] - 15 * PX_PER_MM_200)  # inside the grid, 15 mm above the trace: no ink
  row = rgb[y, lead_i.box[0]:page.info.leads[3].box[2]]
  major, minor = render.GRID_COLOURS["red"]

  def period(colours) -> float:
    on = np.isin(row @ [65536, 256, 1], [r * 65536 + g * 256 + b for r, g, b in colours])
    starts = np.flatnonzero(on & ~np.r_[False, on[:-1]])
    return float(np.diff(starts).mean())

  assert period([major]) == pytest.approx(5 * PX_PER_MM_200, abs=0.15)
  assert period([major, minor]) == pytest.approx(PX_PER_MM_200, abs=0.15)


EXPECTED_WINDOWS = {  # printed order with each segment's [t0, t1) in s
    "3x4": [(lead, 2.5 * k, 2.5 * k + 2.5) for row in render.LAYOUTS["3x4"][:3] for k, lead in enumerate(row)]
           + [("II", 0.0, 10.0)],
    "6x2": [(lead, 5.0 * k, 5.0 * k + 5.0) for row in render.LAYOUTS["6x2"] for k, lead in enumerate(row)],
    "12x1": [(lead, 0.0, 10.0) for lead in STANDARD_LEADS],
}


@pytest.mark.parametrize("layout", list(render.LAYOUTS))
def test_layout_boxes_are_disjoint_inside_the_page_with_expected_windows(layout):
  info = render.render_page(sine_record(), layout=layout, dpi=100).info
  assert sorted({p.lead for p in info.leads}) == sorted(STANDARD_LEADS)
  for p in info.leads:
    left, top, right, bottom = p.box
    assert 0 <= left < right <= info.width and 0 <= top < bottom <= info.height
  for a, b in itertools.combinations(info.leads, 2):
    assert (a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]), (a, b)
  # Printed order (top to bottom, left to right) and each segment's time window.
  printed = sorted(info.leads, key=lambda p: (p.box[1], p.box[0]))
  assert [(p.lead, p.t_start_s, p.t_end_s) for p in printed] == EXPECTED_WINDOWS[layout]
  for p in info.leads:
    assert (p.start_sample, p.end_sample) == (round(p.t_start_s * 500), round(p.t_end_s * 500))


def test_3x4_printed_reading_order():
  assert render.LAYOUTS["3x4"] == (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"),
                                   ("II",))


def test_short_record_draws_what_exists_and_long_record_its_first_10_s():
  short = render.render_page(sine_record(seconds=5.0), dpi=100).info
  assert placement(short, "V1").start_sample == placement(short, "V1").end_sample == 2500  # [5, 7.5) s: nothing
  rhythm = short.leads[-1]
  assert (rhythm.lead, rhythm.t_end_s, rhythm.end_sample) == ("II", 5.0, 2500)
  long = render.render_page(sine_record(seconds=30.0), dpi=100).info
  assert long.leads[-1].end_sample == 5000


def test_high_rate_spike_survives_pixel_envelope():
  fs = 5000.0
  signal = np.zeros((12, 50_000), np.float32)
  signal[:, ::7] = 0.01  # not flat
  signal[1, 10_001:10_004] = 2.0  # a 0.6 ms, 2 mV spike in lead II at t = 2 s
  page = render.render_page(make_record(signal, fs), dpi=100)
  rhythm = page.info.leads[-1]
  x0, baseline, _, _ = rhythm.baseline
  column = round(x0 + 2.0 * 25 * 100 / 25.4)
  ink = ink_mask(page.image)[:, column - 2:column + 3].any(axis=1)
  top = np.flatnonzero(ink[rhythm.box[1]:rhythm.box[3]]).min() + rhythm.box[1]
  assert baseline - top == pytest.approx(2 * 10 * 100 / 25.4, abs=2)


def test_standard_png_is_a_small_palette_image():
  page = render.render_page(sine_record())
  assert page.image.mode == "P" and len(page.image.getcolors()) <= 16
  png = render.encode(page.image)
  assert png.startswith(b"\x89PNG") and len(png) < 200_000
  assert Image.open(io.BytesIO(png)).size == (2200, 1700)
  jpeg = render.encode(page.image, "jpeg")
  assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_same_record_and_seed_give_the_same_bytes():
  record = sine_record()
  for augment in (False, True):
    first = render.encode(render.render(record, augment=augment, seed=7, dpi=100))
    assert first == render.encode(render.render(record, augment=augment, seed=7, dpi=100))


def test_different_seeds_give_different_augmented_images():
  record = sine_record()
  images = [np.asarray(render.render(record, augment=True, seed=seed, dpi=100)) for seed in range(4)]
  for a, b in itertools.combinations(images, 2):
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_grid_removal():
  record = sine_record()
  page = render.render_page(record, augment=True, dpi=100, augmentation=dataclasses.replace(NO_EFFECTS, p_no_grid=1.0))
  assert page.info.grid == "none" and page.info.effects == {"no_grid": True}
  rgb = np.asarray(page.image).astype(int)
  assert np.abs(rgb[:, :, 0] - rgb[:, :, 1]).max() < 24  # near-grey ink on white: no red grid left
  plain = np.asarray(render.render(record, grid="none", dpi=100))
  assert set(map(tuple, plain.reshape(-1, 3))) <= {(v, v, v) for v in range(256)}


@pytest.mark.parametrize("seed", range(4))
def test_augmented_output_decodes_with_plausible_size(seed):
  page = render.render_page(sine_record(record_id=f"r{seed}"), augment=True, seed=seed, dpi=100,
                            header={"id": "r", "heart_rate_bpm": 70})
  assert page.image.mode == "RGB" and page.image.size == (page.info.width, page.info.height)
  assert 0.4 * 1100 <= page.info.width <= 1.2 * 1100 and 0.4 * 850 <= page.info.height <= 1.2 * 850
  for fmt in ("png", "jpeg"):
    decoded = Image.open(io.BytesIO(render.encode(page.image, fmt)))
    assert decoded.size == page.image.size
    assert 120 < np.asarray(decoded.convert("L")).mean() < 255  # mostly paper, some ink
  for p in page.info.leads:
    assert 0 <= p.box[0] < p.box[2] <= page.info.width and 0 <= p.box[1] < p.box[3] <= page.info.height


def test_every_effect_at_once_renders():
  always = render.Augmentation(**{f.name: 1.0 for f in dataclasses.fields(render.Augmentation)
                                  if f.name.startswith("p_") and f.name != "p_no_grid"})
  page = render.render_page(sine_record(), augment=True, seed=1, dpi=100, header={"id": "x"}, augmentation=always)
  assert set(page.info.effects) == {"layout", "grid", "header", "dpi", "aspect", "shift_mm", "rotation_deg", "tint",
                                    "blur_px", "wrinkle_depth", "creases", "noise_sigma", "jpeg_quality"}
  assert page.info.layout != "3x4" and page.info.grid != "red"


def test_rotated_baselines_follow_the_ink():
  record = make_record(np.zeros((12, 5000)), 500.0)
  rotate = dataclasses.replace(NO_EFFECTS, p_rotation=1.0)
  page = render.render_page(record, augment=True, seed=0, grid="none", dpi=100, augmentation=rotate)
  assert abs(page.info.effects["rotation_deg"]) > 0.5
  ink = np.asarray(page.image.convert("L")) < 200  # a rotated 1-px line is spread over two rows
  for p in page.info.leads:
    x0, y0, x1, y1 = p.baseline
    points = [(x0 + f * (x1 - x0), y0 + f * (y1 - y0)) for f in np.linspace(0.1, 0.9, 9)]
    assert all(ink[round(y) - 1:round(y) + 2, round(x)].any() for x, y in points), p


def test_header_moves_the_grid_down_and_prints_values():
  record = sine_record()
  bare = render.render_page(record, dpi=100)
  named = render.render_page(record, dpi=100, header={"id": "x"})
  measured = render.render_page(record, dpi=100, header={"id": "x", "heart_rate_bpm": 61.0, "qrs_axis_deg": None})
  assert named.info.leads[0].box[1] > bare.info.leads[0].box[1]
  band = (0, 0, 1100, named.info.leads[0].box[1])
  assert np.asarray(named.image.crop(band)).tolist() != np.asarray(measured.image.crop(band)).tolist()


def test_printout_header_uses_measurement_fields():
  record = dataclasses.replace(sine_record(), age=63.0, sex="F")
  measurements = type("M", (), {"heart_rate_bpm": 72.0, "pr_ms": 160.0, "qrs_ms": 90.0, "qt_ms": 380.0,
                                "qtc_ms": 410.0, "qrs_axis_deg": 45.0, "rr_cv": 0.01})()
  header = render.printout_header(record, measurements)
  assert header == {"id": "sine", "age": 63.0, "sex": "F", "heart_rate_bpm": 72.0, "pr_ms": 160.0, "qrs_ms": 90.0,
                    "qt_ms": 380.0, "qtc_ms": 410.0, "qrs_axis_deg": 45.0}


def test_variants_are_standard_then_augmented_with_derived_seeds():
  record = sine_record(record_id="ptbxl-00001")
  standard, augmented = render.render_variants(record, dpi=100)
  assert not standard.info.augmented and augmented.info.augmented
  assert augmented.info.seed == render.variant_seed("ptbxl-00001", 1)
  seeds = {render.variant_seed(rid, v, base) for rid in ("a", "b") for v in (0, 1) for base in (0, 1)}
  assert len(seeds) == 8 and render.variant_seed("a", 1) == render.variant_seed("a", 1)
  again = render.render_variants(record, dpi=100)
  assert render.encode(again[1].image) == render.encode(augmented.image)


@pytest.mark.parametrize("name", ["00001_lr", "s0010_re"])
def test_cli_renders_real_records_with_sidecar(real_ecg_dir, tmp_path, name, capsys):
  out = tmp_path / f"{name}.png"
  status = cli.main(["render", str(real_ecg_dir / "wfdb" / name), "--out", str(out), "--dpi", "100", "--sidecar"])
  assert status == 0, capsys.readouterr().err
  assert Image.open(out).size == (1100, 850)
  sidecar = json.loads(out.with_suffix(".json").read_text())
  assert sidecar["record_id"] == name and sidecar["layout"] == "3x4" and len(sidecar["leads"]) == 13
  assert sidecar["px_per_s"] == pytest.approx(25 * 100 / 25.4)
  first = sidecar["leads"][0]
  assert first["lead"] == "I" and first["t_start_s"] == 0.0 and first["t_end_s"] == 2.5
  assert len(first["box"]) == 4 and first["end_sample"] > first["start_sample"]


def test_cli_augmented_jpeg_and_layout(real_ecg_dir, tmp_path):
  out = tmp_path / "sheet.jpg"
  status = cli.main(["render", str(real_ecg_dir / "wfdb" / "s0010_re"), "--out", str(out), "--dpi", "80",
                     "--augment", "--seed", "3", "--layout", "6x2", "--grid", "blue", "--no-header"])
  assert status == 0
  assert Image.open(out).format == "JPEG"


def test_cli_bad_record_is_one_line_error(tmp_path, capsys):
  bad = tmp_path / "broken.hea"
  bad.write_text("this is not a wfdb header\n")
  status = cli.main(["render", str(bad), "--out", str(tmp_path / "x.png")])
  err = capsys.readouterr().err.strip()
  assert status == 1 and "broken" in err and len(err.splitlines()) == 1
  assert not (tmp_path / "x.png").exists()


def test_cli_unknown_extension_is_one_line_error(real_ecg_dir, tmp_path, capsys):
  status = cli.main(["render", str(real_ecg_dir / "wfdb" / "00001_lr"), "--out", str(tmp_path / "x.gif")])
  err = capsys.readouterr().err.strip()
  assert status == 1 and "x.gif" in err and len(err.splitlines()) == 1


def test_cli_renders_without_intervals_when_measurement_fails(real_ecg_dir, tmp_path, monkeypatch, capsys):
  def unmeasurable(record):
    raise RecordError(f"{record.record_id}: found 1 QRS complexes, need at least 3 to measure")

  monkeypatch.setattr(measure, "measure", unmeasurable)
  out = tmp_path / "sheet.png"
  assert cli.main(["render", str(real_ecg_dir / "wfdb" / "00001_lr"), "--out", str(out), "--dpi", "60"]) == 0
  assert "measurements left out" in capsys.readouterr().err and out.exists()


def test_importable_without_jax():
  code = "import sys, pulse_jax.ecg.render; sys.exit('jax' in sys.modules)"
  assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
