"""ECGBench evaluation: `pulse-jax eval --config CFG --workdir DIR [--bench NAME ...] [--checkpoint PATH]`.

Generates answers for the ECGBench sets of a TFDS build (config `data.bench_builder` in `data.data_dir`, one split
per set; `pulse-jax build-data`), scores them by the paper's rules and by the corrected ones (pulse_jax.metrics),
and writes a report beside the paper's figures.

Weights: `--checkpoint` is a training workdir, its checkpoints/ folder or one Orbax step folder (the latest step
is taken; parameters only are read, never the optimizer state), or a transformers LLaVA-NeXT folder (config.json +
*.safetensors, checked against the config's model). Default: DIR/checkpoints. The tokenizer is `--tokenizer`, else
the Hugging Face folder's tokenizer.model, else `data.tokenizer`.

Generation (pulse_jax.decode): greedy unless `eval.temperature` > 0, at most `eval.max_new_tokens` per answer (the
paper: 1024), `eval.batch_size` rows per call. Items are sorted by prompt length and every call is filled to
batch_size rows (repeating its last row), so prompts of one length bucket (`eval.buckets`, or decode's default
buckets) share one compiled executable for the whole run. The prompt is the llava_v1 template of the first human
turn with the image (as PULSE's model_ecg_resume.py builds it). ECG Arena is multi-turn: each question is asked
after the earlier questions and the model's own earlier answers (model_ecg_arena.py); a dialogue whose model
answer is empty cannot continue (the template has no empty turns) and is skipped. Items whose image does not
decode are skipped too; skips are counted per reason and printed.

Sampling (`eval.temperature` > 0) draws each question with a key of its own, from eval.seed, the question id and
the turn (row_key): an answer does not depend on the batch it falls in, and a resumed run writes what an
uninterrupted one would. Items without a question or a gold answer are skipped and counted too.

Outputs, in DIR/eval/<weights>/<build>/ (DIR is local: answers are appended; <weights> = step_<N> for an Orbax
step, the folder name for Hugging Face; <build> = data.bench_builder with "/" as "-", e.g. ecg_bench-released):
  run.json      the weights (model id, checkpoint path), tokenizer and generation settings that answered: a rerun
                with others into the same folder is refused (claim_output_folder);
  <set>.jsonl   one line per item, appended after every batch: question_id, index (position in the split), prompt
                (the question as asked, without "<image>"), text (the model's answer), model_id, answer (the gold
                answer), labels (the build's gold labels). Arena lines hold lists: prompt, text and answer per turn.
                A rerun skips the question_ids already written, so a killed run continues where it stopped; a line
                cut short by the kill is discarded.
  report.md     the scores of both rule sets beside PULSE-7B's and GPT-4o's (metrics.comparison_table), the items
                per set, and the plots; it covers every set with predictions in the folder, so evaluating one more
                set later (--bench) extends the report (answers already in the judge cache cost nothing);
  report.json   the same numbers at full precision with every per-class and per-sample detail (NaN -> null);
  <set>.png     per-class F1 bars (multi-label sets) or confusion matrices (multiple-choice sets), both rule sets;
  judge_cache.jsonl  the judge's answers, when `eval.judge.base_url` is set (rescoring never pays twice).
Report generation and Arena are scored by the LLM judge when `eval.judge.base_url` names an OpenAI-compatible
endpoint (pulse_jax.judge), and always by the offline findings-F1 proxy.

Multi-host (a TPU pod slice, a GPU cluster: every process runs the same command, as for training): the mesh spans
every process's devices and each batch is sharded over it; every process reads the benchmark build (data.data_dir
must be visible to all, e.g. gs://) and prepares the same batches, and process 0 alone reads and writes DIR (on its
own disk), scores and reports. Which items are already answered comes from process 0 to the others, so a resumed
run stays in step everywhere; a refusal of the output folder on process 0 stops every process.
"""

import argparse
import dataclasses
import datetime
import io
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pulse_jax import checkpoint, decode, jsonl, metrics, parallel
from pulse_jax.config import accept_config_overrides, apply_overrides, load_config, model_config
from pulse_jax.convert import hf
from pulse_jax.data import pipeline
from pulse_jax.data.conversation import encode_prompt
from pulse_jax.data.examples import conversations_of, decode_text
from pulse_jax.data.image_processor import for_model, load_image, preprocess
from pulse_jax.data.tokenizer import IMAGE_TOKEN, MODEL_FILE_NAME, Tokenizer
from pulse_jax.ecg.skips import SkipCounter, note_skip
from pulse_jax.errors import ConfigError, DataError, ImageError
from pulse_jax.judge import JudgeClient, JudgeConfig
from pulse_jax.models.config import PulseConfig
from pulse_jax.models.llava import PulseModel, feature_layout, num_image_tokens

# Multi-host: the other processes wait at exit while process 0 scores and reports alone (the judge can take long);
# JAX's default wait of 300 s would then abort them all, process 0 included, before the report is written.
REPORT_WAIT_SECONDS = 24 * 3600

# -------------------------------------------------------------------------------------------------------------
# Weights and tokenizer.


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model ready for generation.

  Attributes:
    model: the PulseModel, its parameters placed on the mesh it was loaded for.
    config: its PulseConfig.
    tokenizer: the tokenizer (its <image> id equals config.image_token_id).
    model_id: names the weights in prediction files: "<run>/step_<N>" or the Hugging Face folder name.
    tag: the folder name of its outputs: "step_<N>" or the Hugging Face folder name.
    path: the step folder or Hugging Face folder the parameters were read from.
  """
  model: PulseModel
  config: PulseConfig
  tokenizer: Tokenizer
  model_id: str
  tag: str
  path: epath.Path


def load_model(path: str | os.PathLike, config: PulseConfig | None, mesh: Mesh, rules: parallel.Rules, *,
               tokenizer: str = "", default_tokenizer: str = "") -> LoadedModel:
  """Loads weights (an Orbax checkpoint or a Hugging Face folder, see the module docstring) onto `mesh`.

  Args:
    path: the checkpoint.
    config: the model the weights must fit; None takes it from a Hugging Face folder's config.json (in
      spatial_unpad mode, as transformers reads it; pass a config for a flat-mode model such as PULSE-7B).
    mesh, rules: where the parameters go (pulse_jax.parallel).
    tokenizer: a SentencePiece model or a folder holding tokenizer.model; "" takes the Hugging Face folder's
      tokenizer.model, else `default_tokenizer` (the config's data.tokenizer).

  Raises:
    CheckpointError: no checkpoint at `path`, or one that does not fit `config`.
    ConfigError: no tokenizer, or one whose <image> id is not config.image_token_id.
  """
  path = epath.Path(path)  # an Orbax checkpoint may be on gs://
  hf_folder = checkpoint.is_hf_folder(path)
  if config is None:
    if not hf_folder:
      raise ConfigError(f"{path}: an Orbax checkpoint holds no model config; pass --config")
    config = hf.config_from_hf(json.loads((path / "config.json").read_text()))
  with nnx.use_eager_sharding(False):
    abstract_model = nnx.eval_shape(lambda: PulseModel(config, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract_model)
  params, source = checkpoint.load_params(path, config, parallel.state_shardings(abstract_state, mesh, rules))
  source = source if "://" in str(source) else source.resolve()  # names a relative path's folders
  if hf_folder:
    model_id = tag = source.name
    tokenizer = tokenizer or (str(path) if (path / MODEL_FILE_NAME).is_file() else "")
  else:
    run_dir = source.parent
    run = run_dir.parent.name if run_dir.name == "checkpoints" else run_dir.name
    tag = f"step_{source.name}"
    model_id = f"{run}/{tag}"
  tokenizer = tokenizer or default_tokenizer
  if not tokenizer:
    raise ConfigError(f"{path}: no tokenizer: pass --tokenizer or set data.tokenizer (a SentencePiece model)")
  loaded_tokenizer = Tokenizer(tokenizer)
  if loaded_tokenizer.image_token_id != config.image_token_id:
    raise ConfigError(f"tokenizer {loaded_tokenizer.path} has {loaded_tokenizer.image_token_id} pieces, so its "
                      f"<image> id is {loaded_tokenizer.image_token_id}; the model's image_token_id is "
                      f"{config.image_token_id}")
  return LoadedModel(nnx.merge(graphdef, params), config, loaded_tokenizer, model_id, tag, source)


# -------------------------------------------------------------------------------------------------------------
# Benchmark items.


@dataclasses.dataclass(frozen=True)
class BenchItem:
  """One ECGBench item as asked.

  Attributes:
    index: position in its split (scores are computed in this order, as the paper's file order).
    question_id: the example id.
    questions: the human turns to ask, in order; the first holds "<image>". One for every set but arena.
    answers: the gold answers, one per question.
    labels: the build's gold labels (ecgqa-test: the list of correct options).
    image: the encoded image file.
  """
  index: int
  question_id: str
  questions: tuple[str, ...]
  answers: tuple[str, ...]
  labels: tuple[str, ...]
  image: bytes


def bench_data(data: Mapping[str, Any]) -> dict[str, Any]:
  """The config's data section pointed at the ECGBench build, as pulse_jax.data.pipeline.source reads it."""
  return {**data, "builder": data["bench_builder"]}


def built_sets(data: Mapping[str, Any]) -> list[str]:
  """The ECGBench sets that the build holds, in metrics.BENCH_SETS order."""
  try:
    splits = tfds.builder(data["bench_builder"], data_dir=data["data_dir"] or None).info.splits
  except (ValueError, FileNotFoundError) as e:  # unknown dataset or config (DatasetNotFoundError is a ValueError)
    raise ConfigError(f"cannot open {data['bench_builder']!r} in data_dir {data['data_dir']!r}: "
                      f"{str(e).splitlines()[0]} (build it with `pulse-jax build-data`)") from e
  return [name for name in metrics.BENCH_SETS if name in splits]


def select_sets(requested: Sequence[str], available: Sequence[str], builder: str) -> list[str]:
  """The sets to evaluate: `requested` (all of metrics.BENCH_SETS when empty) that the build holds.

  An explicitly requested set that is unknown or not built is an error; by default the absent ones are skipped.
  """
  unknown = [name for name in requested if name not in metrics.BENCH_SETS]
  if unknown:
    raise ConfigError(f"unknown ECGBench set(s) {', '.join(unknown)}; known: {', '.join(metrics.BENCH_SETS)}")
  missing = [name for name in requested if name not in available]
  if missing:
    raise ConfigError(f"{builder} has no set {', '.join(missing)}; it holds {', '.join(available) or 'none'}")
  return [name for name in (requested or metrics.BENCH_SETS) if name in available]


def read_set(data: Mapping[str, Any], name: str, skipped: SkipCounter | None = None) -> list[BenchItem]:
  """The items of set `name` in split order; an item without a question or a gold answer is skipped and counted
  in `skipped` (logged as a warning without one).

  Raises:
    DataError: two items share an id (predictions are matched by id: the build itself is wrong).
  """
  source = pipeline.source(bench_data(data), name)
  multi_turn = metrics.BENCH_SETS[name].kind == "arena"
  items, seen = [], set()
  for index in range(len(source)):
    example = source[index]
    question_id = decode_text(example["id"])
    if question_id in seen:
      raise DataError(f"{data['bench_builder']} {name}: id {question_id!r} occurs twice; predictions are matched "
                      "by id")
    seen.add(question_id)
    turns = conversations_of(example)
    questions = tuple(t["value"] for t in turns if t["from"] == "human")
    answers = tuple(t["value"] for t in turns if t["from"] == "gpt")
    if not questions or not answers:
      note_skip(skipped, question_id, DataError(
          f"{data['bench_builder']} {name}: item {question_id} has no question or no gold answer",
          reason="no question or gold answer"))
      continue
    turn_count = len(questions) if multi_turn else 1
    items.append(BenchItem(index=index, question_id=question_id, questions=questions[:turn_count],
                           answers=answers[:turn_count], labels=tuple(decode_text(l) for l in example["labels"]),
                           image=example["image"]))
  return items


# -------------------------------------------------------------------------------------------------------------
# Prediction files.


def read_predictions(path: pathlib.Path) -> dict[str, dict]:
  """{question_id: record} of a predictions file; {} when it does not exist.

  A last line without its newline (the run was killed while writing it) is cut off the file, so that appending
  continues on a clean line and the item is generated again.

  Raises:
    DataError: a complete line that is not a JSON record with a question_id.
  """
  records = {}
  for number, line in jsonl.complete_lines(path):
    try:
      record = json.loads(line)
      records[record["question_id"]] = record
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise DataError(f"{path}: line {number} is not a prediction record ({e}); remove it to continue") from e
  return records


RUN_FILE = "run.json"


def claim_output_folder(out_dir: pathlib.Path, identity: Mapping[str, Any]) -> None:
  """Records which weights and generation settings answer into `out_dir` (its run.json), or checks that they
  are the ones that already did: a rerun only adds the missing answers, so a run of other weights or settings
  (another run's step of the same number, a second Hugging Face folder of the same name) must not mix into them.

  A folder of answers from before run.json existed is claimed with a warning: nothing says whose they are.

  Raises:
    ConfigError: `out_dir` holds the answers of other weights or settings; the message says what differs.
    DataError: its run.json is not JSON.
  """
  path = out_dir / RUN_FILE
  if not path.is_file():
    answered = sorted(p.name for p in out_dir.glob("*.jsonl") if p.name != "judge_cache.jsonl")
    if answered:
      tqdm.tqdm.write(f"warning: {out_dir} holds answers ({', '.join(answered)}) but no {RUN_FILE}: they are taken "
                      f"as {identity['model_id']}'s; remove them if they are not")
    partial = path.with_name(f"{RUN_FILE}.incomplete")
    partial.write_text(json.dumps(identity, indent=1) + "\n")
    partial.rename(path)
    return
  try:
    previous = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{path} is not JSON ({e}); remove it if the answers in {out_dir} are this model's") from e
  differing = [f"{key}: {previous.get(key)!r} there, {value!r} now" for key, value in identity.items()
               if previous.get(key) != value]
  if differing:
    raise ConfigError(f"{out_dir} holds answers of other weights or settings ({'; '.join(differing)}); they "
                      "would mix with this run's: use another --workdir, or remove the folder to start it again")


def append_predictions(path: pathlib.Path, records: Iterable[Mapping[str, Any]]) -> None:
  """Appends records as JSON lines and flushes them, so a kill loses at most the batch being generated."""
  with path.open("a", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def prediction_record(item: BenchItem, texts: Sequence[str], *, multi_turn: bool, model_id: str) -> dict:
  """The jsonl record of an answered item (see the module docstring)."""
  prompts = [q.replace(IMAGE_TOKEN, "").strip() for q in item.questions]
  if multi_turn:
    prompt, text, answer = prompts, list(texts), list(item.answers)
  else:
    prompt, text, answer = prompts[0], texts[0], item.answers[0]
  return {"question_id": item.question_id, "index": item.index, "prompt": prompt, "text": text,
          "model_id": model_id, "answer": answer, "labels": list(item.labels)}


# -------------------------------------------------------------------------------------------------------------
# Generation.


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
  """The config's eval section, as generation uses it (see configs/*.py)."""
  batch_size: int
  max_new_tokens: int
  temperature: float
  top_p: float
  buckets: tuple[int, ...]
  seed: int

  @classmethod
  def from_config(cls, section: Mapping[str, Any]) -> "GenerationSettings":
    settings = cls(batch_size=int(section["batch_size"]), max_new_tokens=int(section["max_new_tokens"]),
                   temperature=float(section["temperature"]), top_p=float(section["top_p"]),
                   buckets=tuple(int(b) for b in section["buckets"]) or decode.DEFAULT_BUCKETS,
                   seed=int(section["seed"]))
    if settings.batch_size < 1:
      raise ConfigError(f"eval.batch_size must be >= 1, got {settings.batch_size}")
    return settings


@dataclasses.dataclass(frozen=True)
class ModelImage:
  """One image as the model takes it.

  Attributes:
    pixel_values: float32[config.max_views, 3, S, S], anyres views then zero views.
    layout: int32[max_image_tokens(config)], the feature layout (pulse_jax.models.feature_layout).
    num_tokens: image placeholders the prompt holds for it.
  """
  pixel_values: np.ndarray
  layout: np.ndarray
  num_tokens: int


def model_image(image: Image.Image, config: PulseConfig, name: str) -> ModelImage:
  """The anyres views of a decoded image, padded to config.max_views, with its layout and placeholder count."""
  processed = preprocess(image, for_model(config), name=name)
  pixel_values = np.zeros((config.max_views, *processed.pixel_values.shape[1:]), np.float32)
  pixel_values[:len(processed.pixel_values)] = processed.pixel_values
  return ModelImage(pixel_values, feature_layout(np.array([processed.image_size]), config)[0],
                    num_image_tokens(processed.image_size, config))


def row_key(seed: int, question_id: str, turn: int) -> jax.Array:
  """The sampling key of one question of an item: from the seed, the item and the turn alone, so that a sampled
  answer does not depend on the batch it falls in, and a resumed run draws what an uninterrupted one does."""
  item = pipeline.example_hash(question_id) & 0x7FFFFFFF
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), item), turn)


class Generator:
  """Answers batches of benchmark items with one model (see the module docstring for batching)."""

  def __init__(self, loaded: LoadedModel, settings: GenerationSettings, mesh: Mesh | None):
    self.loaded = loaded
    self.settings = settings
    self.mesh = mesh
    self.new_tokens = 0

  def sort_length(self, item: BenchItem) -> int:
    """About the first prompt's token count, for ordering items: the question's tokens plus the image features
    for the size in the image header (EXIF rotation ignored: the order only needs to be close)."""
    try:
      with Image.open(io.BytesIO(item.image)) as image:
        width, height = image.size
      image_tokens = num_image_tokens((height, width), self.loaded.config)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
      image_tokens = 0  # undecodable: skipped when it is prepared
    return image_tokens + len(self.loaded.tokenizer.encode(item.questions[0]))

  def answer(self, items: Sequence[BenchItem], skipped: SkipCounter) -> list[list[str] | None]:
    """Per item, the model's answer to each of its questions, or None when the item was skipped (counted)."""
    images: list[ModelImage | None] = []
    for item in items:
      try:
        images.append(model_image(load_image(item.image), self.loaded.config, item.question_id))
      except ImageError as e:
        skipped.add(item.question_id, e)
        images.append(None)
    answers: list[list[str] | None] = [[] if image is not None else None for image in images]
    for turn in range(max(len(item.questions) for item in items)):
      rows, prompts = [], []
      for row, item in enumerate(items):
        if answers[row] is None or turn >= len(item.questions):
          continue
        history = [{"from": role, "value": value} for question, answer in zip(item.questions, answers[row])
                   for role, value in (("human", question), ("gpt", answer))]
        try:
          prompts.append(encode_prompt(history + [{"from": "human", "value": item.questions[turn]}],
                                       self.loaded.tokenizer, num_image_tokens=images[row].num_tokens,
                                       record_id=item.question_id))
        except DataError as e:  # an empty earlier answer: the template cannot hold it
          skipped.add(item.question_id, e)
          answers[row] = None
          continue
        rows.append(row)
      if rows:
        keys = ([row_key(self.settings.seed, items[row].question_id, turn) for row in rows]
                if self.settings.temperature > 0 else None)  # greedy decoding draws nothing
        texts = self._generate(prompts, [images[row] for row in rows], keys)
        for row, text in zip(rows, texts):
          answers[row].append(text)
    return answers

  def _generate(self, prompts: list[np.ndarray], images: list[ModelImage], keys: list[jax.Array] | None
                ) -> list[str]:
    """Decoded answers for the prompts, in one decode.generate call of batch_size rows (the last row repeated),
    each row sampled with its own key (keys=None: greedy)."""
    fill = self.settings.batch_size - len(prompts)
    prompts, images = prompts + prompts[-1:] * fill, images + images[-1:] * fill
    rng = None if keys is None else jnp.stack(keys + keys[-1:] * fill)
    settings, tokenizer = self.settings, self.loaded.tokenizer
    tokens, lengths = decode.generate(
        self.loaded.model, self.loaded.config, prompts, np.stack([i.pixel_values for i in images]),
        np.stack([i.layout for i in images]), max_new_tokens=settings.max_new_tokens, eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id, temperature=settings.temperature, top_p=settings.top_p,
        rng=rng, buckets=settings.buckets, mesh=self.mesh)
    real = len(prompts) - fill
    self.new_tokens += int(lengths[:real].sum())
    return [tokenizer.decode(tokens[row, :lengths[row]]).strip() for row in range(real)]


def on_process_zero(action: Callable[[], Any]) -> Any:
  """Runs `action` (it touches the output folder, which only process 0 does) on process 0 and returns its result
  there (None on the others). The other processes wait for its outcome, so that a failure there (a refused folder,
  a damaged predictions file, a full disk) stops them all instead of leaving them in the next collective."""
  result = failure = None
  if jax.process_index() == 0:
    try:
      result = action()
    except Exception as e:  # pylint: disable=broad-except  re-raised below, once the others know
      failure = e
  if jax.process_count() > 1 and int(multihost_utils.broadcast_one_to_all(np.int32(failure is not None))):
    if failure is None:
      raise ConfigError("process 0 failed on the evaluation's output folder; its log says why")
  if failure is not None:
    raise failure
  return result


def positions_from_process_zero(positions: Sequence[int]) -> set[int]:
  """Process 0's `positions` (split positions) on every process; its own elsewhere when there is one process."""
  if jax.process_count() == 1:
    return set(positions)
  count = int(multihost_utils.broadcast_one_to_all(np.int32(len(positions))))
  padded = np.zeros(count, np.int32)  # int32: JAX's default 32-bit mode would truncate int64
  padded[:len(positions)] = positions
  return set(np.asarray(multihost_utils.broadcast_one_to_all(padded)).tolist())


def generate_set(name: str, items: Sequence[BenchItem], generator: Generator, path: pathlib.Path) -> SkipCounter:
  """Answers the items of set `name` not yet in the predictions file `path`, appending after every batch.

  Multi-host: every process takes part in generation; process 0 alone reads and appends to `path`.
  """
  is_main = jax.process_index() == 0
  # A damaged file stops every process, not only the one reading it.
  answered = on_process_zero(lambda: read_predictions(path)) or {}
  done = positions_from_process_zero([item.index for item in items if item.question_id in answered])
  todo = sorted((item for item in items if item.index not in done), key=generator.sort_length)
  multi_turn = metrics.BENCH_SETS[name].kind == "arena"
  skipped = SkipCounter()
  batch_size = generator.settings.batch_size
  start_tokens, start_time = generator.new_tokens, time.perf_counter()
  with tqdm.tqdm(total=len(items), initial=len(items) - len(todo), desc=name, unit="item", dynamic_ncols=True,
                 disable=not is_main) as bar:
    for first in range(0, len(todo), batch_size):
      batch = todo[first:first + batch_size]
      answers = generator.answer(batch, skipped)
      on_process_zero(lambda: append_predictions(path, [
          prediction_record(item, texts, multi_turn=multi_turn, model_id=generator.loaded.model_id)
          for item, texts in zip(batch, answers) if texts is not None]))
      bar.update(len(batch))
      elapsed = time.perf_counter() - start_time
      bar.set_postfix(tok_s=f"{(generator.new_tokens - start_tokens) / elapsed:,.1f}")
  return skipped


# -------------------------------------------------------------------------------------------------------------
# Scoring.


def score_inputs(name: str, records: Sequence[Mapping[str, Any]]) -> tuple[list, list, list]:
  """(predictions, golds, prompts) of prediction records in metrics.score_set's form for set `name`."""
  kind = metrics.BENCH_SETS[name].kind
  predictions = [r["text"] for r in records]
  prompts = [r["prompt"] for r in records]
  if kind == "ecgqa":
    golds = [r["labels"] for r in records]
  elif kind == "arena":
    golds = [[{"question": q, "answer": a} for q, a in zip(r["prompt"], r["answer"])] for r in records]
  else:
    golds = [r["answer"] for r in records]
  return predictions, golds, prompts


def score_records(name: str, records: Sequence[Mapping[str, Any]],
                  judge: JudgeClient | None = None) -> dict[str, Any]:
  """{"paper": ..., "strict": ...[, "majority": ...]}: metrics.score_set results of a set's prediction records, in
  split order, and metrics.majority_baseline of the same items (the set's most frequent gold answer, strict
  rules; not for report and Arena sets).

  A set that cannot be scored (no predictions, no gold label of the label space) gets {"error": why} instead,
  so one such set never hides the others' scores. After a judge error ({"judge_error": why} beside the offline
  scores) the judge is not asked again: the strict mode goes without it.
  """
  records = sorted(records, key=lambda r: r["index"])
  predictions, golds, prompts = score_inputs(name, records)
  results = {}
  for mode, strict in (("paper", False), ("strict", True)):
    try:
      results[mode] = metrics.score_set(name, predictions, golds, prompts, strict, judge=judge)
    except DataError as e:
      results[mode] = {"set": name, "mode": mode, "error": str(e)}
    if "judge_error" in results[mode]:
      judge = None
  if "error" not in results["strict"]:
    baseline = metrics.majority_baseline(name, golds, prompts)
    if baseline is not None:
      results["majority"] = baseline
  return results


# -------------------------------------------------------------------------------------------------------------
# Report.


def _json_safe(value: Any) -> Any:
  """`value` with NaN and infinities as None and numpy scalars as Python numbers (strict JSON)."""
  if isinstance(value, Mapping):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _save(figure: Figure, path: pathlib.Path) -> None:
  FigureCanvasAgg(figure)
  figure.savefig(path, dpi=100)


def plot_f1(name: str, results: Mapping[str, Mapping[str, Any]], path: pathlib.Path) -> None:
  """Per-class F1 bars of a multi-label set, paper and strict rules side by side."""
  classes = list(dict.fromkeys(c for r in results.values() for c in r.get("classes", [])))
  figure = Figure(figsize=(max(5.0, 0.8 * len(classes) + 2), 3.5), layout="constrained")
  axes = figure.add_subplot()
  width = 0.4
  for offset, (mode, result) in zip((-width / 2, width / 2), results.items()):
    f1 = result.get("per_class_f1", {})
    axes.bar(np.arange(len(classes)) + offset, [f1.get(c, 0.0) for c in classes], width, label=f"{mode} rules")
  axes.set_xticks(np.arange(len(classes)), classes, rotation=45, ha="right")
  axes.set_ylim(0, 100)
  axes.set_ylabel("F1 (x100)")
  axes.set_title(f"{name}: per-class F1")
  axes.legend()
  _save(figure, path)


def plot_confusion(name: str, golds: Sequence[str], results: Mapping[str, Mapping[str, Any]],
                   path: pathlib.Path) -> None:
  """Confusion matrices (gold letter x chosen letter, random fallbacks included) of a multiple-choice set."""
  letters = list(metrics.BENCH_SETS[name].labels)
  gold_letters = [gold.strip()[:1] for gold in golds]
  figure = Figure(figsize=(4.2 * len(results), 4.0), layout="constrained")
  for column, (mode, result) in enumerate(results.items(), 1):
    counts = np.zeros((len(letters), len(letters)), int)
    for gold, choice in zip(gold_letters, result.get("choices", [])):
      if gold in letters and choice in letters:
        counts[letters.index(gold), letters.index(choice)] += 1
    axes = figure.add_subplot(1, len(results), column)
    axes.imshow(counts, cmap="Blues")
    for (row, col), count in np.ndenumerate(counts):
      if count:
        dark = count > counts.max() / 2
        axes.text(col, row, str(count), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    axes.set_xticks(range(len(letters)), letters)
    axes.set_yticks(range(len(letters)), letters)
    axes.set_xlabel("chosen")
    axes.set_ylabel("gold")
    axes.set_title(f"{name} ({mode} rules): accuracy {result.get('accuracy', float('nan')):.1f}")
  _save(figure, path)


def write_plots(name: str, results: Mapping[str, Mapping[str, Any]], records: Sequence[Mapping[str, Any]],
                out_dir: pathlib.Path) -> pathlib.Path | None:
  """The set's PNG (see the module docstring), or None for kinds without one or sets that failed to score.

  `records` are the prediction records in split order, as they were scored.
  """
  kind = metrics.BENCH_SETS[name].kind
  scored = {mode: results[mode] for mode in ("paper", "strict") if "error" not in results[mode]}
  if not scored or kind not in ("multilabel", "mcq"):
    return None
  path = out_dir / f"{name}.png"
  if kind == "multilabel":
    plot_f1(name, scored, path)
  else:
    plot_confusion(name, [r["answer"] for r in records], scored, path)
  return path


def _cell(value: Any) -> str:
  return "–" if value is None else str(value)


def write_report(out_dir: pathlib.Path, summary: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
                 plots: Mapping[str, pathlib.Path]) -> None:
  """report.json (everything) and report.md (tables and plots) in out_dir.

  Args:
    summary: what was evaluated and how (model_id, checkpoint, bench_builder, decoding, judge, and per set the
      items in the build, the predictions and this run's skips; None where unknown).
    results: {set: {"paper": score_set result, "strict": ...}}.
    plots: {set: PNG path}.
  """
  (out_dir / "report.json").write_text(json.dumps(_json_safe({
      **summary, "sets": results, "paper_results": metrics.PAPER_RESULTS}), indent=1, allow_nan=False))
  scored = [result for modes in results.values() for result in modes.values() if "error" not in result]
  judge = summary["judge"]
  lines = [
      f"# ECGBench: {summary['model_id']}", "",
      f"- weights: `{summary['checkpoint']}`",
      f"- benchmark: `{summary['bench_builder']}`",
      f"- decoding: {summary['decoding']}",
      f"- report / arena judge: {judge if judge else 'none (offline findings-F1 proxy only: proxy_f1)'}",
      f"- written: {summary['written']}", "",
      "| set | items | predictions | complete (paper size) | skipped this run | unparsed MCQ (paper / strict) |",
      "|---|---:|---:|---|---:|---|"]
  for name, modes in results.items():
    paper, strict = modes["paper"], modes["strict"]
    info = summary["sets"][name]
    lines.append(f"| {name} | {_cell(info['items'])} | {info['predictions']} | "
                 f"{'yes' if paper.get('complete') else 'no'} ({metrics.BENCH_SETS[name].size}) | "
                 f"{_cell(info['skipped'])} | {_cell(paper.get('n_unparsed'))} / {_cell(strict.get('n_unparsed'))} |")
  errors = [f"- {name} ({mode}): {result['error']}" for name, modes in results.items()
            for mode, result in modes.items() if "error" in result]
  errors += [f"- {name} ({mode}), judge only (offline scores above): {result['judge_error']}"
             for name, modes in results.items() for mode, result in modes.items() if "judge_error" in result]
  lines += ["", "## Scores", "",
            "x100; Hamming loss is lower-is-better. *paper rules* score as AIMedLab/PULSE evaluate_ecgbench.py does, "
            "*strict* fixes its known defects (pulse_jax/metrics.py). PULSE-7B, GPT-4o and Random are the paper's "
            "figures (arXiv 2410.19008 v1, Tables 3-4; PULSE-7B's report aspects from Fig. 4).", "",
            metrics.comparison_table(scored) if scored else "(no set could be scored)"]
  if errors:
    lines += ["", "Not scored:", *errors]
  if plots:
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({path.name})" for name, path in plots.items()]
  (out_dir / "report.md").write_text("\n".join(lines) + "\n")


# -------------------------------------------------------------------------------------------------------------
# The job.


def make_judge(section: Mapping[str, Any], cache_path: pathlib.Path) -> JudgeClient | None:
  """The LLM judge the config's eval.judge section describes, or None when its base_url is empty."""
  fields = dict(section.items())
  if not fields.get("base_url"):
    return None
  try:
    judge_config = JudgeConfig(**fields)
  except TypeError as e:
    raise ConfigError(f"eval.judge: {e}") from e
  return JudgeClient(judge_config, cache_path=cache_path)


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, sets: Sequence[str] = (),
             checkpoint_path: str | None = None, tokenizer: str | None = None) -> pathlib.Path:
  """Generates the missing predictions of each set, scores them and writes the report; returns its folder (on
  process 0, which alone writes it; see the module docstring for multi-host runs).

  Args:
    config: the experiment config (model, data, mesh and eval sections).
    workdir: the run folder; outputs go to workdir/eval/<weights>/<build>/.
    sets: ECGBench sets to run (default: config eval.sets, or every set the build holds).
    checkpoint_path: the weights (default: the latest checkpoint in workdir/checkpoints).
    tokenizer: overrides data.tokenizer (and a Hugging Face folder's own).
  """
  if "://" in str(workdir):
    raise ConfigError(f"eval --workdir {workdir}: predictions are appended as they are made, which object stores "
                      "cannot do; use a local folder (or a mounted bucket); --checkpoint may be on gs://")
  workdir = pathlib.Path(workdir)
  parallel.initialize_distributed(shutdown_timeout_seconds=REPORT_WAIT_SECONDS)
  is_main = jax.process_index() == 0
  data, section = config.data, config.eval
  available = built_sets(data)
  names = select_sets(list(sets) or list(section.sets), available, data.bench_builder)
  settings = GenerationSettings.from_config(section)
  mesh = parallel.mesh_from_config(config.mesh)
  loaded = load_model(checkpoint_path or workdir / "checkpoints", model_config(config.model), mesh,
                      parallel.logical_rules(config.mesh.rules), tokenizer=tokenizer or "",
                      default_tokenizer=data.tokenizer)
  out_dir = workdir / "eval" / loaded.tag / data.bench_builder.replace("/", "-")
  identity = {"model_id": loaded.model_id, "checkpoint": str(loaded.path),
              "tokenizer": str(pathlib.Path(loaded.tokenizer.path).resolve()),
              "max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
              "top_p": settings.top_p, "seed": settings.seed}

  def prepare_output_folder() -> JudgeClient | None:  # process 0's: it alone reads and writes the folder
    out_dir.mkdir(parents=True, exist_ok=True)
    claim_output_folder(out_dir, identity)
    return make_judge(section.judge, out_dir / "judge_cache.jsonl")
  judge = on_process_zero(prepare_output_folder)
  generator = Generator(loaded, settings, mesh)

  skips = {}
  for name in names:
    skips[name] = SkipCounter()
    items = read_set(data, name, skips[name])
    skips[name].merge(generate_set(name, items, generator, out_dir / f"{name}.jsonl"))
    if skips[name].total and is_main:
      tqdm.tqdm.write(f"{name}: {skips[name].summary()}")
  if not is_main:
    return out_dir  # process 0 scores and reports

  set_info, results, plots = {}, {}, {}
  for name in (name for name in metrics.BENCH_SETS if (out_dir / f"{name}.jsonl").is_file()):
    records = sorted(read_predictions(out_dir / f"{name}.jsonl").values(), key=lambda r: r["index"])
    results[name] = score_records(name, records, judge)
    judge_errors = [result["judge_error"] for result in results[name].values() if "judge_error" in result]
    if judge_errors:
      tqdm.tqdm.write(f"{name}: the judge failed, not asked again in this run: {judge_errors[0]}")
      judge = None
    set_info[name] = {
        "items": len(pipeline.source(bench_data(data), name)) if name in available else None,
        "predictions": len(records), "skipped": skips[name].total if name in skips else None,
        "skip_reasons": skips[name].summary() if name in skips else None}
    plot = write_plots(name, results[name], records, out_dir)
    if plot is not None:
      plots[name] = plot
  decoding = ("greedy" if settings.temperature == 0 else
              f"sampling, temperature {settings.temperature}, top_p {settings.top_p}, seed {settings.seed}")
  summary = {
      "model_id": loaded.model_id, "checkpoint": str(loaded.path),
      "bench_builder": data.bench_builder, "data_dir": data.data_dir,
      "decoding": f"{decoding}, max_new_tokens {settings.max_new_tokens}, batch {settings.batch_size}",
      "judge": f"{judge.config.model} at {judge.config.base_url}" if judge else None,
      "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "sets": set_info}
  write_report(out_dir, summary, results, plots)
  return out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", required=True, metavar="FILE.py[:ARG]", help="experiment config (model, data, "
                      "mesh, eval); further `--config.a.b=value` arguments override its fields")
  parser.add_argument("--workdir", required=True, help="run folder: checkpoints/ is read by default, outputs go to "
                      "eval/<weights>/<build>/; rerun to resume")
  parser.add_argument("--bench", action="append", default=[], metavar="NAME",
                      help=f"ECGBench set, repeatable (default: eval.sets, else all built): "
                           f"{', '.join(metrics.BENCH_SETS)}")
  parser.add_argument("--checkpoint", metavar="PATH", help="Orbax workdir / checkpoints/ / step folder, or a "
                      "Hugging Face LLaVA-NeXT folder (default: WORKDIR/checkpoints, latest step)")
  parser.add_argument("--tokenizer", metavar="PATH", help="SentencePiece model (default: the Hugging Face "
                      "folder's tokenizer.model, else data.tokenizer)")
  accept_config_overrides(parser)


def run(args: argparse.Namespace) -> int:
  config = apply_overrides(load_config(args.config), args.overrides)
  out_dir = evaluate(config, args.workdir, sets=args.bench, checkpoint_path=args.checkpoint,
                     tokenizer=args.tokenizer)
  if jax.process_index() == 0:
    print(f"wrote {out_dir / 'report.md'}")
    print((out_dir / "report.md").read_text())
  return 0
