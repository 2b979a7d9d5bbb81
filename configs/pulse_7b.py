"""PULSE-7B: llava-v1.6-vicuna-7b (CLIP ViT-L/14-336 + mlp2x_gelu + Vicuna-7B), anyres with the flat merge.

Model facts: ../shared/reference/pulse_paper.md §5.1 (PULSE trains with mm_patch_merge_type 'flat', so no
image_newline and 576 features per 336 px view).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      vision=dict(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16, image_size=336,
                  patch_size=14, feature_layer=-2, feature_select="default"),
      text=dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                num_kv_heads=32, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-5,
                max_position_embeddings=4096),
      image_token_id=32000,
      merge_mode="flat",
      grid_pinpoints=((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)),
      param_dtype="float32",
      dtype="bfloat16",
      remat="full",
  ))
  return config
