"""Synthetic ECG sheets with known findings, as model inputs, for the image-only commands (probe-image,
pretrain-tower): each page is a record synthesised to show a spec, rendered as a paper sheet at the synthetic
builders' 100 dpi (augmented or not) and preprocessed into the model's padded anyres views."""

import dataclasses
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from pulse_jax.data.image_processor import for_model, preprocess
from pulse_jax.ecg import render, synth
from pulse_jax.models.config import PulseConfig

DPI = 100  # the synthetic ECGInstruct / ECGBench builders' resolution


@dataclasses.dataclass(frozen=True)
class Pages:
  """Rendered pages and what they show: pixel_values float16[N, V, 3, S, S] (float16 halves the host memory of
  thousands of pages; consumers cast to the model's dtype), image_sizes int[N, 2], labels int[N, ...] (the
  caller's class indices per page)."""
  pixel_values: np.ndarray
  image_sizes: np.ndarray
  labels: np.ndarray


def render_pages(specs: Sequence[synth.EcgSpec], labels: np.ndarray, augmented: Sequence[bool],
                 config: PulseConfig, *, first_seed: int, desc: str = "render", progress: bool = False) -> Pages:
  """Page i shows specs[i], synthesised and rendered from seed first_seed + i, augmented if augmented[i]."""
  processor = for_model(config)
  tile = config.vision.image_size
  pixel_values = np.zeros((len(specs), config.max_views, 3, tile, tile), np.float16)
  sizes = np.zeros((len(specs), 2), np.int32)
  for i in tqdm(range(len(specs)), desc=desc, disable=not progress):
    seed = first_seed + i
    record = synth.synthesize(specs[i], seed=seed)
    page = render.render_page(record, augment=bool(augmented[i]), seed=seed, dpi=DPI).image.convert("RGB")
    image = preprocess(page, processor, name=f"{desc} page {i}")
    pixel_values[i, :len(image.pixel_values)] = image.pixel_values
    sizes[i] = image.image_size
  return Pages(pixel_values=pixel_values, image_sizes=sizes, labels=np.asarray(labels))
