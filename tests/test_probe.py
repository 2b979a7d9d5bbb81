"""`pulse-jax probe-image`: pages, batches and a short run (pulse_jax/probe.py)."""

import numpy as np
import pytest

from pulse_jax import cli, probe
from pulse_jax.config import apply_overrides, load_config, model_config
from pulse_jax.demo import DEMO_OVERRIDES
from pulse_jax.errors import ConfigError
from pulse_jax.models import num_image_tokens


@pytest.fixture(scope="module")
def demo_config():
  return apply_overrides(load_config("configs/tiny.py"), list(DEMO_OVERRIDES))


def test_each_page_has_one_answer_which_only_its_image_gives(demo_config):
  model = model_config(demo_config.model)
  pages = probe.render_pages(5, model, first_seed=0)
  assert pages.labels.tolist() == [0, 1, 2, 3, 0]  # the rhythms in turn
  assert np.abs(pages.pixel_values[:, 0]).max() > 0  # every page has its global view
  # Augmentation must not tell the classes apart: every class has as many augmented pages as plain ones.
  augmented = np.array([probe.augmented(page) for page in range(8 * probe.CLASSES)])
  for label in range(probe.CLASSES):
    assert augmented[label::probe.CLASSES].mean() == 0.5

  batch = probe.make_batch(pages, np.array([3, 1]), model, seq_len=128)
  for row, page in enumerate([3, 1]):
    ids = batch["input_ids"][row]
    length = int(batch["attention_mask"][row].sum())
    assert (ids == model.image_token_id).sum() == num_image_tokens(tuple(pages.image_sizes[page]), model)
    assert ids[length - 2] == probe.ANSWER_IDS[pages.labels[page]] and ids[length - 1] == probe.EOS
    assert np.flatnonzero(batch["loss_mask"][row]).tolist() == [length - 2, length - 1]
    # Everything before the answer is the same for every page except the image placeholders' count.
    assert ids[length - 2 - len(probe.PROMPT_IDS):length - 2].tolist() == list(probe.PROMPT_IDS)
  np.testing.assert_array_equal(batch["pixel_values"], pages.pixel_values[[3, 1]].astype(np.float32))


@pytest.mark.slow
def test_probe_trains_and_reports_held_out_accuracy(demo_config, capsys):
  results = probe.probe(demo_config, pages=12, held_out=4, steps=2, eval_every=1)
  assert [r["step"] for r in results] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in results)
  assert all(r["accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0) for r in results)  # 4 held-out pages
  assert "held-out accuracy" in capsys.readouterr().out


def test_conduction_pages_show_each_finding_on_a_sinus_rhythm(demo_config):
  specs = probe.QUESTIONS["conduction"]
  assert {spec.rhythm for spec in specs} == {"sinus_rhythm"}
  assert [spec.findings for spec in specs] == [(), ("first_degree_av_block",), ("right_bundle_branch_block",),
                                               ("left_bundle_branch_block",)]
  pages = probe.render_pages(4, model_config(demo_config.model), first_seed=0, question="conduction")
  assert pages.labels.tolist() == [0, 1, 2, 3]
  with pytest.raises(ConfigError, match="unknown question 'axis'"):
    probe.render_pages(1, model_config(demo_config.model), first_seed=0, question="axis")


def test_too_few_pages_for_a_batch_is_a_config_error(demo_config):
  with pytest.raises(ConfigError, match="--pages 10 must exceed --held-out 4"):
    probe.probe(demo_config, pages=10, held_out=4, steps=1, eval_every=1)


def test_command_line_takes_the_demo_model_and_overrides(capsys):
  assert cli.main(["probe-image", "--demo-model", "--pages", "10", "--held-out", "4"]) == 1
  assert "--pages 10 must exceed --held-out 4 (>= 1) by at least one batch of 8" in capsys.readouterr().err
  assert cli.main(["probe-image", "--config.train.no_such_field=1"]) == 1
  assert "no config field 'train.no_such_field'" in capsys.readouterr().err
