"""A CPU-sized PULSE for the demo and the tests: the same architecture and image handling, tiny dimensions.

  pulse-jax train --config configs/tiny.py --workdir runs/tiny
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  # Trained from scratch, so the random init matters: the text initializer_range is 128^-1/2 (unit-gain layers)
  # instead of Vicuna's 0.02, which at this width shrinks every layer's output ~4x and so the image's features
  # on their way to the loss (README, The demo). The tower follows CLIP's own width-scaled init.
  config.model = ml_collections.ConfigDict(dict(
      vision=dict(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4, image_size=112,
                  patch_size=14, feature_layer=-2, feature_select="default"),
      text=dict(vocab_size=1025, hidden_size=128, intermediate_size=352, num_layers=4, num_heads=4,
                num_kv_heads=2, head_dim=32, rope_theta=10000.0, rms_norm_eps=1e-5,
                max_position_embeddings=1024, initializer_range=0.088),
      image_token_id=1024,
      merge_mode="flat",
      # The llava-v1.6 pinpoints scaled to 112 px tiles: 1x2, 2x1, 2x2, 1x3, 3x1 grids, as PULSE.
      grid_pinpoints=((112, 224), (224, 112), (224, 224), (336, 112), (112, 336)),
      # Pixels normalised with the statistics of the ECG pages themselves (synthetic 12-lead sheets, standard and
      # augmented, as 112 px global views), not CLIP's: a page is ~94% white paper, which CLIP's statistics leave
      # as a large input common to every patch, and a tower trained from scratch then never learns to see the
      # traces (README, The demo). tests/test_config.py measures them again.
      image_mean=(0.94, 0.87, 0.85), image_std=(0.08, 0.09, 0.10),
      param_dtype="float32",
      dtype="float32",
      remat="none",
      attention="auto",
  ))
  # Stand-in examples until the ECGInstruct pipeline lands: up to 5 views x 64 features + ~30 text tokens.
  config.data = ml_collections.ConfigDict(dict(
      source="standin", num_examples=64, eval_examples=16, seq_len=384, seed=0))
  # The TFDS datasets (`pulse-jax build-data`) and the grain pipeline that reads them (pulse_jax.data.pipeline):
  # the synthetic configs need no files; `tokenizer` must have as many pieces as model.image_token_id.
  config.data.update(dict(
      builder="ecg_instruct/synthetic", bench_builder="ecg_bench/synthetic", data_dir="", manual_dir="",
      tokenizer="", mixture=dict(ptbxl=1.0, mimic=1.0, code15=1.0), eval_split="validation", buckets=(),
      workers=0))
  # The PULSE recipe at CPU scale: a few steps, a larger learning rate so that the loss visibly moves.
  config.train = ml_collections.ConfigDict(dict(
      global_batch=8, grad_accum_steps=1, epochs=3, steps=0, learning_rate=1e-3, warmup_ratio=0.03,
      weight_decay=0.0, grad_clip=1.0, adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, frozen=r"^vision_tower/",
      seed=0, log_every=4, eval_every=12, eval_batches=2, log_data_order=False))
  # Every local device on the fsdp axis (8 fake CPU devices in the tests, 1 on a plain CPU).
  config.mesh = ml_collections.ConfigDict(dict(ici=(1, -1, 1), dcn=(1, 1, 1), rules="fsdp"))
  config.checkpoint = ml_collections.ConfigDict(dict(every=8, keep=2, init_from=""))
  # `pulse-jax eval` (pulse_jax.evaluate): greedy answers of at most 64 tokens, 8 per call; sets=() runs every set
  # the ECGBench build holds; buckets=() uses decode's default length buckets; judge off (offline proxy) while
  # judge.base_url is "".
  config.eval = ml_collections.ConfigDict(dict(
      sets=(), batch_size=8, max_new_tokens=64, buckets=(), temperature=0.0, top_p=1.0, seed=0,
      judge=dict(base_url="", model="gpt-4o-2024-08-06", api_key_env="OPENAI_API_KEY")))
  return config
