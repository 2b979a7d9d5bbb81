"""The train step on every mesh, the loss definition, frozen parameters, the schedule, meshes and rules."""

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from pulse_jax import flops, parallel, train
from pulse_jax.config import model_config
from pulse_jax.data import standin
from pulse_jax.errors import ConfigError
from pulse_jax.models import PulseModel, feature_layout, num_image_tokens
from tests.train_helpers import first_batches, small_config, small_train_step, tensorboard_scalars

# (mesh shape, rule preset, gradient-accumulation micro-batches); the first is the one-device reference.
MESHES = (((1, 1, 1), "fsdp", 1), ((8, 1, 1), "fsdp_tensor", 1), ((1, 8, 1), "fsdp", 1),
          ((2, 2, 2), "fsdp_tensor", 2))


@pytest.fixture(scope="module")
def small():
  """The small config (4 steps of global batch 8) and its 4 batches."""
  config = small_config()
  return config, first_batches(config, config.train.steps)


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _model(config) -> PulseModel:
  """The config's model, abstract (shapes and logical axes only)."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: PulseModel(model_config(config.model), rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def runs(small):
  """mesh shape -> (losses of 4 steps, initial state, final state, metrics), all from the same initial state."""
  config, batches = small
  initial = None
  results = {}
  for shape, rules, accum in MESHES:
    step_fns = small_train_step(config, shape, rules, accum)
    mesh = step_fns.abstract_batch["input_ids"].sharding.mesh
    if initial is None:
      initial = jax.device_get(step_fns.init(jnp.int32(config.train.seed)))
    state = jax.device_put(initial, step_fns.state_shardings)
    metrics = []
    for batch in batches:
      state, m = step_fns.step(state, parallel.global_batch({k: batch[k] for k in train.STEP_INPUTS}, mesh))
      metrics.append(jax.device_get(m))
    results[shape] = ([float(m["loss"]) for m in metrics], initial, jax.device_get(state), metrics)
  return results


@pytest.mark.parametrize("shape", [m[0] for m in MESHES[1:]], ids=str)
def test_same_losses_and_parameters_on_every_mesh(runs, shape):
  """FSDP, data parallel, and FSDP x tensor with 2 accumulated micro-batches all match one device."""
  losses, _, final, _ = runs[shape]
  reference_losses, _, reference, _ = runs[(1, 1, 1)]
  np.testing.assert_allclose(losses, reference_losses, atol=1e-5, rtol=0)
  assert losses[-1] < losses[0]  # it learns
  want = _flat(reference["params"])
  for name, value in _flat(final["params"]).items():
    # Adam divides by the gradient's running RMS, so a near-zero gradient summed in another order can move its
    # weight by a fraction of lr (1e-3 here; one embedding entry moved 1.2e-5 with configs/tiny.py's init): 5e-5
    # is 5% of one step, where a wrong reduction moves weights by whole steps (and the losses above by far more).
    np.testing.assert_allclose(value, want[name], atol=5e-5, rtol=0, err_msg=name)
  assert int(final["step"]) == 4


def test_loss_is_the_mean_over_loss_tokens_of_the_global_batch(runs, small):
  """Step 1's loss equals a numpy cross-entropy of logits[:, t - 1] vs input_ids[:, t] over loss_mask[:, t]."""
  config, batches = small
  _, initial, _, metrics = runs[(1, 1, 1)]
  model = nnx.merge(nnx.graphdef(_model(config)), initial["params"])
  batch = batches[0]
  logits = np.asarray(jax.jit(lambda m, b: m(b["input_ids"], b["pixel_values"], attention_mask=b["attention_mask"],
                                              layout=b["layout"]))(model, batch), np.float64)
  log_probs = scipy.special.log_softmax(logits, axis=-1)
  target_log_probs = np.take_along_axis(log_probs[:, :-1], batch["input_ids"][:, 1:, None], -1)[..., 0]
  mask = batch["loss_mask"][:, 1:]
  np.testing.assert_allclose(float(metrics[0]["loss"]), -(target_log_probs * mask).sum() / mask.sum(), rtol=1e-5)
  assert int(metrics[0]["tokens"]) == int(batch["attention_mask"].sum())
  assert float(metrics[0]["learning_rate"]) == 0.0  # transformers' schedule: the first update uses lr 0
  assert float(metrics[1]["learning_rate"]) == pytest.approx(config.train.learning_rate)


def test_frozen_vision_tower_is_bit_identical_and_has_no_optimizer_state(runs):
  for shape, _, _ in MESHES:
    _, initial, final, _ = runs[shape]
    before, after = _flat(initial["params"]), _flat(final["params"])
    tower = [name for name in before if name.startswith("['vision_tower']")]
    assert tower
    for name in tower:
      np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    trained = [name for name in before if not name.startswith("['vision_tower']")]
    assert all(not np.array_equal(after[n], before[n]) for n in trained if "projector" in n or "lm_head" in n)
    opt_paths = list(_flat(final["opt_state"]))
    assert opt_paths and not any("vision_tower" in p for p in opt_paths)
    assert any("multi_modal_projector" in p for p in opt_paths) and any("embed_tokens" in p for p in opt_paths)


def test_learning_rate_schedule_is_transformers_cosine_with_warmup():
  config = small_config().train
  total, peak = 100, config.learning_rate
  schedule = train.learning_rate_schedule(config, total)
  warmup = math.ceil(0.03 * total)
  for step in range(total + 1):
    if step < warmup:
      want = peak * step / warmup
    else:
      want = peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    assert float(schedule(step)) == pytest.approx(want, abs=1e-9), step


def test_trainable_filter_matches_paths():
  config = small_config()
  abstract = _model(config)
  trained = nnx.state(abstract, train.trainable_filter(r"^vision_tower/"))
  paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(trained)]
  assert not any(p.startswith("vision_tower") for p in paths)
  assert any(p.startswith("multi_modal_projector") for p in paths)
  assert "language_model/lm_head/kernel" in paths and "language_model/model/embed_tokens/embedding" in paths
  everything = nnx.state(abstract, train.trainable_filter(""))
  assert len(nnx.to_flat_state(everything)) == len(nnx.to_flat_state(nnx.state(abstract)))


def test_standin_examples_follow_the_batch_contract():
  config = model_config(small_config().model)
  for index in range(8):
    ex = standin.standin_example(index, config=config, seq_len=48, seed=0)
    again = standin.standin_example(index, config=config, seq_len=48, seed=0)
    for name in ex:
      np.testing.assert_array_equal(ex[name], again[name])
    length = int(ex["attention_mask"].sum())
    assert ex["attention_mask"][:length].all() and not ex["input_ids"][length:].any()
    assert ex["input_ids"][0] == 1 and ex["input_ids"][length - 1] == 2  # <s> ... </s>
    masked = np.flatnonzero(ex["loss_mask"])
    assert masked[-1] == length - 1 and np.array_equal(masked, np.arange(masked[0], length))
    placeholders = int((ex["input_ids"] == config.image_token_id).sum())
    assert not ex["loss_mask"][ex["input_ids"] == config.image_token_id].any()
    if index % 4 == 3:
      assert placeholders == 0 and not ex["pixel_values"].any() and tuple(ex["image_sizes"]) == (0, 0)
    else:
      assert placeholders == num_image_tokens(tuple(ex["image_sizes"]), config)
  with pytest.raises(ConfigError, match="data.seq_len"):
    standin.standin_example(0, config=config, seq_len=8, seed=0)


def test_mesh_from_config_and_rules():
  mesh = parallel.mesh_from_config({"ici": (1, -1, 2), "dcn": (1, 1, 1)})
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
  for bad in ((3, -1, 1), (-1, -1, 1), (1, 2)):
    with pytest.raises(ConfigError):
      parallel.make_mesh(bad)
  assert all(target != "tensor" for _, target in parallel.logical_rules("fsdp"))
  assert parallel.logical_rules("fsdp_tensor") == parallel.RULES
  assert parallel.logical_rules([["embed", "fsdp"], ["batch", ["data", "fsdp"]]]) == (
      ("embed", "fsdp"), ("batch", ("data", "fsdp")))
  with pytest.raises(ConfigError, match="preset"):
    parallel.logical_rules("zero3")
  with pytest.raises(ConfigError, match="not a mesh axis"):
    parallel.logical_rules([["embed", "model"]])
  rules = parallel.RULES
  # A vocabulary of 1025 cannot split over tensor = 2: that axis is replicated instead of failing.
  assert parallel.mesh_spec(("embed", "vocab"), (64, 1025), mesh, rules) == jax.P("fsdp", None)
  assert parallel.mesh_spec(("embed", "vocab"), (64, 1024), mesh, rules) == jax.P("fsdp", "tensor")
  assert parallel.mesh_spec(("layers", "embed", "mlp"), (2, 64, 128), mesh, rules) == jax.P(None, "fsdp", "tensor")


def test_global_batch_and_config_checks(small):
  config, batches = small
  mesh = parallel.make_mesh((2, 2, 2))
  batch = parallel.global_batch({"input_ids": batches[0]["input_ids"]}, mesh)["input_ids"]
  assert batch.shape == batches[0]["input_ids"].shape
  assert batch.sharding.spec == jax.P(("data", "fsdp"), None)
  np.testing.assert_array_equal(np.asarray(batch), batches[0]["input_ids"])
  with pytest.raises(ConfigError, match="global_batch 8 must be a multiple"):
    small_train_step(config, (1, 8, 1), accum_steps=2)


def test_command_line_collects_config_overrides():
  parser = argparse.ArgumentParser()
  train.add_arguments(parser)
  args = parser.parse_args(["--config", "configs/tiny.py", "--workdir", "w", "--config.train.steps=3",
                            "--config.mesh.ici=(1,2,1)"])
  assert (args.config, args.workdir) == ("configs/tiny.py", "w")
  assert args.overrides == ["--config.train.steps=3", "--config.mesh.ici=(1,2,1)"]
  with pytest.raises(SystemExit):
    parser.parse_args(["--config", "c", "--workdir", "w", "--bogus"])


def test_flops_count_every_matmul_weight_of_the_model():
  """pulse_jax.flops against the model's own kernels: 2 FLOPs per weight per token (per view for the tower)."""
  config = small_config()
  pulse = model_config(config.model)
  kernels = {"/".join(map(str, path)): int(np.prod(v.shape))
             for path, v in nnx.to_flat_state(nnx.state(_model(config))) if path[-1] == "kernel"}
  count = lambda prefix: sum(n for name, n in kernels.items() if name.startswith(prefix))
  seq_len, t, v = 48, pulse.text, pulse.vision
  lm = 2 * count("language_model/") + 2 * seq_len * t.num_heads * t.head_dim * t.num_layers  # causal: T/2 keys
  assert flops.lm_forward_flops_per_token(t, seq_len) == lm
  patches, tokens = v.patches_per_side**2, v.patches_per_side**2 + 1
  per_layer = count("vision_tower/layers/") // v.num_layers
  vision = 2 * (patches * count("vision_tower/embeddings") + v.layers_needed * tokens * per_layer) \
      + 4 * tokens**2 * v.hidden_size * v.layers_needed
  assert flops.vision_forward_flops_per_view(v) == vision
  projector = 2 * v.tokens_per_view * count("multi_modal_projector/")
  views = 2 * pulse.max_views
  assert flops.train_step_flops(pulse, batch=2, seq_len=seq_len) == 3 * lm * 2 * seq_len + vision * views \
      + 3 * projector * views
  assert flops.peak_flops("TPU v5 lite") == 197e12 and flops.peak_flops("TPU v5p") == 459e12
  assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and flops.peak_flops("cpu") is None


def test_progress_reports_mfu_of_each_steps_own_flops(tmp_path, monkeypatch):
  """MFU over a logging interval = the model FLOPs of its steps (each at its batch's padded length) / (its wall
  time x devices x peak); the compiling first step is left out. Here log_every 2 over 4 steps."""
  monkeypatch.setattr(flops, "peak_flops", lambda kind: 1e9)
  clock = iter([0.0, 1.0, 3.0, 3.0, 7.0, 7.0])  # start, end of step 1, step 2 (logged), step 4 (logged)
  metrics = {"loss": jnp.float32(2.0), "grad_norm": jnp.float32(1.0), "learning_rate": jnp.float32(1e-3),
             "tokens": jnp.int32(100)}
  with train._Progress(tmp_path, start=0, total=4, log_every=2, is_main=True, clock=lambda: next(clock)) as progress:
    for step, step_flops in enumerate((5e9, 6e9, 7e9, 8e9), start=1):
      progress.record(step, metrics, step_flops)
  scalars = tensorboard_scalars(tmp_path)
  devices = jax.device_count()
  assert scalars["mfu"] == [(2, pytest.approx(6e9 / (2.0 * devices * 1e9))),
                            (4, pytest.approx((7e9 + 8e9) / (4.0 * devices * 1e9)))]
  assert scalars["step_time"] == [(2, 2.0), (4, 2.0)] and scalars["tokens_per_second"] == [(2, 50.0), (4, 50.0)]


def test_a_uri_workdir_refuses_the_data_order_log_and_keeps_its_scheme():
  """The per-step data-order log appends, which an object store cannot: with a gs:// workdir it is refused before
  anything starts, naming the URI intact (pathlib would have made gs://bucket/run the local folder gs:/bucket/run;
  the workdir goes through etils.epath)."""
  with pytest.raises(ConfigError, match="gs://bucket/run/data_order.txt.*local workdir"):
    train.train(small_config("train.log_data_order=True"), "gs://bucket/run")


def test_trained_parts_are_found_from_the_frozen_regex(small):
  config, _ = small
  tower = nnx.to_pure_dict(nnx.state(_model(config)))["vision_tower"]
  assert not train.trains_any(tower, r"^vision_tower/", "vision_tower")
  assert train.trains_any(tower, "", "vision_tower")
  assert train.trains_any(tower, r"^vision_tower/layers/", "vision_tower")  # the embeddings still train
  assert not train.trains_any(tower, r"^vision_tower/(layers|embeddings|pre_layrnorm|post_layernorm)/",
                               "vision_tower")


def test_multi_host_groups_come_from_the_environment(monkeypatch):
  """GPU clusters name the group in JAX_* variables (the launchers set them); SLURM and TPU VMs let JAX find it."""
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  monkeypatch.setattr(parallel, "_on_cloud_tpu_vm", lambda: False)
  parallel.initialize_distributed({})
  parallel.initialize_distributed({"SLURM_NTASKS": "1"})
  assert calls == []  # one process: nothing to join
  parallel.initialize_distributed({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
                                   "JAX_PROCESS_ID": "2"})
  assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)]
  parallel.initialize_distributed({"SLURM_NTASKS": "16"})
  monkeypatch.setattr(parallel, "_on_cloud_tpu_vm", lambda: True)
  parallel.initialize_distributed({})
  assert calls[1:] == [{}, {}]
  parallel.initialize_distributed({}, shutdown_timeout_seconds=60)
  assert calls[3] == {"shutdown_timeout_seconds": 60}
  with pytest.raises(ConfigError, match="JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES, JAX_PROCESS_ID"):
    parallel.initialize_distributed({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})


@pytest.mark.parametrize("override, mesh", [
    ("model.remat=full", MESHES[0]), ("model.remat=dots_saveable", MESHES[0]),
    ("model.attention=splash", MESHES[0]), ("model.attention=splash", MESHES[3])], ids=str)
def test_memory_settings_change_memory_not_results(runs, small, override, mesh):
  """model.remat recomputes activations in the backward pass (configs/pulse_7b.py uses "full"); model.attention
  "splash" is the TPU flash kernel (run here by Pallas' interpreter, shard_mapped over the batch and heads of the
  (2, 2, 2) mesh). Both give the losses, gradient norms and parameters of tiny's settings on the same mesh."""
  config, batches = small
  shape, rules, accum = mesh
  losses, initial, final, metrics = runs[shape]
  step_fns = small_train_step(small_config(override), shape, rules, accum)
  device_mesh = step_fns.abstract_batch["input_ids"].sharding.mesh
  state = jax.device_put(initial, step_fns.state_shardings)
  for batch, want in zip(batches, metrics):
    state, got = step_fns.step(state, parallel.global_batch({k: batch[k] for k in train.STEP_INPUTS}, device_mesh))
    np.testing.assert_allclose([got["loss"], got["grad_norm"]], [want["loss"], want["grad_norm"]], rtol=1e-5)
  for name, value in _flat(jax.device_get(state)).items():
    np.testing.assert_allclose(value, _flat(final)[name], atol=5e-5, rtol=0, err_msg=name)  # as across meshes


def test_the_model_learns_an_answer_only_the_image_gives():
  """The image path carries gradient end to end (pixels -> tower -> projector -> LM -> loss on the answer): with
  the question fixed and the answer set by the image's brightness, the answer's loss falls far below chance."""
  config = small_config("train.frozen=''", "train.learning_rate=1e-2", "train.steps=60")
  step_fns = small_train_step(config, (1, 1, 1), "fsdp")
  mesh = step_fns.abstract_batch["input_ids"].sharding.mesh
  model = model_config(config.model)
  size = model.grid_pinpoints[2]
  prompt = [model.text.bos_token_id, *[model.image_token_id] * num_image_tokens(size, model), 10, 11, 12]
  seq_len = config.data.seq_len
  rng = np.random.default_rng(0)

  def batch():
    bright = rng.integers(0, 2, config.train.global_batch)
    ids = np.zeros((len(bright), seq_len), np.int32)
    ids[:, :len(prompt) + 2] = [prompt + [20 + int(b), model.text.eos_token_id] for b in bright]
    real = np.arange(seq_len) < len(prompt) + 2
    pixels = np.where(bright[:, None, None, None, None], 1.0, -1.0) + rng.normal(0, 0.5, step_fns.abstract_batch[
        "pixel_values"].shape)
    return {"input_ids": ids, "attention_mask": np.tile(real, (len(bright), 1)),
            "loss_mask": np.tile(real & (np.arange(seq_len) >= len(prompt)), (len(bright), 1)),
            "pixel_values": pixels.astype(np.float32), "layout": feature_layout(np.array([size] * len(bright)), model)}

  state = step_fns.init(jnp.int32(0))
  losses = []
  for _ in range(config.train.steps):
    state, metrics = step_fns.step(state, parallel.global_batch(batch(), mesh))
    losses.append(float(metrics["loss"]))
  # Mean over the answer and its eos: an image-blind model cannot go below ln(2) / 2 = 0.35 once eos is learnt.
  assert np.mean(losses[-5:]) < 0.1, losses
