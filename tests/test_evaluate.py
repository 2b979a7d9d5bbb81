"""`pulse-jax eval` end to end: a random tiny model from an Orbax checkpoint on tiny ECGBench builds (synthetic and
released), resume after an interruption, Arena feeding answers back, the judge on loopback, the report files."""

import contextlib
import io
import json
import pathlib

import grain
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx
from PIL import Image

from data_builders.ecg_bench.ecg_bench_dataset_builder import Builder as BenchBuilder
from pulse_jax import checkpoint, cli, decode, evaluate, metrics, parallel
from pulse_jax.config import apply_overrides, load_config, model_config
from pulse_jax.data.builder import EcgBuilderConfig
from pulse_jax.data.conversation import encode_prompt
from pulse_jax.data.examples import conversations_of
from pulse_jax.data.image_processor import load_image
from pulse_jax.data.tokenizer import Tokenizer, train_tokenizer
from pulse_jax.errors import CheckpointError, ConfigError, DataError, JudgeError
from pulse_jax.models import PulseModel
from tests.test_judge import FakeServer, _completion, _scores
from tests.train_helpers import TINY_CONFIG, run_processes

tfds.disable_progress_bar()

SYNTHETIC = EcgBuilderConfig(name="synthetic_eval", origin="synthetic", dpi=40.0, synthetic_records=12,
                             validation_fraction=0.15, code15_test_fraction=0.25)
SYNTHETIC_SETS = ("ptb-test", "ptb-test-report", "code15-test", "cpsc-test", "csn-test-no-cot", "g12-test-no-cot")
RELEASED_SETS = ("ptb-test-report", "ecgqa-test", "mmmu-ecg", "arena")
MAX_NEW_TOKENS, BATCH = 8, 8
BUCKETS = (256, 640)  # few compiled shapes: the prompts are 100 to 520 tokens
# configs/tiny.py shrunk: 32 px tiles of 8 px patches (16 features a view, up to 5 views), a 2-layer 64-wide LM.
SMALL_MODEL = (
    "model.vision.hidden_size=32", "model.vision.intermediate_size=64", "model.vision.num_layers=2",
    "model.vision.num_heads=2", "model.vision.image_size=32", "model.vision.patch_size=8",
    "model.text.hidden_size=64", "model.text.intermediate_size=128", "model.text.num_layers=2",
    "model.text.head_dim=16", "model.grid_pinpoints=((32, 64), (64, 32), (64, 64))")


def _image_file(path: pathlib.Path, size, seed: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)


def _released_manual_dir(root: pathlib.Path) -> pathlib.Path:
  """ECGBench files in the published layout for the sets the synthetic build lacks (and a report set)."""
  manual = root / "manual"
  for i, size in enumerate(((30, 40), (60, 25), (40, 40), (50, 90))):
    _image_file(manual / "images" / f"img{i}.png", size, seed=i)
  human = lambda question, answer: [{"from": "human", "value": f"<image>\n{question}"},
                                    {"from": "gpt", "value": answer}]
  files = {
      "ptb-test-report": [
          {"id": f"ptb-report-{i}", "image": f"img{i}.png", "conversations": human(
              "Please write a clinical report based on this ECG image.", report)}
          for i, report in enumerate(("Sinus rhythm. Left ventricular hypertrophy.",
                                      "Atrial fibrillation with right bundle branch block."))],
      "ecgqa-test": [
          {"id": f"qa-{i}", "image": f"img{i}.png", "conversations": human(
              "Which leads show baseline drift? Options: lead I, lead V2, none. Only answer based on the given "
              "Options without any explanation.", gold)} for i, gold in enumerate((["lead I", "lead V2"], ["none"]))],
      "mmmu-ecg": [
          {"id": f"mmmu-{i}", "image": f"img{i}.png", "conversations": human(
              "What is the rhythm?\nA. sinus\nB. flutter\nC. fibrillation\nD. paced", gold)}
          for i, gold in enumerate("ACB")],
      "arena": [
          {"id": f"arena-{i}", "image": f"img{i}.png", "conversations": [
              {"question": "What is the rhythm?", "answer": "Sinus rhythm at 70 bpm."},
              {"question": "Given your answer, what would you do next?", "answer": "Nothing urgent."}]}
          for i in range(3)],
  }
  for name, records in files.items():
    (manual / f"{name}.json").write_text(json.dumps(records))
  return manual


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(config, checkpoint step folder): synthetic and released ECGBench builds, a tokenizer trained on their text, a
  random small model saved as a training checkpoint (with optimizer state, which eval must not need)."""
  root = tmp_path_factory.mktemp("eval")
  data_dir = root / "tfds"
  texts = []
  for config, manual in ((SYNTHETIC, None), ("released", _released_manual_dir(root))):
    builder = BenchBuilder(config=config, data_dir=str(data_dir), file_format="array_record")
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=manual and str(manual)))
    texts += [turn["value"].replace("<image>", "") for source in builder.as_data_source().values()
              for i in range(len(source)) for turn in conversations_of(source[i])]
  tokenizer = Tokenizer(train_tokenizer(texts, root / "tokenizer", 400))
  config = apply_overrides(load_config(TINY_CONFIG), [
      *SMALL_MODEL, f"model.text.vocab_size={tokenizer.vocab_size}", f"model.image_token_id={tokenizer.image_token_id}",
      f"data.data_dir={data_dir}", f"data.bench_builder=ecg_bench/{SYNTHETIC.name}", f"data.tokenizer={tokenizer.path}",
      f"eval.max_new_tokens={MAX_NEW_TOKENS}", f"eval.batch_size={BATCH}", f"eval.buckets={BUCKETS}"])
  model = PulseModel(model_config(config.model), rngs=nnx.Rngs(3))
  params = nnx.to_pure_dict(nnx.state(model))
  state = {"params": params, "opt_state": {"mu": jax.tree.map(np.zeros_like, params)}, "step": np.int32(5)}
  saver = checkpoint.Checkpointer(str(root / "run" / "checkpoints"), keep=2)
  saver.save(5, state, iter(grain.MapDataset.range(4).to_iter_dataset()))
  saver.wait()
  saver.close()
  return config, root / "run" / "checkpoints" / "5"


def _eval_overrides(config) -> list[str]:
  """The command-line overrides that make configs/tiny.py the setup fixture's config."""
  return [f"--config.{key}={value}" for key, value in (
      *(item.split("=", 1) for item in SMALL_MODEL), ("model.text.vocab_size", config.model.text.vocab_size),
      ("model.image_token_id", config.model.image_token_id), ("data.data_dir", config.data.data_dir),
      ("data.bench_builder", config.data.bench_builder), ("data.tokenizer", config.data.tokenizer),
      ("eval.max_new_tokens", MAX_NEW_TOKENS), ("eval.batch_size", BATCH), ("eval.buckets", BUCKETS))]


@pytest.fixture(scope="module")
def synthetic_run(setup):
  """`pulse-jax eval` over every set of the synthetic build, the checkpoint found in WORKDIR/checkpoints."""
  config, step_dir = setup
  workdir = step_dir.parent.parent
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    assert cli.main(["eval", "--config", TINY_CONFIG, "--workdir", str(workdir), *_eval_overrides(config)]) == 0
  return workdir / "eval" / "step_5" / "ecg_bench-synthetic_eval", printed.getvalue()


def _records(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def _strict_json(path: pathlib.Path):
  def refuse(constant):
    raise ValueError(f"{constant} is not JSON")
  return json.loads(path.read_text(), parse_constant=refuse)


def test_predictions_cover_every_item_once_and_equal_plain_greedy_generation(setup, synthetic_run):
  config, step_dir = setup
  out_dir, printed = synthetic_run
  assert "| set | metric | ours (paper rules) | ours (strict) |" in printed
  loaded = evaluate.load_model(step_dir, model_config(config.model), parallel.make_mesh((1, 1, 1), jax.devices()[:1]),
                               parallel.RULES, default_tokenizer=config.data.tokenizer)
  firsts, texts = [], []
  for name in SYNTHETIC_SETS:
    items = evaluate.read_set(config.data, name)
    records = _records(out_dir / f"{name}.jsonl")
    assert sorted(r["question_id"] for r in records) == sorted(item.question_id for item in items)
    by_id = {r["question_id"]: r for r in records}
    for item in items:
      record = by_id[item.question_id]
      assert record["model_id"] == "run/step_5" and record["index"] == item.index
      assert record["prompt"] == item.questions[0].replace("<image>", "").strip()
      assert (record["answer"], record["labels"]) == (item.answers[0], list(item.labels))
    firsts.append(items[0])
    texts.append(by_id[items[0].question_id]["text"])
  # Each set's first item, answered in a plain unsharded batch of their own, gives the same texts.
  images = [evaluate.model_image(load_image(item.image), loaded.config, item.question_id) for item in firsts]
  prompts = [encode_prompt([{"from": "human", "value": item.questions[0]}], loaded.tokenizer,
                           num_image_tokens=image.num_tokens, record_id=item.question_id)
             for item, image in zip(firsts, images)]
  tokens, lengths = decode.generate(
      loaded.model, loaded.config, prompts, np.stack([i.pixel_values for i in images]),
      np.stack([i.layout for i in images]), max_new_tokens=MAX_NEW_TOKENS, eos_id=loaded.tokenizer.eos_id,
      pad_id=loaded.tokenizer.pad_id, buckets=BUCKETS)
  assert texts == [loaded.tokenizer.decode(row[:n]).strip() for row, n in zip(tokens, lengths)]
  assert any(texts)


def test_report_files(setup, synthetic_run):
  out_dir, _ = synthetic_run
  report = _strict_json(out_dir / "report.json")
  assert report["model_id"] == "run/step_5" and report["judge"] is None
  assert list(report["sets"]) == list(SYNTHETIC_SETS)
  for name in SYNTHETIC_SETS:
    records = sorted(_records(out_dir / f"{name}.jsonl"), key=lambda r: r["index"])
    predictions, golds, prompts = evaluate.score_inputs(name, records)
    for mode, strict in (("paper", False), ("strict", True)):
      want = json.loads(json.dumps(metrics.score_set(name, predictions, golds, prompts, strict)).replace(
          "NaN", "null"))
      assert report["sets"][name][mode] == want, (name, mode)
    majority = json.loads(json.dumps(metrics.majority_baseline(name, golds, prompts)).replace("NaN", "null"))
    assert report["sets"][name].get("majority") == majority, name  # None for the report set
  assert report["sets"]["ptb-test-report"]["paper"]["proxy_f1"] >= 0  # offline proxy without a judge
  assert report["sets"]["csn-test-no-cot"]["majority"]["accuracy"] > 0
  markdown = (out_dir / "report.md").read_text()
  header = ("| set | metric | ours (paper rules) | ours (strict) | majority answer (strict) | PULSE-7B | GPT-4o | "
            "Random |")
  assert header in markdown
  assert "| cpsc-test | f1 |" in markdown and "| csn-test-no-cot | accuracy |" in markdown
  assert "| g12-test-no-cot | accuracy |" in markdown and "78.2 | 49.2 |" in markdown  # PULSE-7B, GPT-4o G12EC
  plots = {"ptb-test", "code15-test", "cpsc-test", "csn-test-no-cot", "g12-test-no-cot"}
  assert {p.stem for p in out_dir.glob("*.png")} == plots
  for name in plots:
    assert f"![{name}]({name}.png)" in markdown
    with Image.open(out_dir / f"{name}.png") as image:
      image.load()
      assert image.format == "PNG" and image.width > 200 and image.height > 200


def test_resume_after_interruption(setup, synthetic_run, tmp_path, monkeypatch):
  """A run interrupted after its first batch, its last line cut by the kill, continues: no item twice, no item
  answered again, and the same predictions and scores as the uninterrupted run."""
  config, step_dir = setup
  full_dir, _ = synthetic_run
  sets = ("cpsc-test", "csn-test-no-cot")  # 12 items each: two batches per set
  calls, rows = [], []
  real_generate = decode.generate

  def generate(model, cfg, prompts, *args, **kwargs):
    calls.append(len(prompts))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real_generate(model, cfg, prompts, *args, **kwargs)

  monkeypatch.setattr(decode, "generate", generate)
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate(config, tmp_path, sets=sets, checkpoint_path=str(step_dir))
  out_dir = tmp_path / "eval" / "step_5" / "ecg_bench-synthetic_eval"
  first = _records(out_dir / "cpsc-test.jsonl")
  assert len(first) == BATCH
  with (out_dir / "cpsc-test.jsonl").open("a") as f:
    f.write('{"question_id": "cpsc-test-A0')  # killed mid-line

  def count_rows(model, cfg, prompts, *args, **kwargs):
    rows.append(kwargs)
    return real_generate(model, cfg, prompts, *args, **kwargs)

  monkeypatch.setattr(decode, "generate", count_rows)
  evaluate.evaluate(config, tmp_path, sets=sets, checkpoint_path=str(step_dir))
  assert len(rows) == 3  # the 4 cpsc items left, then csn's 12: nothing answered twice
  full, resumed = _strict_json(full_dir / "report.json"), _strict_json(out_dir / "report.json")
  for name in sets:
    records = _records(out_dir / f"{name}.jsonl")
    assert len(records) == len({r["question_id"] for r in records}) == 12
    assert {r["question_id"]: r for r in records} == {r["question_id"]: r for r in _records(full_dir / f"{name}.jsonl")}
    assert resumed["sets"][name] == full["sets"][name]


@pytest.mark.slow
def test_two_processes_evaluate_as_one(setup, synthetic_run, tmp_path):
  """`pulse-jax eval` as two processes of 2 CPU devices each (joined through the JAX_* variables, as on a GPU
  cluster), resuming a folder in which process 0 holds part of cpsc-test: every item once, the earlier lines
  kept, the answers of the one-process run, and process 0 alone writes and reports. Were the answered items not
  passed on from process 0, process 1 would generate one batch more and the collectives would not match."""
  config, step_dir = setup
  full_dir, _ = synthetic_run
  sets = ("cpsc-test", "ptb-test-report")
  out_dir = tmp_path / "run" / "eval" / "step_5" / "ecg_bench-synthetic_eval"
  out_dir.mkdir(parents=True)
  (out_dir / "run.json").write_text((full_dir / "run.json").read_text())
  kept = "".join((full_dir / "cpsc-test.jsonl").read_text().splitlines(keepends=True)[:5])
  (out_dir / "cpsc-test.jsonl").write_text(kept)
  args = ["--config", TINY_CONFIG, "--workdir", str(tmp_path / "run"), "--checkpoint", str(step_dir),
          *(f"--bench={name}" for name in sets), *_eval_overrides(config)]
  outputs = run_processes("eval", args, tmp_path / "logs", cache=tmp_path / "cache")
  assert "wrote " in outputs[0] and "wrote " not in outputs[1]
  for name in sets:
    records = _records(out_dir / f"{name}.jsonl")
    assert len(records) == len({r["question_id"] for r in records}) == len(evaluate.read_set(config.data, name))
    assert {r["question_id"]: r for r in records} == {r["question_id"]: r for r in _records(full_dir / f"{name}.jsonl")}
  assert (out_dir / "cpsc-test.jsonl").read_text().startswith(kept)
  assert "cpsc-test" in (out_dir / "report.md").read_text()

  # Other generation settings into the same folder: process 0 refuses it, and the other process stops too.
  refused = run_processes("eval", [*args, "--config.eval.max_new_tokens=4"], tmp_path / "refused",
                          cache=tmp_path / "cache", status=1)
  assert "max_new_tokens" in refused[0] and "process 0 failed on the evaluation's output folder" in refused[1]


def test_sampled_answers_survive_a_resume(setup, synthetic_run, tmp_path, monkeypatch):
  """With temperature > 0 every question samples with its own key (evaluate.row_key): a run interrupted after
  its first batch and resumed writes the answers an uninterrupted run writes."""
  config, step_dir = setup
  greedy_dir, _ = synthetic_run
  sampled = apply_overrides(config.copy_and_resolve_references(), ["eval.temperature=1.0"])
  sets = ("cpsc-test",)  # 12 items: two batches
  full_dir = evaluate.evaluate(sampled, tmp_path / "full", sets=sets, checkpoint_path=str(step_dir))
  real_generate, calls = decode.generate, []

  def interrupted(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real_generate(*args, **kwargs)

  monkeypatch.setattr(decode, "generate", interrupted)
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate(sampled, tmp_path / "resumed", sets=sets, checkpoint_path=str(step_dir))
  monkeypatch.setattr(decode, "generate", real_generate)
  resumed_dir = evaluate.evaluate(sampled, tmp_path / "resumed", sets=sets, checkpoint_path=str(step_dir))
  texts = lambda folder: {r["question_id"]: r["text"] for r in _records(folder / "cpsc-test.jsonl")}
  assert len(texts(resumed_dir)) == 12 and texts(resumed_dir) == texts(full_dir)
  assert texts(full_dir) != texts(greedy_dir)  # it did sample


def test_answers_of_other_weights_or_settings_never_mix(setup, synthetic_run):
  """The output folder records who answered (run.json); a rerun with other settings, or other weights under the
  same folder name, is refused instead of adding its answers to theirs."""
  config, step_dir = setup
  out_dir, _ = synthetic_run
  recorded = json.loads((out_dir / evaluate.RUN_FILE).read_text())
  assert recorded["model_id"] == "run/step_5" and recorded["checkpoint"] == str(step_dir.resolve())
  assert (recorded["temperature"], recorded["max_new_tokens"]) == (0.0, MAX_NEW_TOKENS)
  other = apply_overrides(config.copy_and_resolve_references(), ["eval.temperature=0.5"])
  with pytest.raises(ConfigError, match="holds answers of other weights or settings.*temperature: 0.0 there, 0.5 now"):
    evaluate.evaluate(other, out_dir.parents[2], sets=("cpsc-test",), checkpoint_path=str(step_dir))
  before = (out_dir / "cpsc-test.jsonl").read_text()
  evaluate.claim_output_folder(out_dir, recorded)  # the same run: accepted
  assert (out_dir / "cpsc-test.jsonl").read_text() == before


@pytest.fixture(scope="module")
def judge_server():
  fake = FakeServer()
  yield fake
  fake.close()


@pytest.fixture(scope="module")
def released_run(setup, judge_server, tmp_path_factory):
  """The released build's sets (report, ECG-QA, MMMU, Arena) with a judge on loopback; every prompt given to
  decode.generate recorded."""
  config, step_dir = setup
  workdir = tmp_path_factory.mktemp("released_run")

  def reply(body, n):
    prompt = body["messages"][0]["content"]
    if "[Reference conversation]" in prompt:
      return 200, _completion(_scores(Accuracy=6, Completeness=4, Instruction_Adherence=8)), 0.0
    return 200, _completion(_scores(Diagnosis=3, Form=5, Rhythm=10)), 0.0

  judge_server.reply = reply
  config = apply_overrides(config.copy_and_resolve_references(), [
      "data.bench_builder=ecg_bench/released", f"eval.judge.base_url={judge_server.base_url}",
      "eval.judge.model=judge-model", "eval.judge.api_key_env="])
  prompts = []
  real_generate = decode.generate

  def generate(model, cfg, batch_prompts, *args, **kwargs):
    prompts.extend(np.asarray(p).tolist() for p in batch_prompts)
    return real_generate(model, cfg, batch_prompts, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(decode, "generate", generate)
    out_dir = evaluate.evaluate(config, workdir, checkpoint_path=str(step_dir))
  return config, out_dir, prompts, step_dir


def test_arena_feeds_the_models_own_answers_back(released_run):
  config, out_dir, prompts, _ = released_run
  tokenizer = Tokenizer(config.data.tokenizer)
  items = {item.question_id: item for item in evaluate.read_set(config.data, "arena")}
  records = _records(out_dir / "arena.jsonl")
  assert len(records) == 3
  for record in records:
    item = items[record["question_id"]]
    assert record["prompt"] == ["What is the rhythm?", "Given your answer, what would you do next?"]
    assert record["answer"] == ["Sinus rhythm at 70 bpm.", "Nothing urgent."]
    assert len(record["text"]) == 2 and record["text"][0]
    loaded_config = model_config(config.model)
    image = evaluate.model_image(load_image(item.image), loaded_config, item.question_id)
    second_turn = encode_prompt(
        [{"from": "human", "value": item.questions[0]}, {"from": "gpt", "value": record["text"][0]},
         {"from": "human", "value": item.questions[1]}], tokenizer, num_image_tokens=image.num_tokens,
        record_id=item.question_id)
    assert second_turn.tolist() in prompts  # turn 2 was asked after the model's own turn-1 answer
    assert record["text"][0] in tokenizer.decode(second_turn)


def test_judge_scores_report_and_arena_and_its_answers_are_cached(released_run, judge_server):
  config, out_dir, _, step_dir = released_run
  report = _strict_json(out_dir / "report.json")
  assert report["judge"] == f"judge-model at {judge_server.base_url}"
  ptb_report, arena = report["sets"]["ptb-test-report"], report["sets"]["arena"]
  for mode in ("paper", "strict"):
    assert ptb_report[mode]["report_score"] == pytest.approx(60.0)  # (3 + 5 + 10) / 3 x 10
    assert ptb_report[mode]["aspects"] == pytest.approx({"Diagnosis": 30.0, "Form": 50.0, "Rhythm": 100.0})
    assert arena[mode]["arena_score"] == pytest.approx(60.0)
    assert arena[mode]["judged"] == 3 and "proxy_f1" in arena[mode]
  requests = len(judge_server.requests)
  assert requests == 2 + 3  # one call per report and per dialogue; the strict pass read the cache
  assert len((out_dir / "judge_cache.jsonl").read_text().splitlines()) == 5
  markdown = (out_dir / "report.md").read_text()
  assert "| ptb-test-report | report_score | 60.0 | 60.0 | – | 61.3 | 50.2 | 0.0 |" in markdown  # no majority
  assert "| arena | arena_score | 60.0 | 60.0 | – | 38.9 | 33.5 | 0.0 |" in markdown
  # Rescoring a finished run generates nothing and asks the judge nothing new.
  evaluate.evaluate(config, out_dir.parents[2], sets=("arena",), checkpoint_path=str(step_dir))
  assert _strict_json(out_dir / "report.json")["sets"].keys() == set(RELEASED_SETS)  # still every set
  assert len(judge_server.requests) == requests


def test_ecgqa_and_mmmu_are_scored_from_their_prompts_and_letters(released_run):
  _, out_dir, _, _ = released_run
  report = _strict_json(out_dir / "report.json")
  ecgqa = _records(out_dir / "ecgqa-test.jsonl")
  assert sorted(r["labels"] for r in ecgqa) == [["lead I", "lead V2"], ["none"]]
  assert all("Options: lead I, lead V2, none" in r["prompt"] for r in ecgqa)
  assert report["sets"]["ecgqa-test"]["strict"]["n"] == 2
  mmmu = report["sets"]["mmmu-ecg"]
  assert len(mmmu["paper"]["choices"]) == 3 and set(mmmu["strict"]["choices"]) <= set("ABCD")
  with Image.open(out_dir / "mmmu-ecg.png") as image:
    assert image.format == "PNG"


def test_read_predictions_cuts_a_partial_last_line(tmp_path):
  path = tmp_path / "set.jsonl"
  path.write_text('{"question_id": "a", "index": 0}\n{"question_id": "b", "ind')
  assert list(evaluate.read_predictions(path)) == ["a"]
  assert path.read_text() == '{"question_id": "a", "index": 0}\n'
  evaluate.append_predictions(path, [{"question_id": "b", "index": 1}])
  assert list(evaluate.read_predictions(path)) == ["a", "b"]
  path.write_text('not json\n{"question_id": "a"}\n')
  with pytest.raises(DataError, match="line 1 is not a prediction record"):
    evaluate.read_predictions(path)


def test_items_without_a_question_or_answer_are_skipped_and_counted(setup, monkeypatch):
  config, _ = setup
  turns = lambda *roles: {"from": [role.encode() for role in roles],
                          "value": [b"<image>\nWhat?" if role == "human" else b"A" for role in roles]}
  examples = [{"id": f"q{i}".encode(), "conversations": conversations, "labels": [], "image": b""}
              for i, conversations in enumerate([turns("human", "gpt"), turns("human"), turns("gpt"),
                                                 turns("human", "gpt")])]  # as tfds.data_source reads them
  monkeypatch.setattr(evaluate.pipeline, "source", lambda data, name: examples)
  skipped = evaluate.SkipCounter()
  items = evaluate.read_set(config.data, "ptb-test", skipped)
  assert [item.question_id for item in items] == ["q0", "q3"] and [item.index for item in items] == [0, 3]
  assert skipped.counts == {"no question or gold answer": 2}
  examples.append(examples[0])
  with pytest.raises(DataError, match="id 'q0' occurs twice"):
    evaluate.read_set(config.data, "ptb-test", skipped)


def test_a_failed_judge_is_not_asked_again():
  """A judge error in the paper-rules scoring leaves both modes their offline scores and stops the judging."""
  class FailingJudge:
    calls = 0

    def score_reports(self, predictions, golds):
      FailingJudge.calls += 1
      raise JudgeError("http://judge/v1/chat/completions: HTTP 401: bad key", reason="HTTP 401")

  records = [{"question_id": "r0", "index": 0, "prompt": "Write a report.", "text": "Sinus rhythm.",
              "answer": "Sinus rhythm.", "labels": []}]
  results = evaluate.score_records("ptb-test-report", records, FailingJudge())
  assert FailingJudge.calls == 1 and "HTTP 401" in results["paper"]["judge_error"]
  assert "judge_error" not in results["strict"]
  assert results["paper"]["proxy_f1"] == results["strict"]["proxy_f1"] == pytest.approx(100.0)


def test_bad_requests_are_named(setup, tmp_path):
  config, step_dir = setup
  with pytest.raises(ConfigError, match="unknown ECGBench set"):
    evaluate.evaluate(config, tmp_path, sets=("ptb-xl",), checkpoint_path=str(step_dir))
  with pytest.raises(ConfigError, match="has no set arena; it holds ptb-test, ptb-test-report"):
    evaluate.evaluate(config, tmp_path, sets=("arena",), checkpoint_path=str(step_dir))
  with pytest.raises(CheckpointError, match="no checkpoint"):
    evaluate.evaluate(config, tmp_path, sets=("ptb-test",))
  wrong = apply_overrides(config.copy_and_resolve_references(), ["model.text.num_layers=3"])
  with pytest.raises(CheckpointError, match="cannot restore the parameters"):
    evaluate.evaluate(wrong, tmp_path, sets=("ptb-test",), checkpoint_path=str(step_dir))
  assert cli.main(["eval", "--config", TINY_CONFIG, "--workdir", str(tmp_path),
                   f"--config.data.data_dir={config.data.data_dir}", "--bench", "nope"]) == 1
  with pytest.raises(ConfigError, match="gs://bucket/run: predictions are appended.*use a local folder"):
    evaluate.evaluate(config, "gs://bucket/run", sets=("ptb-test",), checkpoint_path=str(step_dir))
