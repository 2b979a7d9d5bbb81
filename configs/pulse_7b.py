"""PULSE-7B: llava-v1.6-vicuna-7b (CLIP ViT-L/14-336 + mlp2x_gelu + Vicuna-7B), anyres with the flat merge.

Model facts: ../shared/reference/pulse_paper.md §5.1 (PULSE trains with mm_patch_merge_type 'flat', so no
image_newline and 576 features per 336 px view); the training recipe §5.3-5.4.

  pulse-jax train --config configs/pulse_7b.py[:fsdp|:fsdp_tensor] --workdir gs://BUCKET/runs/pulse_7b

Mesh presets (the argument): `fsdp` (default) shards parameters and optimizer state over every chip of a slice
(ZeRO-3; the batch of 128 splits over the same axis); `fsdp_tensor` adds 4-way tensor parallelism (heads, MLP,
vocabulary) inside each group of 4 chips, for meshes with more chips than batch rows; `serve`, for `pulse-jax
eval` on a slice, keeps the weights whole in each group of 4 chips, split 4 ways (tensor parallelism), and the
groups answer different rows: a decode step then moves activations only, where under FSDP every step
all-gathers every layer's weights. Several slices: add `--config.mesh.dcn=(N,1,1)` for data parallelism across
N slices over DCN.
"""

import ml_collections

from pulse_jax.errors import ConfigError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
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
      attention="auto",  # flash attention: the splash kernel on TPU, cuDNN's on GPU; XLA attention on CPU
  ))
  # ECGInstruct has 1,156,110 conversations: 9,032 steps per epoch at batch 128, 27,096 in 3 epochs. source "tfds"
  # reads the build below; --config.data.source=standin trains on random examples of the same count and length
  # (a dry run of a pod with no data on it), so the schedule is the paper's either way.
  config.data = ml_collections.ConfigDict(dict(
      source="tfds", num_examples=1_156_110, eval_examples=512, seq_len=4096, seed=0))
  # The released ECGInstruct / ECGBench (`pulse-jax build-data --manual-dir DIR`; from_raw rebuilds them) read by
  # pulse_jax.data.pipeline. mixture weighs ECGInstruct's collections (splits): the paper's ablations P, P+M,
  # P+M+C set the others to 0 ("<split>:labelled" keys add a split's label-list questions alone). Most examples
  # are 2,880 image + ~300 text tokens: buckets keep padding short.
  config.data.update(dict(
      builder="ecg_instruct/released", bench_builder="ecg_bench/released", data_dir="", manual_dir="",
      tokenizer="checkpoints/llava-v1.6-vicuna-7b-hf", mixture=dict(ptbxl=1.0, ecgqa=1.0, mimic=1.0, code15=1.0),
      eval_split="validation", buckets=(3072, 3584), workers=16))
  config.train = ml_collections.ConfigDict(dict(
      global_batch=128, grad_accum_steps=1, epochs=3, steps=0, learning_rate=2e-5, warmup_ratio=0.03,
      weight_decay=0.0, grad_clip=1.0, adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, frozen=r"^vision_tower/",
      seed=0, log_every=10, eval_every=0, eval_batches=4, log_data_order=False))
  presets = {"fsdp": dict(ici=(1, -1, 1), rules="fsdp"), "fsdp_tensor": dict(ici=(1, -1, 4), rules="fsdp_tensor"),
             "serve": dict(ici=(-1, 1, 4), rules="fsdp_tensor")}
  if (arg or "fsdp") not in presets:
    raise ConfigError(f"configs/pulse_7b.py:{arg}: unknown mesh preset; known: {sorted(presets)}")
  config.mesh = ml_collections.ConfigDict(dict(dcn=(1, 1, 1), **presets[arg or "fsdp"]))
  # Parameters only from llava-v1.6-vicuna-7b in transformers' format, e.g. from
  # `huggingface-cli download llava-hf/llava-v1.6-vicuna-7b-hf --local-dir checkpoints/llava-v1.6-vicuna-7b-hf`.
  # PULSE saved every 5% of its 27k steps (1,355); saving more often bounds the work a preemption loses.
  config.checkpoint = ml_collections.ConfigDict(dict(
      every=500, keep=3, init_from="checkpoints/llava-v1.6-vicuna-7b-hf"))
  # `pulse-jax eval` as PULSE ran ECGBench: greedy, up to 1024 new tokens. 64 rows per call (a row's bfloat16 KV
  # cache at 3072 + 1024 tokens is ~2.1 GB, sharded with the batch); buckets=() uses decode's defaults, which put
  # ECGBench prompts in 2048 / 2560 / 3072. The paper's judge was GPT-4o: set judge.base_url (an OpenAI-compatible
  # endpoint) and export the key named by judge.api_key_env; "" scores report/arena by the offline proxy only.
  config.eval = ml_collections.ConfigDict(dict(
      sets=(), batch_size=64, max_new_tokens=1024, buckets=(), temperature=0.0, top_p=1.0, seed=0,
      judge=dict(base_url="", model="gpt-4o-2024-08-06", api_key_env="OPENAI_API_KEY")))
  return config
