"""Checkpoints: restore onto another mesh, corrupt-checkpoint fallback, imported weights, `pulse-jax train`
killed (SIGKILL) and preempted (SIGTERM) then resumed, ending bit-identical to an uninterrupted run, and a
two-process run that trains as one process would and resumes."""

import logging
import pathlib
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from flax import nnx

from pulse_jax import checkpoint, parallel, train
from pulse_jax.config import model_config
from pulse_jax.convert import hf, orbax_params
from pulse_jax.data import standin
from pulse_jax.errors import CheckpointError
from pulse_jax.models import PulseModel
from tests.train_helpers import (SMALL_OVERRIDES, TINY_CONFIG, finish_pulse_jax, run_processes, small_config,
                                 small_train_step, start_pulse_jax, tensorboard_scalars)


def _random_state(abstract_state, seed=0) -> dict:
  """A state with random values of the right shapes, dtypes and shardings (no compilation needed)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype), a.sharding),
                      abstract_state)


def _iterator(config):
  return train.input_batches(config.data, model_config(config.model), split="train",
                             batch_size=config.train.global_batch, seed=config.data.seed).iterator


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def config():
  return small_config()


def test_restore_onto_a_different_mesh(config, tmp_path):
  saved_on = small_train_step(config, (1, 8, 1), rules="fsdp")
  state, data = _random_state(saved_on.abstract_state), _iterator(config)
  for _ in range(3):
    next(data)
  saver = checkpoint.Checkpointer(str(tmp_path), keep=2)
  saver.save(3, state, data)
  saver.wait()
  saver.close()
  expected_next = next(data)

  restore_on = small_train_step(config, (2, 2, 2))
  fresh = _iterator(config)
  loader = checkpoint.Checkpointer(str(tmp_path), keep=2)
  restored, step = loader.restore_latest(restore_on.abstract_state, fresh)
  loader.close()
  assert step == 3
  got, want = _flat(restored), _flat(jax.device_get(state))
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  for leaf, target in zip(jax.tree.leaves(restored), jax.tree.leaves(restore_on.abstract_state)):
    assert leaf.sharding == target.sharding
  lm_head = restored["params"]["language_model"]["lm_head"]["kernel"]
  assert lm_head.sharding.mesh.shape["tensor"] == 2 and lm_head.sharding.spec == jax.P("fsdp", "tensor")
  for name, value in next(fresh).items():  # the data position came back too
    np.testing.assert_array_equal(value, expected_next[name], err_msg=name)


def _truncate_arrays(step_dir: pathlib.Path) -> None:
  for file in (step_dir / "state" / "d").iterdir():
    file.write_bytes(file.read_bytes()[:len(file.read_bytes()) // 2])


def _delete_manifest(step_dir: pathlib.Path) -> None:
  (step_dir / "state" / "manifest.ocdbt").unlink()


# Orbax's failed reads leave asyncio callbacks behind that report "Event loop is closed" when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreadable_checkpoints_fall_back_to_the_newest_readable_one(config, tmp_path, caplog):
  """Step 6 lost a file, step 4 has truncated array files: both are set aside and step 2 is restored."""
  step_fns = small_train_step(config, (1, 1, 1))  # sharding is not the point here; one device saves time
  states = {step: _random_state(step_fns.abstract_state, seed=step) for step in (2, 4, 6)}
  saver = checkpoint.Checkpointer(str(tmp_path), keep=3)
  data = _iterator(config)
  for step in (2, 4, 6):
    next(data), next(data)
    saver.save(step, states[step], data)
  saver.wait()
  saver.close()
  _delete_manifest(tmp_path / "6")
  _truncate_arrays(tmp_path / "4")

  loader = checkpoint.Checkpointer(str(tmp_path), keep=3)
  with caplog.at_level(logging.WARNING, logger="pulse_jax.checkpoint"):
    restored, step = loader.restore_latest(step_fns.abstract_state, _iterator(config))
  assert step == 2
  assert f"checkpoint {tmp_path / '6'} is unreadable" in caplog.text and "falling back to step 4" in caplog.text
  assert f"checkpoint {tmp_path / '4'} is unreadable" in caplog.text and "falling back to step 2" in caplog.text
  for name, value in _flat(jax.device_get(states[2])).items():
    np.testing.assert_array_equal(_flat(restored)[name], value, err_msg=name)
  assert (tmp_path / "4.unreadable").is_dir() and (tmp_path / "6.unreadable").is_dir()
  assert loader.latest_step() == 2
  loader.save(4, restored, data)  # training goes on and writes step 4 afresh
  loader.wait()
  assert loader.latest_step() == 4
  loader.close()
  _delete_manifest(tmp_path / "4")  # ... which is lost again: set aside beside the first one
  loader = checkpoint.Checkpointer(str(tmp_path), keep=3)
  assert loader.restore_latest(step_fns.abstract_state, _iterator(config))[1] == 2
  loader.close()
  assert (tmp_path / "4.unreadable").is_dir() and (tmp_path / "4.unreadable.1").is_dir()


def test_checkpoint_of_another_model_is_an_error_not_a_fallback(config, tmp_path):
  step_fns = small_train_step(config, (1, 8, 1))
  saver = checkpoint.Checkpointer(str(tmp_path), keep=2)
  saver.save(1, _random_state(step_fns.abstract_state), _iterator(config))
  saver.wait()
  saver.close()
  wider = small_train_step(small_config("model.text.intermediate_size=256"), (1, 8, 1))
  loader = checkpoint.Checkpointer(str(tmp_path), keep=2)
  with pytest.raises(CheckpointError, match=r"does not fit .* params\.language_model\.model\.layers\.mlp\.down_proj"):
    loader.restore_latest(wider.abstract_state, _iterator(config))
  assert loader.latest_step() == 1  # nothing was set aside
  loader.close()


def test_initialise_from_imported_and_converted_checkpoints(tmp_path):
  """checkpoint.init_from: a transformers folder, the Orbax checkpoint `convert from-hf` writes and another run's
  checkpoints/ all give the same parameters, each on the step's shardings; another architecture is refused."""
  config = small_config("model.merge_mode=spatial_unpad")  # what transformers' LLaVA-NeXT format can express
  pulse_config = model_config(config.model)
  with nnx.use_eager_sharding(False):
    source = nnx.eval_shape(lambda: PulseModel(pulse_config, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(7)  # numpy weights: no per-shape initialiser compilations
  state = nnx.state(source)
  want = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, want)
  nnx.update(source, state)
  hf.save(source, pulse_config, tmp_path / "hf")
  orbax_params.save(tmp_path / "converted", want, pulse_config)
  step_fns = small_train_step(config, (2, 2, 2))
  shardings = step_fns.state_shardings["params"]
  run = checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints"), keep=1)
  run.save(3, step_fns.init_from_params(checkpoint.load_params(tmp_path / "hf", pulse_config, shardings)[0]),
           _iterator(config))
  run.wait()
  run.close()

  for path, read in (("hf", "hf"), ("converted", "converted/0"), ("run", "run/checkpoints/3")):
    params, source_dir = checkpoint.load_params(str(tmp_path / path), pulse_config, shardings)
    assert source_dir == tmp_path / read
    got = _flat(params)
    assert got.keys() == _flat(want).keys()
    for name, value in _flat(want).items():
      np.testing.assert_array_equal(got[name], value, err_msg=f"{path}: {name}")
    for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
      assert leaf.sharding == sharding

  other = model_config(small_config("model.merge_mode=spatial_unpad", "model.text.rms_norm_eps=1e-6").model)
  for path in ("hf", "converted"):
    with pytest.raises(CheckpointError, match=r"text\.rms_norm_eps: 1e-05 vs 1e-06"):
      checkpoint.load_params(str(tmp_path / path), other, shardings)
  with pytest.raises(CheckpointError, match="no checkpoint"):
    checkpoint.load_params(str(tmp_path), pulse_config, shardings)


# ------------------------------------------------------------------------------------- pulse-jax train, killed

STEPS, EVERY = 60, 20


def _train_args(workdir: pathlib.Path, steps: int = STEPS, every: int = EVERY) -> list[str]:
  overrides = [f"--config.{o}" for o in SMALL_OVERRIDES]
  return ["--config", TINY_CONFIG, "--workdir", str(workdir), *overrides, f"--config.train.steps={steps}",
          f"--config.checkpoint.every={every}", "--config.checkpoint.keep=3", "--config.train.log_data_order=True"]


def _start(workdir: pathlib.Path, cache: pathlib.Path, log: pathlib.Path) -> subprocess.Popen:
  """`pulse-jax train` of the small config on 2 fake CPU devices (a (1, 2, 1) mesh), in the background; one
  compilation cache serves all four runs of the kill test, so only the first compiles."""
  return start_pulse_jax("train", _train_args(workdir), log, cache=cache)


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 240) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    if process.poll() is not None:
      pytest.fail(f"the run ended (status {process.returncode}) before {what}")
    if time.monotonic() > deadline:
      process.kill()
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.005)


def _data_order(workdir: pathlib.Path) -> dict[int, list[int]]:
  """step -> example ids; a step logged again after a resume replaces the earlier line."""
  order = {}
  for line in (workdir / "data_order.txt").read_text().splitlines():
    step, *ids = map(int, line.split())
    order[step] = ids
  return order


def _final_state(workdir: pathlib.Path, config) -> dict[str, np.ndarray]:
  step_fns = small_train_step(config, (1, 1, 1))
  loader = checkpoint.Checkpointer(str(workdir / "checkpoints"), keep=3)
  state, step = loader.restore_latest(step_fns.abstract_state, _iterator(config))
  loader.close()
  assert step == STEPS
  return _flat(jax.device_get(state))


@pytest.mark.slow
def test_killed_and_preempted_runs_resume_bit_identical(tmp_path):
  """An uninterrupted run vs one SIGKILLed after its first checkpoint, resumed, SIGTERMed (it saves where it
  is), and resumed again: same final parameters and optimizer state bit for bit, same examples at every step."""
  cache, reference_dir, run_dir = tmp_path / "cache", tmp_path / "reference", tmp_path / "run"
  logs = {name: tmp_path / f"{name}.log" for name in ("reference", "killed", "preempted", "resumed")}
  reference = _start(reference_dir, cache, logs["reference"])
  _wait_for(lambda: (reference_dir / "data_order.txt").exists(), reference, "the reference's first step")
  killed = _start(run_dir, cache, logs["killed"])  # started once the reference has filled the compilation cache
  _wait_for(lambda: (run_dir / "checkpoints" / str(EVERY)).is_dir(), killed, "the first checkpoint")
  killed.send_signal(signal.SIGKILL)
  finish_pulse_jax(killed, logs["killed"], -signal.SIGKILL)
  killed_at = max(_data_order(run_dir))
  assert killed_at < STEPS

  preempted = _start(run_dir, cache, logs["preempted"])
  _wait_for(lambda: len((run_dir / "data_order.txt").read_text().splitlines()) > killed_at, preempted,
            "a step after resuming")
  preempted.send_signal(signal.SIGTERM)
  output = finish_pulse_jax(preempted, logs["preempted"], train.PREEMPTED_EXIT_STATUS)
  assert f"resumed from {run_dir / 'checkpoints'}" in output
  preempted_at = int(output.split("preempted at step ")[1].split(":")[0])
  assert preempted_at < STEPS and (run_dir / "checkpoints" / str(preempted_at)).is_dir()

  output = finish_pulse_jax(_start(run_dir, cache, logs["resumed"]), logs["resumed"], 0)
  assert f"resumed from {run_dir / 'checkpoints' / str(preempted_at)}" in output
  finish_pulse_jax(reference, logs["reference"], 0)

  scalars = tensorboard_scalars(reference_dir / "tensorboard")
  assert sorted(step for step, _ in scalars["loss"]) == list(range(1, STEPS + 1))
  assert {"grad_norm", "learning_rate", "step_time", "tokens_per_second"} <= scalars.keys()
  assert all(value > 0 for _, value in scalars["tokens_per_second"])

  order, want_order = _data_order(run_dir), _data_order(reference_dir)
  assert sorted(order) == list(range(1, STEPS + 1)) and order == want_order
  config = small_config(f"train.steps={STEPS}")
  got, want = _final_state(run_dir, config), _final_state(reference_dir, config)
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


MULTI_STEPS = 4


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path):
  """`pulse-jax train` as 2 processes of 2 CPU devices each, joined through JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID as on a GPU cluster (a multi-host run on one machine): each process feeds
  its own examples, every checkpoint holds both data positions, a run resumed from step 2 draws the same
  examples as before, and the final parameters equal one process's stepping through the same global batches (as
  logged) on 8 devices."""
  workdir, cache = tmp_path / "run", tmp_path / "cache"
  run_processes("train", _train_args(workdir, MULTI_STEPS, every=2), tmp_path / "first", cache=cache)
  order = _data_order(workdir)
  assert sorted(order) == list(range(1, MULTI_STEPS + 1)) and all(len(ids) == 8 for ids in order.values())
  for step in (2, MULTI_STEPS):
    assert sorted(p.name for p in (workdir / "checkpoints" / str(step) / "data").glob("process_*.json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
  # Process p reads examples p, p + 2, ... of the stand-in set (32 examples): its rows hold only those.
  assert all({i % 2 for i in ids[:4]} == {0} and {i % 2 for i in ids[4:]} == {1} for ids in order.values())
  # Back to step 2 (as if killed before the last checkpoint): both processes resume their data where it was.
  shutil.rmtree(workdir / "checkpoints" / str(MULTI_STEPS))
  log = workdir / "data_order.txt"
  log.write_text("".join(line + "\n" for line in log.read_text().splitlines()[:2]))
  again = run_processes("train", _train_args(workdir, MULTI_STEPS, every=2), tmp_path / "again", cache=cache)
  assert f"resumed from {workdir / 'checkpoints' / '2'}" in again[0] and _data_order(workdir) == order

  config = small_config(f"train.steps={MULTI_STEPS}")
  step_fns = small_train_step(config, (1, 8, 1), rules="fsdp")
  mesh = step_fns.abstract_batch["input_ids"].sharding.mesh
  model_cfg = model_config(config.model)
  examples = standin.standin_dataset(model_cfg, num_examples=config.data.num_examples, seq_len=config.data.seq_len,
                                     seed=config.data.seed)
  state = step_fns.init(jax.numpy.int32(config.train.seed))
  for step in range(1, MULTI_STEPS + 1):
    rows = [examples[i] for i in order[step]]
    batch = {name: np.stack([row[name] for row in rows]) for name in train.STEP_INPUTS}
    state, _ = step_fns.step(state, parallel.global_batch(batch, mesh))
  params, read = checkpoint.load_params(str(workdir), model_cfg, step_fns.state_shardings["params"])
  got, want = _flat(params), _flat(jax.device_get(state["params"]))
  assert read.name == str(MULTI_STEPS) and got.keys() == want.keys()
  for name, value in want.items():
    np.testing.assert_allclose(got[name], value, atol=5e-5, rtol=0, err_msg=name)
