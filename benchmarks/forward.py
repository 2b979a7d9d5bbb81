"""Forward + backward throughput of a small PULSE model: pulse-jax (jit) vs transformers on PyTorch, same weights.

The config follows issue 2: vision hidden 256 x 4 layers, LM hidden 512 x 8 layers, batch 4, each row one image
(global view + 3 tiles in a 1 x 3 anyres grid) and 256 text tokens; the loss is the mean next-token cross-entropy
over the text tokens; fp32 on CPU. Both sides use transformers' LLaVA-NeXT arithmetic (spatial_unpad), so they
do the same work. Prints tokens/s for both and, last, the ratio.

  python benchmarks/forward.py [--steps 3]
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration  # noqa

from benchmarks.common import best_seconds, report  # noqa: E402
from pulse_jax.convert import hf  # noqa: E402
from pulse_jax.models import feature_layout, num_image_tokens  # noqa: E402

TILE, PATCH, VOCAB, IMAGE_TOKEN = 168, 14, 8192, 8191
IMAGE_SIZE = (160, 480)  # fits the (168, 504) pinpoint: a 1 x 3 grid of tiles
BATCH, TEXT_TOKENS = 4, 256


def build_peer() -> LlavaNextForConditionalGeneration:
  torch.manual_seed(0)
  vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                            image_size=TILE, patch_size=PATCH)
  text = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                     num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048)
  config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                           image_grid_pinpoints=[[168, 504], [504, 168], [336, 336]])
  return LlavaNextForConditionalGeneration(config)


def make_batch(config):
  rng = np.random.default_rng(0)
  n_image = num_image_tokens(IMAGE_SIZE, config)
  ids = np.concatenate([rng.integers(3, IMAGE_TOKEN, (BATCH, 8)), np.full((BATCH, n_image), IMAGE_TOKEN),
                        rng.integers(3, IMAGE_TOKEN, (BATCH, TEXT_TOKENS - 8))], 1).astype(np.int32)
  pixels = rng.normal(size=(BATCH, config.max_views, 3, TILE, TILE)).astype(np.float32)
  sizes = np.tile(np.array([IMAGE_SIZE]), (BATCH, 1))
  return ids, pixels, sizes


def loss_weights(ids: np.ndarray) -> np.ndarray:
  """1 where the *target* (next token) is text, so image placeholders never count."""
  w = np.zeros(ids.shape, np.float32)
  w[:, :-1] = ids[:, 1:] != IMAGE_TOKEN
  return w


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=3, help="timed repetitions (best is reported)")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())

  peer = build_peer()
  with tempfile.TemporaryDirectory() as folder:
    peer.save_pretrained(folder)
    model, config = hf.load(folder)
  ids, pixels, sizes = make_batch(config)
  weights = loss_weights(ids)
  tokens = ids.size

  layout = feature_layout(sizes, config)
  targets = np.roll(ids, -1, axis=1)

  @nnx.jit
  def jax_step(model, ids, pixels, layout, targets, weights):
    def loss_fn(model):
      logits = model(ids, pixels, layout=layout)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
      return (ce * weights).sum() / weights.sum()
    return nnx.value_and_grad(loss_fn)(model)

  args_jax = [jnp.asarray(a) for a in (ids, pixels, layout, targets, weights)]
  jax_time = best_seconds(lambda: jax.block_until_ready(jax_step(model, *args_jax)), repeats=args.steps)

  t_ids, t_pixels, t_sizes = torch.tensor(ids, dtype=torch.long), torch.tensor(pixels), torch.tensor(sizes)
  t_targets, t_weights = torch.tensor(targets, dtype=torch.long), torch.tensor(weights)

  def torch_step():
    peer.zero_grad(set_to_none=True)
    logits = peer(input_ids=t_ids, pixel_values=t_pixels, image_sizes=t_sizes).logits
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), t_targets.reshape(-1), reduction="none")
    loss = (ce * t_weights.reshape(-1)).sum() / t_weights.sum()
    loss.backward()
    return loss

  torch_time = best_seconds(torch_step, repeats=args.steps)
  print(f"config: vision 256 x 4, LM 512 x 8, batch {BATCH} x {ids.shape[1]} tokens "
        f"({num_image_tokens(IMAGE_SIZE, config)} image + {TEXT_TOKENS} text), fp32, {os.cpu_count()} CPU cores")
  print(f"step time: pulse-jax {jax_time:.3f} s, transformers {torch_time:.3f} s")
  report("forward + backward tokens/s", "tokens/s", tokens / jax_time, tokens / torch_time, "transformers")


if __name__ == "__main__":
  main()
