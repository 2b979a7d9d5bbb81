"""Train-step time, tokens/s and MFU of any config on the accelerators JAX finds (GPU, TPU; CPU runs too).

Times the step `pulse-jax train` runs (pulse_jax.train.make_train_step: the config's mesh, shardings, remat,
frozen tower, AdamW, gradient accumulation) on one stand-in batch of the config's shape, without the input
pipeline or checkpoints, which are not what is measured. MFU is pulse_jax.flops' model FLOPs per step over the
devices' bf16 peak (pulse_jax.flops.PEAK_FLOPS; not reported where the peak is unknown, as on CPUs). There is no
peer on the accelerator: this is the figure the training issue asks to record for CUDA (benchmarks/cuda_check.sh).

  python benchmarks/train_throughput.py --config configs/pulse_7b.py --steps 10 \\
      --config.model.text.num_layers=8 --config.train.global_batch=8 --config.data.seq_len=3072

Several hosts (a TPU pod slice) run the same command on every host, as `pulse-jax train`.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from pulse_jax import flops, parallel, train  # noqa: E402
from pulse_jax.config import accept_config_overrides, apply_overrides, load_config, model_config  # noqa: E402
from pulse_jax.models import kernels  # noqa: E402

STANDIN_EXAMPLES = 8  # examples of the stand-in source: the step always takes the first global batch of them


def measure(config, steps: int) -> dict[str, float | str | None]:
  """Compiles the config's train step, runs it `steps` times on one batch and returns the figures."""
  parallel.initialize_distributed()
  mesh = parallel.mesh_from_config(config.mesh)
  model_cfg = model_config(config.model)
  t = config.train
  total_steps = max(steps + 1, 100)  # the schedule's length: only the learning rate's value depends on it
  step_fns = train.make_train_step(
      model_cfg, mesh, rules=parallel.logical_rules(config.mesh.rules), tx=train.make_optimizer(t, total_steps),
      schedule=train.learning_rate_schedule(t, total_steps), frozen=t.frozen, global_batch=t.global_batch,
      seq_len=config.data.seq_len, accum_steps=t.grad_accum_steps)
  data = dict(config.data, source="standin", num_examples=max(STANDIN_EXAMPLES, t.global_batch))
  batch, _ = train.input_batches(data, model_cfg, split="train", batch_size=t.global_batch // jax.process_count(),
                                 seed=None).next_global(mesh)
  state = step_fns.init(jnp.int32(t.seed))
  start = time.perf_counter()
  state, metrics = step_fns.step(state, batch)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):  # dispatched back to back, as the training loop does; waited for once
    state, metrics = step_fns.step(state, batch)
  jax.block_until_ready(metrics)
  step_seconds = (time.perf_counter() - start) / steps
  vision_trained = train.trains_any(step_fns.abstract_state["params"]["vision_tower"], t.frozen, "vision_tower")
  step_flops = flops.train_step_flops(model_cfg, batch=t.global_batch, seq_len=batch["input_ids"].shape[1],
                                      vision_trained=vision_trained)
  device = jax.devices()[0]
  peak = flops.peak_flops(device.device_kind)
  memory = (device.memory_stats() or {}).get("peak_bytes_in_use")
  return {
      "device": f"{jax.device_count()} x {device.device_kind}", "compile_s": compile_seconds,
      "attention": kernels.resolve(model_cfg.attention, device.platform, model_cfg.dtype, model_cfg.text.head_dim),
      "step_s": step_seconds, "tokens_per_s": t.global_batch * batch["input_ids"].shape[1] / step_seconds,
      "model_tflop_per_step": step_flops / 1e12, "mfu": step_flops / (step_seconds * jax.device_count() * peak)
      if peak else None, "peak_gib_per_device": memory / 2**30 if memory else None,
      "loss": float(metrics["loss"])}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, metavar="FILE.py[:ARG]")
  parser.add_argument("--steps", type=int, default=10, help="timed steps after the compiling one")
  accept_config_overrides(parser)
  args = parser.parse_args(argv)
  config = apply_overrides(load_config(args.config), args.overrides)
  figures = measure(config, args.steps)
  text, t = config.model.text, config.train
  print(f"config: {args.config} {' '.join(args.overrides)}")
  print(f"  LM {text.hidden_size} x {text.num_layers} layers, batch {t.global_batch} x {config.data.seq_len} tokens,"
        f" remat {config.model.remat}, {config.model.dtype} compute on {config.model.param_dtype} weights")
  print(f"device: {figures['device']}; {figures['attention']} attention; compile {figures['compile_s']:.1f} s; "
        f"loss {figures['loss']:.4f}")
  print(f"step time {figures['step_s']:.4f} s, {figures['tokens_per_s']:,.0f} tokens/s, "
        f"{figures['model_tflop_per_step']:.2f} model TFLOP per step")
  memory = figures["peak_gib_per_device"]
  print(f"peak memory per device: {f'{memory:.1f} GiB' if memory else 'n/a'}")
  mfu = figures["mfu"]
  print(f"MFU: {f'{mfu:.1%}' if mfu is not None else 'n/a (no known peak for this device)'}")


if __name__ == "__main__":
  main()
