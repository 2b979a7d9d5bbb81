"""Synthetic pages: the same pages whether one process renders them or several."""

import numpy as np

from pulse_jax import synthetic_pages
from pulse_jax.config import load_config, model_config
from pulse_jax.ecg import synth


def test_pages_do_not_depend_on_how_many_processes_render_them(monkeypatch):
  config = model_config(load_config("configs/tiny.py").model)
  specs = [synth.EcgSpec(rhythm=r) for r in ("sinus_rhythm", "atrial_fibrillation", "sinus_bradycardia")] * 2
  augmented = [False, True, False, True, True, False]

  def render():
    return synthetic_pages.render_pages(specs, np.arange(6), augmented, config, first_seed=7)

  in_process = render()
  monkeypatch.setattr(synthetic_pages, "PAGES_PER_CHUNK", 2)  # 3 chunks over the spawned processes
  spread = render()
  np.testing.assert_array_equal(spread.pixel_values, in_process.pixel_values)
  np.testing.assert_array_equal(spread.image_sizes, in_process.image_sizes)
  assert spread.labels.tolist() == list(range(6)) and np.abs(in_process.pixel_values[:, 0]).max() > 0
  # Pages differ with their seed: page i is rendered from first_seed + i whatever chunk holds it.
  assert not np.array_equal(in_process.pixel_values[0], in_process.pixel_values[3])


def test_a_shorter_record_draws_a_different_page():
  config = model_config(load_config("configs/tiny.py").model)
  spec = [synth.EcgSpec(rhythm="sinus_rhythm")]
  pages = [synthetic_pages.render_pages(spec, np.zeros(1), [False], config, first_seed=3, seconds=[s])
           for s in (10.0, 7.0)]
  assert not np.array_equal(pages[0].pixel_values, pages[1].pixel_values)
