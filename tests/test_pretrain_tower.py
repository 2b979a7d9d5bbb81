"""`pulse-jax pretrain-tower`: sheets, the tower classifier and the checkpoint it hands to training."""

import numpy as np
import pytest
from flax import nnx

from pulse_jax import cli, pretrain_tower, probe
from pulse_jax.config import apply_overrides, load_config, model_config
from pulse_jax.convert import orbax_params
from pulse_jax.demo import DEMO_OVERRIDES
from pulse_jax.errors import ConfigError
from pulse_jax.models import PulseModel


@pytest.fixture(scope="module")
def demo_config():
  return apply_overrides(load_config("configs/tiny.py"), list(DEMO_OVERRIDES))


def test_sheets_show_only_pairs_synth_can_draw_deterministically(demo_config):
  pages = pretrain_tower.draw_pages(24, model_config(demo_config.model), first_seed=0)
  assert pages.labels.shape == (24, 2) and pages.pixel_values.shape[0] == 24
  pairs = {(pretrain_tower.RHYTHMS[r], c) for r, c in pages.labels}
  assert not pairs & pretrain_tower._EXCLUDED and len(pairs) > 6
  again = pretrain_tower.draw_pages(24, model_config(demo_config.model), first_seed=0)
  np.testing.assert_array_equal(again.pixel_values, pages.pixel_values)  # deterministic in the seed


def test_a_share_of_sheets_show_short_records_as_code15_holds_them(demo_config, monkeypatch):
  drawn = {}
  monkeypatch.setattr(pretrain_tower.synthetic_pages, "render_pages", lambda *args, **kwargs: drawn.update(kwargs))
  pretrain_tower.draw_pages(1000, model_config(demo_config.model), first_seed=0)
  assert set(drawn["seconds"]) == {pretrain_tower.SHORT_RECORD_SECONDS, 10.0}
  short = np.mean(drawn["seconds"] == pretrain_tower.SHORT_RECORD_SECONDS)
  assert abs(short - pretrain_tower.SHORT_RECORD_SHARE) < 0.05


@pytest.mark.slow
def test_pretraining_changes_only_the_tower_and_writes_a_model_for_init_from(demo_config, tmp_path, capsys):
  model_cfg = model_config(demo_config.model)
  params, results = pretrain_tower.pretrain(
      demo_config, pretrain_tower.Recipe(pages=8, held_out=4, steps=2, batch=4, learning_rate=1e-3), eval_every=1)
  assert [r["step"] for r in results] == [1, 2] and all(np.isfinite(r["loss"]) for r in results)
  fresh = nnx.to_pure_dict(nnx.state(PulseModel(model_cfg, rngs=nnx.Rngs(0)), nnx.Param))
  tower = params["vision_tower"]["embeddings"]["patch_embedding"]["kernel"]
  assert not np.allclose(tower, fresh["vision_tower"]["embeddings"]["patch_embedding"]["kernel"])
  np.testing.assert_array_equal(params["language_model"]["lm_head"]["kernel"],
                                fresh["language_model"]["lm_head"]["kernel"])

  assert cli.main(["pretrain-tower", "--demo-model", "--out", str(tmp_path / "tower"), "--pages", "4",
                   "--held-out", "2", "--steps", "1", "--batch", "4"]) == 0
  assert "held-out accuracy rhythm" in capsys.readouterr().out
  restored, config, _ = orbax_params.restore(tmp_path / "tower")
  assert config == model_cfg and restored["vision_tower"]["embeddings"]["patch_embedding"]["kernel"].shape == \
      tower.shape
  # probe-image starts from it when the config names it (and keeps it frozen when told to).
  probe_config = apply_overrides(demo_config, [f"checkpoint.init_from='{tmp_path / 'tower'}'",
                                               "train.frozen='^vision_tower/'"])
  probe.probe(probe_config, pages=12, held_out=4, steps=1, eval_every=1)
  assert f"initialised from {tmp_path / 'tower'}" in capsys.readouterr().out


def test_bad_sizes_are_config_errors(demo_config):
  with pytest.raises(ConfigError, match="pretrain-tower needs --pages >= --batch"):
    pretrain_tower.pretrain(demo_config, pretrain_tower.Recipe(pages=2, held_out=1, steps=1, batch=4), eval_every=1)
