"""A CPU-sized PULSE for the demo and the tests: the same architecture and image handling, tiny dimensions.

  pulse-jax train --config configs/tiny.py --workdir runs/tiny
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      vision=dict(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4, image_size=112,
                  patch_size=14, feature_layer=-2, feature_select="default"),
      text=dict(vocab_size=1025, hidden_size=128, intermediate_size=352, num_layers=4, num_heads=4,
                num_kv_heads=2, head_dim=32, rope_theta=10000.0, rms_norm_eps=1e-5,
                max_position_embeddings=1024),
      image_token_id=1024,
      merge_mode="flat",
      # The llava-v1.6 pinpoints scaled to 112 px tiles: 1x2, 2x1, 2x2, 1x3, 3x1 grids, as PULSE.
      grid_pinpoints=((112, 224), (224, 112), (224, 224), (336, 112), (112, 336)),
      param_dtype="float32",
      dtype="float32",
      remat="none",
  ))
  return config
