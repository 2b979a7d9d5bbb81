"""Training-step throughput of a small PULSE: pulse-jax's jitted train step vs transformers + torch.optim.AdamW.

The model, weights and batch are those of benchmarks/forward.py (vision 256 x 4, LM 512 x 8, batch 4, each row
one image in a 1 x 3 anyres grid plus 256 text tokens, spatial_unpad so that both sides do the same work, fp32 on
CPU). One step on each side is the PULSE recipe: forward, loss over the text tokens, backward with the vision
tower frozen (no gradients for it on either side), gradient clipping to global norm 1.0, AdamW (lr 2e-5,
b1 0.9, b2 0.999, eps 1e-8, weight decay 0). Ours is pulse_jax.train.make_train_step on a one-device mesh, the
same function `pulse-jax train` runs. Prints tokens/s for both and, last, the ratio.

  python benchmarks/train_step.py [--steps 3] [--profile] [--remat dots_saveable]

--profile then runs one more pulse-jax step under the JAX profiler and prints where XLA's op time goes by kind
(benchmarks.op_profile.profile_breakdown). --remat sets pulse-jax's decoder rematerialisation policy (model.remat;
default "none", as the peer stores every activation too).
"""

import argparse
import dataclasses
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import best_seconds, report  # noqa: E402
from benchmarks.forward import IMAGE_SIZE, TEXT_TOKENS, VOCAB, build_peer, loss_weights, make_batch  # noqa
from benchmarks.op_profile import profile_breakdown  # noqa: E402
from pulse_jax import parallel, train  # noqa: E402
from pulse_jax.convert import hf  # noqa: E402
from pulse_jax.models import feature_layout, num_image_tokens  # noqa: E402
from pulse_jax.models.common import REMAT_POLICIES  # noqa: E402

RECIPE = dict(learning_rate=2e-5, warmup_ratio=0.0, grad_clip=1.0, adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8,
              weight_decay=0.0)
TOTAL_STEPS = 1000  # the schedule's length: with no warmup the rate is 2e-5 throughout these few steps


def jax_step(model, config, ids, pixels, sizes):
  """A closure running one jitted pulse-jax train step (state donated and carried over between calls)."""
  mesh = parallel.make_mesh((1, 1, 1), jax.devices()[:1])
  fns = train.make_train_step(config, mesh, rules=parallel.RULES, tx=train.make_optimizer(RECIPE, TOTAL_STEPS),
                              schedule=train.learning_rate_schedule(RECIPE, TOTAL_STEPS), frozen=r"^vision_tower/",
                              global_batch=ids.shape[0], seq_len=ids.shape[1])
  params = jax.device_put(nnx.to_pure_dict(nnx.state(model)), fns.state_shardings["params"])
  state = fns.init_from_params(params)
  loss_mask = np.zeros(ids.shape, bool)
  loss_mask[:, 1:] = loss_weights(ids)[:, :-1] > 0  # target t counts where input t is text
  batch = parallel.global_batch(dict(input_ids=ids, attention_mask=np.ones(ids.shape, bool), loss_mask=loss_mask,
                                     pixel_values=pixels, layout=feature_layout(sizes, config)), mesh)

  def step():
    nonlocal state
    state, metrics = fns.step(state, batch)
    return jax.block_until_ready(metrics)
  return step


def torch_step(peer, ids, pixels, sizes):
  """One transformers step: forward, masked loss, backward, clip, AdamW, with the vision tower frozen."""
  peer.model.vision_tower.requires_grad_(False)
  trained = [p for p in peer.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(trained, lr=RECIPE["learning_rate"], betas=(RECIPE["adam_b1"], RECIPE["adam_b2"]),
                                eps=RECIPE["adam_eps"], weight_decay=RECIPE["weight_decay"])
  t_ids, t_pixels, t_sizes = torch.tensor(ids, dtype=torch.long), torch.tensor(pixels), torch.tensor(sizes)
  targets = torch.tensor(np.roll(ids, -1, axis=1), dtype=torch.long)
  weights = torch.tensor(loss_weights(ids))

  def step():
    optimizer.zero_grad(set_to_none=True)
    logits = peer(input_ids=t_ids, pixel_values=t_pixels, image_sizes=t_sizes).logits
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="none")
    loss = (ce * weights.reshape(-1)).sum() / weights.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trained, RECIPE["grad_clip"])
    optimizer.step()
    return loss
  return step


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=3, help="timed steps per side, alternating (best is reported)")
  parser.add_argument("--profile", action="store_true", help="print pulse-jax's op time by kind (one more step)")
  parser.add_argument("--remat", default="none", choices=("none", *REMAT_POLICIES), help="pulse-jax's model.remat")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  load_before = os.getloadavg()[0]

  peer = build_peer()
  with tempfile.TemporaryDirectory() as folder:
    peer.save_pretrained(folder)
    model, config = hf.load(folder)
  config = dataclasses.replace(config, remat=args.remat)
  ids, pixels, sizes = make_batch(config)
  tokens = ids.size

  ours, theirs = jax_step(model, config, ids, pixels, sizes), torch_step(peer, ids, pixels, sizes)
  ours(), theirs()  # compile / warm up
  # Alternating single steps, so that both sides see the same (shared-machine) load; the best of each is kept.
  times = [(best_seconds(ours, repeats=1, warmup=0), best_seconds(theirs, repeats=1, warmup=0))
           for _ in range(args.steps)]
  jax_time, torch_time = min(t[0] for t in times), min(t[1] for t in times)
  print(f"config: vision 256 x 4 (frozen), LM 512 x 8, batch {ids.shape[0]} x {ids.shape[1]} tokens "
        f"({num_image_tokens(IMAGE_SIZE, config)} image + {TEXT_TOKENS} text), fp32, AdamW + clip 1.0, "
        f"{os.cpu_count()} CPU cores, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
  print(f"step time: pulse-jax (remat {config.remat}) {jax_time:.3f} s, transformers + torch AdamW {torch_time:.3f} s")
  if args.profile:
    print("pulse-jax op time by kind (one profiled step): " + ", ".join(
        f"{kind} {share:.0%}" for kind, share in profile_breakdown(ours)))
  report("train step tokens/s", "tokens/s", tokens / jax_time, tokens / torch_time, "transformers")


if __name__ == "__main__":
  main()
