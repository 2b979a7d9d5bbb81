"""Batched greedy generation throughput: pulse_jax.decode.generate vs transformers' generate, same weights.

The model is benchmarks/forward.py's (vision 256 x 4 layers, LM 512 x 8 layers, vocab 8192, spatial_unpad,
fp32 on CPU), saved with save_pretrained and loaded into pulse-jax with pulse_jax.convert.hf.load. A batch of
rows, each one image (global view + a 1 x 3 tile grid) and text around it, all of one prompt length (so
transformers needs no padding), generates up to --new-tokens tokens greedily with eos "</s>" (2) on both sides
and the image token suppressed on both sides. Time is one whole call (prefill included; pulse-jax also pads the
prompt to its length bucket), the best of --repeats calls after a compiling / warm-up one, the two sides taking
turns so that both meet the same load on a shared machine; tokens/s counts the tokens actually generated (eos
excluded). The greedy tokens of both sides are compared and their agreement printed. Prints the machine's load
average (the CPU is shared), both figures and, last, the ratio.

  python benchmarks/generate.py [--batch 8] [--new-tokens 128] [--repeats 2] [--torch-device cuda]

On a GPU machine JAX runs on the GPU by itself; --torch-device cuda puts the peer there too (benchmarks/cuda_check.sh).
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import best_seconds, report  # noqa: E402
from benchmarks.forward import IMAGE_SIZE, IMAGE_TOKEN, TILE, build_peer  # noqa: E402
from pulse_jax import decode  # noqa: E402
from pulse_jax.convert import hf  # noqa: E402
from pulse_jax.models import feature_layout, num_image_tokens  # noqa: E402

EOS, PAD = 2, 0
TEXT_BEFORE, TEXT_AFTER = 8, 24  # tokens around the image, as "<s> USER: <image>\n question ASSISTANT:"


def make_prompts(config, batch: int):
  rng = np.random.default_rng(0)
  n_image = num_image_tokens(IMAGE_SIZE, config)
  ids = np.concatenate([rng.integers(3, IMAGE_TOKEN, (batch, TEXT_BEFORE)), np.full((batch, n_image), IMAGE_TOKEN),
                        rng.integers(3, IMAGE_TOKEN, (batch, TEXT_AFTER))], 1).astype(np.int32)
  pixels = rng.normal(size=(batch, config.max_views, 3, TILE, TILE)).astype(np.float32)
  sizes = np.tile(np.array([IMAGE_SIZE]), (batch, 1))
  return ids, pixels, sizes


def answers(rows: np.ndarray) -> list[list[int]]:
  """Each row's tokens up to (excluding) its first eos."""
  out = []
  for row in rows.tolist():
    out.append(row[:row.index(EOS)] if EOS in row else row)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--new-tokens", type=int, default=128, help="max_new_tokens on both sides")
  parser.add_argument("--repeats", type=int, default=2, help="timed calls after a warm-up one (best reported)")
  parser.add_argument("--torch-device", default="cpu", help="where the transformers peer runs (cpu, cuda)")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  # Both sides in full float32: on a GPU, JAX's default matrix precision is TF32 and PyTorch's is not, which would
  # make the sides compute different functions (and their greedy tokens part at near-ties).
  jax.config.update("jax_default_matmul_precision", "highest")
  load_before = os.getloadavg()

  peer = build_peer().eval()
  with tempfile.TemporaryDirectory() as folder:
    peer.save_pretrained(folder)
    model, config = hf.load(folder)
  peer = peer.to(args.torch_device)
  ids, pixels, sizes = make_prompts(config, args.batch)
  layout = feature_layout(sizes, config)

  ours = {}

  def jax_generate():
    ours["tokens"], ours["lengths"] = decode.generate(
        model, config, list(ids), pixels, layout, max_new_tokens=args.new_tokens, eos_id=EOS, pad_id=PAD)

  theirs = {}
  t_ids, t_pixels, t_sizes = (torch.tensor(a).to(args.torch_device) for a in (ids.astype(np.int64), pixels, sizes))

  def torch_generate():
    with torch.no_grad():
      out = peer.generate(input_ids=t_ids, pixel_values=t_pixels, image_sizes=t_sizes, do_sample=False,
                          max_new_tokens=args.new_tokens, eos_token_id=EOS, pad_token_id=PAD,
                          suppress_tokens=[IMAGE_TOKEN])
    theirs["answers"] = answers(out[:, ids.shape[1]:].cpu().numpy())  # waits for the device

  # Warm-up (compilation), then the two sides take turns.
  jax_generate()
  torch_generate()
  jax_times, torch_times = [], []
  for _ in range(args.repeats):
    jax_times.append(best_seconds(jax_generate, repeats=1, warmup=0))
    torch_times.append(best_seconds(torch_generate, repeats=1, warmup=0))
  jax_time, torch_time = min(jax_times), min(torch_times)

  our_answers = [ours["tokens"][row, :n].tolist() for row, n in enumerate(ours["lengths"])]
  our_count, their_count = sum(map(len, our_answers)), sum(map(len, theirs["answers"]))
  agree = sum(a == b for a, b in zip(our_answers, theirs["answers"]))
  bucket = decode.bucket_length(ids.shape[1])
  print(f"devices: pulse-jax {jax.devices()[0].device_kind}, transformers {args.torch_device}; "
        f"{os.cpu_count()} CPU cores")
  print(f"config: vision 256 x 4, LM 512 x 8, vocab 8192, fp32; batch {args.batch} x "
        f"{ids.shape[1]}-token prompts ({num_image_tokens(IMAGE_SIZE, config)} image tokens; pulse-jax bucket "
        f"{bucket}), greedy, max_new_tokens {args.new_tokens}")
  print(f"load average before / after: {' '.join(f'{x:.2f}' for x in load_before)} / "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  seconds = lambda times: " ".join(f"{t:.2f}" for t in times)
  print(f"call times (s): pulse-jax {seconds(jax_times)} ({our_count} tokens), transformers {seconds(torch_times)} "
        f"({their_count} tokens); identical answers: {agree}/{args.batch} rows")
  report("batched greedy generation tokens/s", "tokens/s", our_count / jax_time, their_count / torch_time,
         "transformers")


if __name__ == "__main__":
  main()
