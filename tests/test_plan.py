"""`pulse-jax plan`: topology names, the scanned-layer FLOPs correction, and ahead-of-time compiles for a small
TPU slice: the tiny config's train step, and PULSE-7B's generation program under the training and the serving
mesh. They go through libtpu, which the test extra installs on x86-64 Linux, where these tests must run;
elsewhere, where no libtpu wheel exists, they are skipped."""

import math
import pathlib
import platform
import re
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from pulse_jax import cli, decode, flops, parallel, plan
from pulse_jax.config import apply_overrides, load_config, model_config
from pulse_jax.errors import ConfigError
from pulse_jax.models.llava import PulseModel, max_image_tokens

TINY = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "tiny.py")
PULSE_7B = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "pulse_7b.py")


def _need_libtpu() -> None:
  """Fails where libtpu should be installed (so CI never skips these quietly); skips where it cannot be."""
  if sys.platform == "linux" and platform.machine() == "x86_64":
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  else:
    pytest.importorskip("libtpu")


@pytest.mark.parametrize("spec, generation, grid", [
    ("v5p-8", "v5p", (2, 2, 1)), ("v5p-64", "v5p", (2, 4, 4)), ("v5p-128", "v5p", (4, 4, 4)),
    ("v5p-256", "v5p", (4, 4, 8)), ("v4-64", "v4", (2, 4, 4)), ("v4-32", "v4", (2, 2, 4)),
    ("v5e-8", "v5e", (2, 4)), ("v5e-256", "v5e", (16, 16)), ("v5e-32", "v5e", (4, 8)), ("v6e-256", "v6e", (16, 16)),
    ("v5p:2x4x4", "v5p", (2, 4, 4)), ("v5e:2x2", "v5e", (2, 2)),
])
def test_slice_names_map_to_google_topologies(spec, generation, grid):
  assert plan.resolve_topology(spec) == (plan.GENERATIONS[generation], grid)


@pytest.mark.parametrize("spec", ["v3-8", "v5p-63", "v5p-12", "v5e:2x2x2", "v5p:2x4", "v5p:0x2x2", "v5p"])
def test_unknown_topologies_are_refused(spec):
  with pytest.raises(ConfigError, match="topology|slices"):
    plan.resolve_topology(spec)


@pytest.mark.parametrize("topology, device_kind", [
    ("v4:2x2x1", "TPU v4"), ("v5p:2x2x1", "TPU v5"), ("v5e:2x2", "TPU v5 lite"), ("v6e:2x2", "TPU v6 lite")])
def test_libtpu_describes_one_device_per_chip(topology, device_kind):
  _need_libtpu()
  devices = plan.tpu_devices(*plan.resolve_topology(topology), num_slices=1)
  assert len(devices) == 4 and {d.device_kind for d in devices} == {device_kind}
  assert flops.peak_flops(device_kind) is not None


def test_cli_reports_a_bad_topology_in_one_line(capsys):
  assert cli.main(["plan", "--config", TINY, "--topology", "v3-8", "--config.train.global_batch=16"]) == 1
  assert "unknown TPU topology 'v3-8'" in capsys.readouterr().err


def test_scanned_layers_are_counted_every_time_they_run():
  """Decoder layers, vision layers and micro-batches are loops, whose bodies XLA's cost analysis (on CPU as on
  TPU) counts once: the corrected count matches the analytic model FLOPs; the raw one falls far short."""
  config = apply_overrides(load_config(TINY), ["model.text.num_layers=2", "train.global_batch=2",
                                               "train.grad_accum_steps=2"])
  model = model_config(config.model)
  assert model.text.num_layers > 1 and model.vision.layers_needed > 1  # all three loops are exercised
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])  # one device compiles fastest
  compiled = plan.compile_train_step(config, mesh, total_steps=100)
  raw = float(compiled.cost_analysis()["flops"]) * mesh.size
  corrected = plan.xla_step_flops(config, mesh, 100, compiled)
  analytic = flops.train_step_flops(model, batch=config.train.global_batch, seq_len=config.data.seq_len)
  assert raw < 0.4 * analytic  # one of two micro-batches, each missing a decoder and a vision layer
  assert 0.85 < corrected / analytic < 1.3  # XLA also counts softmax, norms, the loss and the optimizer


@pytest.fixture(scope="module")
def tiny_plan():
  _need_libtpu()
  # One decoder layer and one vision layer: no scan loop left, so make_plan compiles exactly once.
  config = apply_overrides(load_config(TINY), ["model.text.num_layers=1", "model.vision.feature_layer=-3"])
  return plan.make_plan(config, "v5p-8", examples=800, mfu=0.5)


def test_plan_compiles_tiny_for_a_tpu_slice(tiny_plan):
  p = tiny_plan
  assert (p.topology, p.chips, p.device_kind, p.mesh_shape, p.attention) == (
      "v5p:2x2x1", 4, "TPU v5", {"data": 1, "fsdp": 4, "tensor": 1}, "splash")
  assert p.memory["arguments"] > 0 and p.memory["temporaries"] > 0 and p.memory["program"] > 0
  assert 0 < p.bytes_per_chip < p.hbm_bytes == 95 * plan.GIB and p.fits
  assert 0.85 < p.xla_flops / p.model_flops < 1.3
  assert 0.5 < p.xla_flops / p.six_n_tokens < 3
  assert p.total_steps == 3 * (800 // 8)
  assert p.step_seconds == pytest.approx(p.model_flops / (4 * 459e12 * 0.5))


@pytest.mark.parametrize("attention, kernels", [("auto", 3), ("xla", 0)])
def test_tpu_programs_run_the_splash_kernel_unless_told_not_to(attention, kernels):
  """On a TPU mesh, model.attention "auto" compiles the decoder's attention to the splash kernel's three Mosaic
  calls (forward, dq, dkv: pulse_jax.models.splash); "xla" to none."""
  _need_libtpu()
  config = apply_overrides(load_config(TINY), ["model.text.num_layers=1", "model.vision.feature_layer=-3",
                                               f"model.attention={attention}"])
  mesh = parallel.make_mesh((1, -1, 1), devices=plan.tpu_devices(*plan.resolve_topology("v5p-8"), num_slices=1))
  assert plan.compile_train_step(config, mesh, total_steps=10).as_text().count("tpu_custom_call") == kernels


def test_plan_report(tiny_plan):
  report = plan.format_plan(tiny_plan, "tiny on v5p-8")
  assert report.startswith("tiny on v5p-8: v5p:2x2x1, 4 chips (TPU v5), mesh data=1 fsdp=4 tensor=1, splash attention")
  assert "not the splash kernel's attention" in report
  assert "of 95 GiB HBM: fits" in report and "XLA cost analysis" in report
  assert "300 steps (3 epochs of 800 examples)" in report and "assumed MFU of 50%" in report


def test_a_counting_variant_too_large_for_hbm_leaves_the_plan_without_xla_flops(monkeypatch):
  """A step can fit where a variant compiled only to count its loops does not (PULSE-7B on v4-64, whose variant
  without decoder layers needs more HBM): the plan reports the fit and why XLA's FLOPs are missing."""
  _need_libtpu()
  compile_step = plan.compile_train_step

  def exhausted_without_decoder_layers(config, mesh, total_steps):
    if config.model.text.num_layers == 0:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM")
    return compile_step(config, mesh, total_steps)
  monkeypatch.setattr(plan, "compile_train_step", exhausted_without_decoder_layers)
  config = apply_overrides(load_config(TINY), ["model.text.num_layers=2", "model.vision.feature_layer=-3"])
  p = plan.make_plan(config, "v5p-8", examples=800)
  assert p.fits and p.xla_flops is None
  assert "XLA cost analysis  not counted: a variant" in plan.format_plan(p, "tiny on v5p-8")


def test_cli_reports_a_step_too_large_for_hbm(capsys):
  _need_libtpu()
  # A 16.8M-token vocabulary: its logits alone need far more than a v5e chip's 16 GiB.
  status = cli.main(["plan", "--config", TINY, "--topology", "v5e-4", "--config.model.text.num_layers=1",
                     "--config.model.vision.feature_layer=-3", f"--config.model.text.vocab_size={2**24}"])
  report = capsys.readouterr().out
  assert status == 1
  assert "refused by XLA (too large for HBM)" in report and "does NOT fit in 16 GiB HBM: RESOURCE_EXHAUSTED" in report
  assert "one step" in report  # the time estimate does not need the compiled program


def _largest_all_gather(config, topology: str) -> int:
  """Elements of the largest array that `pulse-jax eval`'s generation (decode._generate_batch: prefill and the
  decode loop, 16 rows of 256-token prompts) all-gathers, compiled for a TPU slice under the config's mesh."""
  model = model_config(config.model)
  devices = plan.tpu_devices(*plan.resolve_topology(topology), num_slices=1)
  mesh = parallel.make_mesh(config.mesh.ici, devices=devices)
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: PulseModel(model, rngs=nnx.Rngs(0))))
  shardings = parallel.state_shardings(state, mesh, parallel.logical_rules(config.mesh.rules))
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                                               nnx.to_pure_dict(state), shardings))
  rows = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh, len(shape)))
  tile, batch, length = model.vision.image_size, 16, 256
  inputs = (rows((batch, length), jnp.int32), rows((batch, length), jnp.bool_),
            rows((batch, model.max_views, 3, tile, tile), jnp.float32),
            rows((batch, max_image_tokens(model)), jnp.int32), rows((batch,), jnp.bool_))
  sampling = decode._sampling(model, 8, eos_id=2, pad_id=0, temperature=0.0, top_p=1.0)
  program = decode._generate_batch.lower(graphdef, state, *inputs, jax.random.key(0), sampling=sampling,
                                         mesh=mesh).compile().as_text()
  gathered = re.findall(r"= \(?\w+\[([\d,]+)\]\S* (?:\S+ )?all-gather", program)
  return max(math.prod(int(n) for n in shape.split(",")) for shape in gathered)


@pytest.mark.parametrize("preset, moves_weights", [("fsdp", True), ("serve", False)])
def test_the_serving_mesh_moves_no_weights_while_decoding(preset, moves_weights):
  """PULSE-7B (one decoder layer) generating on v5p-8: under the training preset (FSDP) the program all-gathers
  weights, up to the 4096 x 32064 lm_head, for the prefill and at every decode step; under configs/pulse_7b.py:serve
  (weights whole in each group of 4 chips, split over them) only activation-sized arrays move."""
  _need_libtpu()
  config = apply_overrides(load_config(f"{PULSE_7B}:{preset}"), ["model.text.num_layers=1",
                                                                  "model.vision.feature_layer=0"])
  largest = _largest_all_gather(config, "v5p-8")
  assert (largest >= 4096 * 32064) if moves_weights else (largest < 16 * 4096), largest
