"""The grain pipeline: batch contract, exact resume, mixture weights, skipped bad examples, global arrays."""

import collections
import collections.abc
import contextlib
import dataclasses
import io
import json

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_builders.ecg_instruct.ecg_instruct_dataset_builder import Builder as InstructBuilder
from pulse_jax import parallel, train
from pulse_jax.config import load_config, model_config
from pulse_jax.data import label_index, pipeline, released
from pulse_jax.data.builder import EcgBuilderConfig
from pulse_jax.data.conversation import encode_conversation
from pulse_jax.data.examples import conversations_of, decode_text
from pulse_jax.data.image_processor import for_model, load_image, preprocess
from pulse_jax.data.tokenizer import Tokenizer, train_tokenizer
from pulse_jax.errors import ConfigError
from pulse_jax.models.llava import feature_layout, num_image_tokens
from tests.train_helpers import SMALL_OVERRIDES, TINY_CONFIG, run_processes, small_config

tfds.disable_progress_bar()

SYNTHETIC = EcgBuilderConfig(name="synthetic_pipeline", origin="synthetic", dpi=40.0, synthetic_records=12,
                             validation_fraction=0.15, code15_test_fraction=0.25)
SEQ_LEN, BUCKETS = 768, (512, 640)
SPLITS = ("ptbxl", "mimic", "code15")


def build(config, data_dir, manual_dir=None):
  builder = InstructBuilder(config=config, data_dir=str(data_dir), file_format="array_record")
  with contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir and str(manual_dir)))
  return builder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(data section, model config, {split: examples by id}) over a tiny synthetic ECGInstruct and its tokenizer."""
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = build(SYNTHETIC, data_dir)
  examples = {split: {decode_text(source[i]["id"]): source[i] for i in range(len(source))}
              for split, source in builder.as_data_source().items()}
  texts = [turn["value"].replace("<image>", "") for split in examples.values() for example in split.values()
           for turn in conversations_of(example)]
  tokenizer = Tokenizer(train_tokenizer(texts, data_dir / "tokenizer", 600))
  config = model_config(load_config("configs/tiny.py").model)
  config = config.replace(text=dataclasses.replace(config.text, vocab_size=tokenizer.vocab_size),
                          image_token_id=tokenizer.image_token_id)
  data = dict(builder="ecg_instruct/synthetic_pipeline", data_dir=str(data_dir), tokenizer=str(tokenizer.path),
              mixture=dict(ptbxl=1.0, mimic=1.0, code15=1.0), eval_split="validation", seq_len=SEQ_LEN,
              buckets=BUCKETS, workers=0, seed=0)
  return data, config, examples


def take(batches: pipeline.Batches, n: int) -> list[dict]:
  return [next(batches.iterator) for _ in range(n)]


def test_batches_meet_the_contract(setup):
  data, config, examples = setup
  batches = pipeline.batches(data, config, split="train", batch_size=4, seed=0)
  assert batches.epoch_size == sum(len(examples[split]) for split in SPLITS)
  tokenizer = Tokenizer(data["tokenizer"])
  by_hash = {pipeline.example_hash(i): e for split in SPLITS for i, e in examples[split].items()}
  image_config = for_model(config)
  lengths = set()
  for batch in take(batches, 3):
    t = batch["input_ids"].shape[1]
    lengths.add(t)
    assert t in pipeline.bucket_lengths(SEQ_LEN, BUCKETS)
    assert batch["input_ids"].dtype == np.int32 and batch["attention_mask"].dtype == bool
    assert batch["pixel_values"].shape == (4, config.max_views, 3, 112, 112)
    assert batch["pixel_values"].dtype == np.float32 and batch["layout"].dtype == np.int32
    np.testing.assert_array_equal(batch["layout"], feature_layout(batch["image_sizes"], config))
    for row in range(4):
      n = int(batch["attention_mask"][row].sum())
      assert batch["attention_mask"][row, :n].all() and (batch["input_ids"][row, n:] == tokenizer.pad_id).all()
      assert not (batch["loss_mask"][row] & ~batch["attention_mask"][row]).any()
      # Golden: the row is the example's conversation encoded for its image, and its anyres views.
      example = by_hash[int(batch["example_id"][row])]
      image = preprocess(load_image(example["image"]), image_config)
      assert tuple(batch["image_sizes"][row]) == image.image_size
      encoded = encode_conversation(conversations_of(example), tokenizer,
                                    num_image_tokens=num_image_tokens(image.image_size, config),
                                    max_length=SEQ_LEN, record_id="x")
      np.testing.assert_array_equal(batch["input_ids"][row, :n], encoded.input_ids)
      np.testing.assert_array_equal(batch["loss_mask"][row, :n], encoded.loss_mask)
      views = len(image.pixel_values)
      np.testing.assert_array_equal(batch["pixel_values"][row, :views], image.pixel_values)
      assert not batch["pixel_values"][row, views:].any()
  assert len(lengths) > 1  # batches are padded to different buckets, not all to seq_len


def test_pad_tokens_extends_the_padding():
  batch = {"input_ids": np.array([[5, 6, 7]], np.int32), "attention_mask": np.array([[True, True, False]]),
           "loss_mask": np.array([[False, True, False]]), "layout": np.zeros((1, 4), np.int32)}
  padded = pipeline.pad_tokens(batch, 5, pad_id=0)
  np.testing.assert_array_equal(padded["input_ids"], [[5, 6, 7, 0, 0]])
  np.testing.assert_array_equal(padded["attention_mask"], [[True, True, False, False, False]])
  np.testing.assert_array_equal(padded["loss_mask"], [[False, True, False, False, False]])
  assert padded["layout"] is batch["layout"]
  assert pipeline.agree_on_length(batch, pad_id=0)["input_ids"] is batch["input_ids"]  # one process: as is


def test_resumes_at_the_same_batch(setup, tmp_path):
  data, config, _ = setup
  first = pipeline.batches(data, config, split="train", batch_size=4, seed=3)
  take(first, 2)
  state = first.iterator.get_state()
  expected = take(first, 2)

  resumed = pipeline.batches(data, config, split="train", batch_size=4, seed=3)
  resumed.iterator.set_state(state)
  for got, want in zip(take(resumed, 2), expected):
    for name in want:
      np.testing.assert_array_equal(got[name], want[name])

  # The same through Orbax, as pulse_jax.checkpoint saves it next to the train state.
  manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
  replay = pipeline.batches(data, config, split="train", batch_size=4, seed=3)
  take(replay, 2)
  manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(replay.iterator)))
  manager.wait_until_finished()
  restored = pipeline.batches(data, config, split="train", batch_size=4, seed=3)
  manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored.iterator)))
  manager.close()
  assert [b["example_id"].tolist() for b in take(restored, 2)] == [b["example_id"].tolist() for b in expected]


def test_mixture_weights_hold(setup):
  data, _, examples = setup
  split_of = {pipeline.example_hash(i): split for split in SPLITS for i in examples[split]}
  weights = pipeline.mixture_weights(dict(data, mixture=dict(ptbxl=1.0, mimic=0.0, code15=3.0)))
  assert weights == {"ptbxl": 1.0, "code15": 3.0}
  stream = pipeline.mixed_examples(pipeline.training_splits(data, weights), weights, seed=0, process_index=0,
                                   process_count=1)
  drawn = collections.Counter(split_of[pipeline.example_hash(decode_text(stream[i]["id"]))] for i in range(400))
  n_ptbxl, n_code15 = len(examples["ptbxl"]), len(examples["code15"])
  expected = n_ptbxl / (n_ptbxl + 3 * n_code15)
  assert set(drawn) == {"ptbxl", "code15"}
  assert abs(drawn["ptbxl"] / 400 - expected) < 0.03


def test_labelled_keys_mix_in_the_label_list_questions(setup):
  data, config, examples = setup
  labelled = {split: {i for i, example in examples[split].items() if len(example["labels"])} for split in SPLITS}
  labelled = {split: ids for split, ids in labelled.items() if ids}
  assert len(labelled) >= 2 and sum(map(len, labelled.values())) < sum(len(examples[s]) for s in labelled)
  only = dict(data, mixture={f"{split}:labelled": 1.0 for split in labelled})
  weights = pipeline.mixture_weights(only)
  splits = pipeline.training_splits(only, weights)
  assert {key: {decode_text(e["id"]) for e in part} for key, part in splits.items()} == {
      f"{split}:labelled": ids for split, ids in labelled.items()}
  assert pipeline.epoch_size(splits, weights) == sum(map(len, labelled.values()))
  wanted = {pipeline.example_hash(i) for ids in labelled.values() for i in ids}
  batch = next(pipeline.batches(only, config, split="train", batch_size=8, seed=0).iterator)
  assert set(batch["example_id"].tolist()) <= wanted
  # Beside its whole split, a labelled key raises the share of the label lists: here 1 + 3 parts in 4 + 3.
  split, ids = next(iter(labelled.items()))
  weights = {split: 1.0, f"{split}:labelled": 3.0}
  stream = pipeline.mixed_examples(pipeline.training_splits(data, weights), weights, seed=0, process_index=0,
                                   process_count=1)
  drawn = np.mean([decode_text(stream[i]["id"]) in ids for i in range(400)])
  n, n_labelled = len(examples[split]), len(ids)
  assert abs(drawn - (n_labelled + 3 * n_labelled) / (n + 3 * n_labelled)) < 0.06


def test_a_labelled_key_needs_labelled_examples(setup, monkeypatch):
  data, _, _ = setup
  monkeypatch.setattr(pipeline, "source", lambda data, split: [{"labels": []}] if split == "mimic" else
                      [{"labels": [b"NORM"]}])
  with pytest.raises(ConfigError, match="'mimic:labelled'.*no example with gold labels"):
    pipeline.training_splits(data, {"ptbxl:labelled": 1.0, "mimic:labelled": 1.0})
  assert len(pipeline.training_splits(data, {"mimic": 1.0})["mimic"]) == 1


class CountingSource(collections.abc.Sequence):
  """A data source that counts the examples read from it (and keeps the attributes a saved index is found by)."""

  def __init__(self, source):
    self.source, self.dataset_info, self.split, self.reads = source, source.dataset_info, source.split, 0

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    self.reads += 1
    return self.source[index]


def test_builds_save_the_labelled_index_and_runs_use_it(setup, monkeypatch):
  data, _, examples = setup
  for split in (*SPLITS, "validation"):
    source = CountingSource(pipeline.source(data, split))
    indices = label_index.labelled_indices(source)
    assert source.reads == 0  # the build's index, read without touching an example
    assert indices.tolist() == label_index.scan(source.source).tolist()
  assert sum(len(label_index.labelled_indices(pipeline.source(data, split))) for split in SPLITS) == sum(
      1 for split in SPLITS for example in examples[split].values() if len(example["labels"]))
  # Written over worker processes in chunks (here of 5 examples) where a dataset lacks it: the same positions.
  builder = tfds.builder_from_directory(pipeline.source(data, "code15").dataset_info.data_dir)
  saved = {split: np.load(label_index.index_path(builder.data_dir, split)) for split in builder.info.splits}
  for split in saved:
    label_index.index_path(builder.data_dir, split).unlink()
  monkeypatch.setattr(label_index, "EXAMPLES_PER_CHUNK", 5)
  assert len(label_index.write(builder)) == len(saved)
  for split, indices in saved.items():
    assert np.load(label_index.index_path(builder.data_dir, split)).tolist() == indices.tolist()
  assert label_index.write(builder) == []  # nothing missing, nothing written


def test_an_unwritable_dataset_folder_is_warned_about(setup, tmp_path, monkeypatch, caplog):
  data, _, _ = setup
  builder = tfds.builder_from_directory(pipeline.source(data, "mimic").dataset_info.data_dir)
  monkeypatch.setattr(label_index, "index_path", lambda version_dir, split: tmp_path / "gone" / f"{split}.npy")
  monkeypatch.setattr(label_index, "_scan_chunk", pytest.fail)  # found unwritable before any example is read
  with caplog.at_level("WARNING"):
    assert label_index.write(builder) == []
  assert "cannot save the index" in caplog.text and not (tmp_path / "gone").exists()


@pytest.mark.parametrize("damage", ["missing", "not an array", "out of range", "unsorted", "floats"])
def test_a_missing_or_wrong_index_is_read_around_with_a_warning(setup, tmp_path, monkeypatch, caplog, damage):
  data, _, _ = setup
  source = CountingSource(pipeline.source(data, "code15"))
  path = tmp_path / "labelled-code15.npy"
  monkeypatch.setattr(label_index, "index_path", lambda version_dir, split: path)
  if damage == "not an array":
    path.write_bytes(b"garbage")
  elif damage != "missing":
    np.save(path, {"out of range": np.array([0, len(source)]), "unsorted": np.array([3, 1]),
                   "floats": np.array([0.5])}[damage])
  with caplog.at_level("WARNING"):
    indices = label_index.labelled_indices(source)
  assert source.reads == len(source) and indices.tolist() == label_index.scan(source.source).tolist()
  assert "reading all" in caplog.text and str(path) in caplog.text


def test_a_split_too_small_for_the_processes_is_named():
  with pytest.raises(ConfigError, match="ecg_instruct/x: split 'ptbxl' holds 1 example\\(s\\), none for process 1 of 2"):
    pipeline.mixed_examples({"ptbxl": [{"id": b"a"}]}, {"ptbxl": 1.0}, seed=0, process_index=1, process_count=2,
                            dataset="ecg_instruct/x")


def test_processes_read_disjoint_shares(setup):
  data, _, _ = setup
  weights = {"ptbxl": 1.0}
  splits = pipeline.training_splits(data, weights)
  shares = [pipeline.mixed_examples(splits, weights, seed=None, process_index=p, process_count=2) for p in (0, 1)]
  ids = [{decode_text(share[i]["id"]) for i in range(len(setup[2]["ptbxl"]) // 2)} for share in shares]
  assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 2 * (len(setup[2]["ptbxl"]) // 2)


def test_global_arrays_on_the_mesh(setup):
  data, config, _ = setup
  local = next(pipeline.batches(data, config, split="eval", batch_size=8, seed=None).iterator)
  mesh = parallel.make_mesh((1, -1, 1))
  batch = parallel.global_batch({name: v for name, v in local.items() if name != "example_id"}, mesh)
  assert set(batch) == {"input_ids", "attention_mask", "loss_mask", "pixel_values", "layout", "image_sizes"}
  for name, array in batch.items():
    assert isinstance(array, jax.Array) and array.shape == local[name].shape
    assert array.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_array_equal(np.asarray(array), local[name])


def test_worker_processes_give_the_same_batches_and_resume(setup):
  """data.workers > 0 (grain mp_prefetch, as configs/pulse_7b.py runs): the batches of the in-process pipeline,
  and a position saved after two batches resumes, in a new pipeline, with the third."""
  data, config, _ = setup
  ids = lambda batches: [b["example_id"].tolist() for b in batches]
  in_process = ids(take(pipeline.batches(data, config, split="train", batch_size=2, seed=1), 4))
  workers = pipeline.batches(dict(data, workers=1), config, split="train", batch_size=2, seed=1)
  resumed = pipeline.batches(dict(data, workers=1), config, split="train", batch_size=2, seed=1)
  try:
    assert ids(take(workers, 2)) == in_process[:2]
    resumed.iterator.set_state(workers.iterator.get_state())
    assert ids(take(resumed, 2)) == in_process[2:]
  finally:
    workers.iterator.close()
    resumed.iterator.close()


def test_malformed_conversations_are_skipped_and_counted(setup, tmp_path):
  data, config, _ = setup
  manual = tmp_path / "manual"
  (manual / "img").mkdir(parents=True)
  Image.new("RGB", (440, 340), "white").save(manual / "img" / "ecg.png")
  good = [{"from": "human", "value": "<image>\nIs this ECG normal?"}, {"from": "gpt", "value": "Yes."}]
  records = {
      "good-1": good, "good-2": good,
      "no-image": [{"from": "human", "value": "Is this ECG normal?"}, {"from": "gpt", "value": "Yes."}],
      "out-of-order": [{"from": "gpt", "value": "<image>\nYes."}, {"from": "human", "value": "Normal?"}],
      "empty-answer": [{"from": "human", "value": "<image>\nIs this ECG normal?"}, {"from": "gpt", "value": " "}],
  }
  (manual / released.INSTRUCT_FILE).write_text(json.dumps([
      {"id": name, "image": "img/ecg.png", "conversations": turns, "metadata": {"source": "PTB-XL"}}
      for name, turns in records.items()]))
  build("released", tmp_path / "tfds", manual)
  batches = pipeline.batches(dict(data, builder="ecg_instruct/released", data_dir=str(tmp_path / "tfds"),
                                  mixture={"ptbxl": 1.0}), config, split="train", batch_size=2, seed=None)
  drawn = {i for batch in take(batches, 2) for i in batch["example_id"].tolist()}  # two passes over the file
  assert drawn == {pipeline.example_hash(i) for i in ("good-1", "good-2")}
  skipped = batches.preprocess.skipped
  assert {reason: set(ids) for reason, ids in skipped.examples.items()} == {
      "missing image token": {"no-image"}, "roles out of order": {"out-of-order"}, "empty answer": {"empty-answer"}}


def test_configuration_errors_name_the_problem(setup):
  data, config, _ = setup
  with pytest.raises(ConfigError, match="'nope'"):
    pipeline.batches(dict(data, mixture={"nope": 1.0}), config, split="train", batch_size=2, seed=0)
  with pytest.raises(ConfigError, match="image_token_id"):
    pipeline.batches(data, config.replace(image_token_id=config.image_token_id + 1), split="train", batch_size=2,
                     seed=0)
  with pytest.raises(ConfigError, match="weights"):
    pipeline.mixture_weights(dict(data, mixture={"ptbxl": 0.0}))


def _build_overrides(setup, steps: int, buckets: tuple[int, ...] = BUCKETS) -> list[str]:
  """Config overrides that train the trainer tests' small model on the synthetic build for `steps` steps."""
  data, config, _ = setup
  return ["data.source='tfds'", f"data.builder='{data['builder']}'", f"data.data_dir='{data['data_dir']}'",
          f"data.tokenizer='{data['tokenizer']}'", f"data.seq_len={SEQ_LEN}", f"data.buckets={buckets}",
          f"model.text.vocab_size={config.text.vocab_size}", f"model.image_token_id={config.image_token_id}",
          f"train.steps={steps}", "train.eval_every=2", "train.eval_batches=1", "train.log_data_order=True",
          "checkpoint.every=2"]


def _train_on_the_build(setup, workdir, steps: int) -> None:
  """`pulse-jax train` (in this process) of the trainer tests' small model on the synthetic build, 8 devices."""
  assert train.train(small_config(*_build_overrides(setup, steps)), str(workdir)) == 0


def _data_order(workdir) -> dict[int, list[str]]:
  return {int(step): ids for step, *ids in (line.split() for line in (workdir / "data_order.txt").read_text()
                                            .splitlines())}


def test_trainer_reads_the_build_and_resumes_exactly(setup, tmp_path, monkeypatch):
  """data.source="tfds": the trainer draws ECGInstruct batches (several buckets, so several compiled lengths) and a
  run stopped at step 2 and restarted continues with the same examples as an uninterrupted one. Its evaluations
  (steps 2 and 4) open the eval split once and read the same first batch each time."""
  opened, evaluated = [], []
  open_input, next_global = train.input_batches, train.Input.next_global

  def counted_open(*args, split, **kwargs):
    batches = open_input(*args, split=split, **kwargs)
    if split == "eval":
      opened.append(batches)
    return batches

  def recorded_next(self, mesh):
    batch, ids = next_global(self, mesh)
    if any(self is eval_input for eval_input in opened):
      evaluated.append(ids.tolist())
    return batch, ids

  with monkeypatch.context() as patch:
    patch.setattr(train, "input_batches", counted_open)
    patch.setattr(train.Input, "next_global", recorded_next)
    _train_on_the_build(setup, tmp_path / "straight", steps=4)
  assert len(opened) == 1 and len(evaluated) == 2 and evaluated[0] == evaluated[1]
  # ... which only a rewind explains: the eval split holds more than one batch, so a second read would differ.
  assert len(pipeline.source(setup[0], "validation")) > small_config().train.global_batch
  _train_on_the_build(setup, tmp_path / "stopped", steps=2)
  _train_on_the_build(setup, tmp_path / "stopped", steps=4)
  straight, resumed = _data_order(tmp_path / "straight"), _data_order(tmp_path / "stopped")
  assert list(straight) == [1, 2, 3, 4] and resumed == straight
  examples = {pipeline.example_hash(i) for split in setup[2].values() for i in split}
  assert set(int(i) for ids in straight.values() for i in ids) <= examples


@pytest.mark.slow
def test_two_processes_pad_to_one_bucket(setup, tmp_path):
  """`pulse-jax train` on the build as 2 processes (2 CPU devices each): when their batches fall in different
  length buckets, both pad to the longer (pipeline.agree_on_length) so that the global batch has one shape, and
  each process reads its own share of every split."""
  steps = 4
  overrides = _build_overrides(setup, steps, buckets=tuple(range(256, SEQ_LEN, 32)))  # fine: lengths differ
  run = small_config(*overrides)
  model = model_config(run.model)
  shares = [pipeline.batches(run.data, model, split="train", batch_size=4, seed=run.data.seed, process_index=rank,
                             process_count=2) for rank in (0, 1)]
  drawn = [take(share, steps) for share in shares]  # what each process will draw, step by step
  lengths = [[batch["input_ids"].shape[1] for batch in batches] for batches in drawn]
  assert lengths[0] != lengths[1], lengths  # the processes disagree at some step: the case under test
  run_processes("train", ["--config", TINY_CONFIG, "--workdir", str(tmp_path / "run"),
                          *(f"--config.{o}" for o in (*SMALL_OVERRIDES, *overrides))], tmp_path / "logs",
                cache=tmp_path / "cache")
  order = _data_order(tmp_path / "run")
  assert order == {step: [str(i) for batches in drawn for i in batches[step - 1]["example_id"].tolist()]
                   for step in range(1, steps + 1)}
