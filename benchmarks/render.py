"""Paper-ECG images per second on one core: pulse-jax's renderer vs a plain matplotlib renderer of the same page.

Both draw the same 3x4 + rhythm-strip sheet (2200 x 1700 px at 200 dpi: 1 mm / 5 mm grid, calibration pulses,
traces, lead labels) for a fixed set of synthetic 10 s, 500 Hz records, encoding included (PNG). The peer is
matplotlib Agg used well (one Figure per image, the grid as two LineCollections), the way ecg-image-kit draws.
Also prints pulse-jax's augmented throughput (PNG and JPEG) and, for context, ecg-image-kit's own figures.
The process is pinned to one CPU, BLAS/OpenMP pools to one thread, and timed in process CPU seconds (best of
--repeats passes after a warm-up): on a machine shared with other jobs wall time measures the neighbours too.
Prints the ratio last.

  python benchmarks/render.py [--records 16] [--repeats 3]
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ[_var] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import best_seconds, report  # noqa: E402
from pulse_jax.ecg import render, synth  # noqa: E402
from pulse_jax.ecg.record import EcgRecord  # noqa: E402

# ecg-image-kit 1.x on this machine kind (2 vCPU, Python 3.11), one 2200 x 1700 image at 200 dpi: measured
# seconds per image without distortions and with its augment step (noise + rotation + crop + colour
# temperature), whose PNGs are ~10 MB.
ECG_IMAGE_KIT_PLAIN_S, ECG_IMAGE_KIT_AUGMENTED_S, ECG_IMAGE_KIT_AUGMENTED_MB = 0.93, 3.2, 10.0


def records(n: int) -> list[EcgRecord]:
  rng = np.random.default_rng(0)
  return [synth.synthesize(synth.sample_spec(rng), seed=i, record_id=f"bench-{i}") for i in range(n)]


def matplotlib_page(record: EcgRecord, info: render.RenderInfo) -> bytes:
  """The standard sheet drawn with matplotlib at the same pixel positions as pulse-jax's (from `info`)."""
  dpi, (px_per_mm, _) = info.dpi, info.px_per_mm
  figure = Figure(figsize=(info.width / dpi, info.height / dpi), dpi=dpi)
  FigureCanvasAgg(figure)
  axes = figure.add_axes((0, 0, 1, 1))
  axes.set_xlim(0, info.width)
  axes.set_ylim(info.height, 0)
  axes.axis("off")
  major, minor = (tuple(c / 255 for c in rgb) for rgb in render.GRID_COLOURS["red"])
  for colour, step_mm, width in ((minor, render.MINOR_MM, 0.36), (major, render.MAJOR_MM, 0.6)):
    xs = np.arange(0, info.width, step_mm * px_per_mm)
    ys = np.arange(0, info.height, step_mm * px_per_mm)
    segments = [((x, 0), (x, info.height)) for x in xs] + [((0, y), (info.width, y)) for y in ys]
    axes.add_collection(LineCollection(segments, colors=[colour], linewidths=width))
  px_per_s, px_per_mv = render.MM_PER_S * px_per_mm, render.MM_PER_MV * px_per_mm
  for row_start in {p.box[1]: p for p in reversed(info.leads)}.values():
    x, b, mm = row_start.baseline[0] - 7 * px_per_mm, row_start.baseline[1], px_per_mm
    pulse_w, pulse_h = render.CALIBRATION_S * px_per_s, render.CALIBRATION_MV * px_per_mv
    axes.plot([x, x + mm, x + mm, x + mm + pulse_w, x + mm + pulse_w, x + 2 * mm + pulse_w],
              [b, b, b - pulse_h, b - pulse_h, b, b], color="k", linewidth=0.75)
  for p in info.leads:
    samples = record.lead(p.lead)[p.start_sample:p.end_sample]
    x = p.baseline[0] + np.arange(samples.size) / record.fs * px_per_s
    axes.plot(x, p.baseline[1] - samples * px_per_mv, color="k", linewidth=0.75)
    axes.text(p.baseline[0] + px_per_mm, p.baseline[1] + 4 * px_per_mm, p.lead, fontsize=10, va="top")
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  return buffer.getvalue()


def throughput(step, n_images: int, repeats: int) -> float:
  """Images per CPU second of step() (which makes n_images), best of `repeats` passes after one warm-up."""
  return n_images / best_seconds(step, repeats=repeats, clock=time.process_time)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--records", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  recs = records(args.records)
  infos = [render.render_page(r).info for r in recs]
  seeds = [render.variant_seed(r.record_id, 1) for r in recs]
  sizes: dict[str, list[int]] = {}

  def run(name: str, make_bytes) -> None:
    sizes[name] = [len(make_bytes(i)) for i in range(len(recs))]

  ours_std = throughput(lambda: run("std", lambda i: render.encode(render.render_page(recs[i]).image)),
                        len(recs), args.repeats)
  peer_std = throughput(lambda: run("peer", lambda i: matplotlib_page(recs[i], infos[i])), len(recs), args.repeats)
  augmented = lambda i: render.render_page(recs[i], augment=True, seed=seeds[i]).image  # noqa: E731
  ours_aug_jpeg = throughput(lambda: run("aug_jpeg", lambda i: render.encode(augmented(i), "jpeg")), len(recs),
                             args.repeats)
  ours_aug_png = throughput(lambda: run("aug_png", lambda i: render.encode(augmented(i), "png")), len(recs),
                            args.repeats)
  kb = {name: np.mean(values) / 1024 for name, values in sizes.items()}

  print(f"paper-ECG images on one core: 3x4 + rhythm strip, 2200 x 1700 px at 200 dpi, {len(recs)} synthetic "
        f"10 s / 500 Hz records, encoding included (CPU time, best of {args.repeats} passes)")
  print(f"  pulse-jax standard PNG   : {ours_std:6.1f} img/s, mean {kb['std']:7.0f} KB")
  print(f"  matplotlib standard PNG  : {peer_std:6.1f} img/s, mean {kb['peer']:7.0f} KB")
  print(f"  pulse-jax augmented JPEG : {ours_aug_jpeg:6.1f} img/s, mean {kb['aug_jpeg']:7.0f} KB")
  print(f"  pulse-jax augmented PNG  : {ours_aug_png:6.1f} img/s, mean {kb['aug_png']:7.0f} KB")
  print(f"ecg-image-kit (this machine kind): {ECG_IMAGE_KIT_PLAIN_S} s/img plain, {ECG_IMAGE_KIT_AUGMENTED_S} s/img "
        f"augmented (~{ECG_IMAGE_KIT_AUGMENTED_MB:g} MB PNGs)")
  print(f"  speedup vs ecg-image-kit : standard {ours_std * ECG_IMAGE_KIT_PLAIN_S:.0f}x, augmented "
        f"{ours_aug_jpeg * ECG_IMAGE_KIT_AUGMENTED_S:.0f}x (JPEG) / {ours_aug_png * ECG_IMAGE_KIT_AUGMENTED_S:.0f}x "
        "(PNG)")
  report("standard 3x4 PNG pages per second, one core", "img/s", ours_std, peer_std, "matplotlib Agg")


if __name__ == "__main__":
  main()
