"""Config files, overrides and the model section."""

import numpy as np
import pytest

from pulse_jax import synthetic_pages
from pulse_jax.config import apply_overrides, load_config, model_config
from pulse_jax.data import image_processor
from pulse_jax.ecg import synth
from pulse_jax.errors import ConfigError
from pulse_jax.models.llava import max_image_tokens
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("name", ["tiny", "pulse_7b"])
def test_shipped_configs_build_a_model_config(name):
  config = model_config(load_config(str(REPO_ROOT / "configs" / f"{name}.py")).model)
  assert config.max_views == 5  # global view + the 2 x 2 grid
  assert max_image_tokens(config) == config.max_views * config.vision.tokens_per_view


def test_pulse_7b_is_the_paper_model():
  config = model_config(load_config(str(REPO_ROOT / "configs" / "pulse_7b.py")).model)
  assert (config.vision.hidden_size, config.vision.num_layers, config.vision.tokens_per_view) == (1024, 24, 576)
  assert (config.text.hidden_size, config.text.num_layers, config.text.num_heads) == (4096, 32, 32)
  assert config.merge_mode == "flat" and config.vision.feature_layer == -2


def test_overrides_parse_and_check_fields():
  config = load_config(str(REPO_ROOT / "configs" / "tiny.py"))
  apply_overrides(config, ["model.text.num_layers=2", "--config.model.merge_mode=spatial_unpad",
                           "model.dtype=bfloat16"])
  assert config.model.text.num_layers == 2 and config.model.merge_mode == "spatial_unpad"
  assert model_config(config.model).dtype == "bfloat16"
  with pytest.raises(ConfigError, match="no config field"):
    apply_overrides(config, ["model.text.num_layer=2"])
  with pytest.raises(ConfigError, match="key=value"):
    apply_overrides(config, ["model.text.num_layers"])
  with pytest.raises(ConfigError):
    apply_overrides(config, ["model.text.num_layers='two'"])


def test_bad_config_files(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    load_config(str(tmp_path / "nope.py"))
  (tmp_path / "empty.py").write_text("x = 1\n")
  with pytest.raises(ConfigError, match="no get_config"):
    load_config(str(tmp_path / "empty.py"))


def test_tiny_normalises_with_the_statistics_of_synthetic_pages():
  """configs/tiny.py's image_mean / image_std are what rendered sheets measure (renderer changes must update them):
  per-channel mean within 0.03 and std within 25% over 112 px global views of 8 standard and 8 augmented sheets
  at the synthetic builders' 100 dpi."""
  config = model_config(load_config(str(REPO_ROOT / "configs" / "tiny.py")).model)
  specs = [synth.EcgSpec(rhythm=rhythm) for rhythm in synth.RHYTHMS for _ in range(4)]
  unit = config.replace(image_mean=(0.0,) * 3, image_std=(1.0,) * 3)  # views in [0, 1] pixels
  pages = synthetic_pages.render_pages(specs, np.zeros(len(specs)), [i % 2 for i in range(len(specs))], unit,
                                       first_seed=0)
  pixels = pages.pixel_values[:, 0].astype(np.float32)
  np.testing.assert_allclose(pixels.mean((0, 2, 3)), config.image_mean, atol=0.03)
  np.testing.assert_allclose(pixels.std((0, 2, 3)), config.image_std, rtol=0.25)
  assert config.image_mean != image_processor.CLIP_MEAN


def test_image_statistics_are_checked():
  config = model_config(load_config(str(REPO_ROOT / "configs" / "tiny.py")).model)
  with pytest.raises(ConfigError, match="image_mean and image_std must be 3 values each"):
    config.replace(image_std=(0.1, 0.0, 0.1))
  with pytest.raises(ConfigError, match="image_mean and image_std must be 3 values each"):
    config.replace(image_mean=(0.5, 0.5))
  assert config.replace(image_mean=[0.5, 0.5, 0.5]).image_mean == (0.5, 0.5, 0.5)  # lists from JSON become tuples
