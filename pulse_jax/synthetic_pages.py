"""Synthetic ECG sheets with known findings, as model inputs, for the image-only commands (probe-image,
pretrain-tower): each page is a record synthesised to show a spec, rendered as a paper sheet at the synthetic
builders' 100 dpi (augmented or not) and preprocessed into the model's padded anyres views.

A page takes ~45 ms on one core (two thirds of it drawing the sheet), so thousands of them are rendered in chunks
on every core (pulse_jax.processes).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from pulse_jax import processes
from pulse_jax.data.image_processor import for_model, preprocess
from pulse_jax.ecg import render, synth
from pulse_jax.models.config import PulseConfig

DPI = 100  # the synthetic ECGInstruct / ECGBench builders' resolution
PAGES_PER_CHUNK = 64  # a unit of work of one process; fewer pages than two chunks are rendered in this process


@dataclasses.dataclass(frozen=True)
class Pages:
  """Rendered pages and what they show: pixel_values float16[N, V, 3, S, S] (float16 halves the host memory of
  thousands of pages; consumers cast to the model's dtype), image_sizes int[N, 2], labels int[N, ...] (the
  caller's class indices per page)."""
  pixel_values: np.ndarray
  image_sizes: np.ndarray
  labels: np.ndarray


def render_pages(specs: Sequence[synth.EcgSpec], labels: np.ndarray, augmented: Sequence[bool],
                 config: PulseConfig, *, first_seed: int, seconds: Sequence[float] | None = None,
                 desc: str = "render", progress: bool = False) -> Pages:
  """Page i shows specs[i], synthesised (seconds[i] long, default 10 s) and rendered from seed first_seed + i,
  augmented if augmented[i] (the same pages however many processes render them)."""
  seconds = [10.0] * len(specs) if seconds is None else [float(s) for s in seconds]
  tile = config.vision.image_size
  pixel_values = np.zeros((len(specs), config.max_views, 3, tile, tile), np.float16)
  sizes = np.zeros((len(specs), 2), np.int32)
  starts = range(0, len(specs), PAGES_PER_CHUNK)
  chunks = [(list(specs[s:s + PAGES_PER_CHUNK]), [bool(a) for a in augmented[s:s + PAGES_PER_CHUNK]],
             seconds[s:s + PAGES_PER_CHUNK], config, first_seed + s, desc) for s in starts]
  with processes.Workers() as workers, tqdm(total=len(specs), desc=desc, disable=not progress) as bar:
    for start, (chunk_values, chunk_sizes) in zip(starts, workers.map(_render_chunk, chunks)):
      pixel_values[start:start + len(chunk_sizes)], sizes[start:start + len(chunk_sizes)] = chunk_values, chunk_sizes
      bar.update(len(chunk_sizes))
  return Pages(pixel_values=pixel_values, image_sizes=sizes, labels=np.asarray(labels))


def _render_chunk(specs: Sequence[synth.EcgSpec], augmented: Sequence[bool], seconds: Sequence[float],
                  config: PulseConfig, first_seed: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
  """Pages first_seed, first_seed + 1, ... of render_pages: (pixel_values, image_sizes) of len(specs) pages."""
  processor = for_model(config)
  tile = config.vision.image_size
  pixel_values = np.zeros((len(specs), config.max_views, 3, tile, tile), np.float16)
  sizes = np.zeros((len(specs), 2), np.int32)
  for i, (spec, augment, duration) in enumerate(zip(specs, augmented, seconds)):
    seed = first_seed + i
    record = synth.synthesize(spec, seconds=duration, seed=seed)
    page = render.render_page(record, augment=augment, seed=seed, dpi=DPI).image.convert("RGB")
    image = preprocess(page, processor, name=f"{desc} page {seed}")
    pixel_values[i, :len(image.pixel_values)] = image.pixel_values
    sizes[i] = image.image_size
  return pixel_values, sizes
