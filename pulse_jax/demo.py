"""`pulse-jax demo`: the whole PULSE path on CPU, from nothing: data, tokenizer, training, ECGBench, export.

  1. build ECGInstruct and ECGBench from a synthetic corpus the builders write themselves
     (`synthetic_<N>_detection`: N records per collection, 3N of CODE-15%, in the PTB-XL, MIMIC-IV-ECG, CODE-15%
     and Challenge layouts, read back by the real readers, measured, rendered standard + augmented), as
     array_record (pulse_jax.data.build);
  2. train a SentencePiece tokenizer on the instructions;
  3. pretrain the vision tower on synthetic sheets (pulse_jax.pretrain_tower): the tiny model's stand-in for
     the pretrained CLIP that PULSE starts from, frozen from here on as PULSE keeps it;
  4. align: train the projector and the language model on ECGInstruct's label-list questions only
     (the mixture key code15:labelled), so that the answer the abnormality-detection set asks for is learnt from the
     image before the mixture's commoner answers dominate (pulse_jax.train);
  5. instruction-tune on the ECGInstruct mixture from there (configs/tiny.py with DEMO_OVERRIDES);
  6. evaluate it on the synthetic ECGBench with the paper's scorers and the majority-answer baseline
     (pulse_jax.evaluate);
  7. export it to a transformers LLaVA-NeXT folder and read that back, bit-identical (pulse_jax.convert);
  8. print the summary, including whether the model beats the majority answer on abnormality detection
     (code15-test: macro F1 and macro AUC, strict rules), which is the exit status: a pipeline whose model cannot
     learn a visible signal is broken.

Everything lands in --workdir (default: a temporary folder): tfds/, tokenizer/, tower/, align/ and run/
(checkpoints, TensorBoard; run/eval/.../report.md), export/hf. Re-running in the same workdir reuses the
datasets, the tokenizer and the tower and resumes or skips training and evaluation, as the underlying commands
do.
"""

import argparse
import copy
import dataclasses
import json
import pathlib
import shutil
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from pulse_jax import pretrain_tower
from pulse_jax.config import apply_overrides, load_config

TINY_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "tiny.py"
INSTRUCT_SPLITS = ("ptbxl", "mimic", "code15")
DETECTION_SET = "code15-test"  # in-domain abnormality detection: SB, ST and AF show in the beat pattern
# The model of configs/tiny.py, changed where the demo needs it:
# - spatial_unpad merge, so that the export is a folder transformers' LLaVA-NeXT loads (a flat model, as PULSE
#   trains, exports with `convert to-llava`);
# - a vision tower 128 wide over 28 px patches: 16 features per 112 px view, ~90 image tokens per sheet, so a
#   step takes ~0.4 s; pretrained (stage 3) and then frozen, as PULSE freezes CLIP (configs/tiny.py's train.frozen);
# - ECGInstruct's collections with CODE-15%'s label lists counted three times, so that instruction tuning keeps what
#   the alignment stage learnt (the abnormality-detection set is code15-test).
DEMO_OVERRIDES = (
    "model.merge_mode='spatial_unpad'", "model.vision.patch_size=28", "model.vision.hidden_size=128",
    "model.vision.intermediate_size=512", "train.learning_rate=1e-3", "data.source='tfds'", "data.seq_len=512",
    "data.buckets=(256, 320, 384)", "data.mixture={'ptbxl': 1.0, 'mimic': 1.0, 'code15': 1.0, 'code15:labelled': 2.0}",
    "train.eval_every=0", "train.log_every=25", "checkpoint.every=500", "checkpoint.keep=1")
# The alignment stage's data: CODE-15%'s label-list questions (the format of code15-test).
ALIGN_OVERRIDES = ("data.mixture={'code15:labelled': 1.0}",)
# "Clearly better": these margins over the majority answer on DETECTION_SET (points x100, strict rules).
F1_MARGIN, AUC_MARGIN = 10.0, 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", default=None, help="where everything goes (default: a temporary folder); "
                      "rerunning in the same one reuses what is done")
  parser.add_argument("--records", type=int, default=300, help="synthetic records per collection (3x for CODE-15%%)")
  tower = pretrain_tower.Recipe()
  parser.add_argument("--tower-pages", type=int, default=tower.pages, help="synthetic sheets the vision tower "
                      "learns from")
  parser.add_argument("--tower-steps", type=int, default=tower.steps, help=f"vision-tower pretraining steps of "
                      f"{tower.batch} sheets")
  parser.add_argument("--align-steps", type=int, default=600, help="alignment steps of 8 label-list examples")
  parser.add_argument("--steps", type=int, default=400, help="instruction-tuning steps of 8 examples")
  parser.add_argument("--seed", type=int, default=0)


class _Stage:
  """Prints a stage banner and its wall time."""

  def __init__(self, title: str):
    self.title = title

  def __enter__(self):
    print(f"\n== {self.title}", flush=True)
    self.start = time.perf_counter()
    return self

  def __exit__(self, *exc):
    if exc[0] is None:
      print(f"   ({time.perf_counter() - self.start:.0f} s)", flush=True)


def run(args: argparse.Namespace) -> int:
  with tempfile.TemporaryDirectory() as scratch:
    tower = pretrain_tower.Recipe(pages=args.tower_pages, steps=args.tower_steps)
    return demo(pathlib.Path(args.workdir or scratch), records=args.records, tower=tower,
                align_steps=args.align_steps, steps=args.steps, seed=args.seed)


def demo(workdir: pathlib.Path, *, records: int, tower: pretrain_tower.Recipe = pretrain_tower.Recipe(),
         align_steps: int, steps: int, seed: int = 0, sets: Sequence[str] = ()) -> int:
  """Runs the stages (module docstring) in `workdir`; returns 0 when the model beats the majority answer.

  `sets` limits the evaluation (default: every set of the synthetic ECGBench).
  """
  started = time.perf_counter()
  workdir = workdir.absolute()
  instruct, bench = f"ecg_instruct/synthetic_{records}_detection", f"ecg_bench/synthetic_{records}_detection"
  data_dir = workdir / "tfds"

  with _Stage(f"1. build {instruct} and {bench} (array_record) in {data_dir}"):
    import tensorflow_datasets as tfds
    from pulse_jax.data.build import build
    tfds.disable_progress_bar()
    for dataset in (instruct, bench):
      builder = build(dataset, data_dir=str(data_dir), manual_dir=None)
      sizes = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
      print(f"   {dataset}: {sizes}")

  with _Stage("2. train a SentencePiece tokenizer on the instructions"):
    from pulse_jax.data.examples import conversations_of
    from pulse_jax.data.pipeline import source
    from pulse_jax.data.tokenizer import Tokenizer, train_tokenizer
    config = load_config(str(TINY_CONFIG))
    tokenizer_path = workdir / "tokenizer" / "ecg.model"
    if not tokenizer_path.is_file():
      splits = [source(dict(builder=instruct, data_dir=str(data_dir)), split) for split in INSTRUCT_SPLITS]
      texts = [turn["value"].replace("<image>", "") for examples in splits for index in range(len(examples))
               for turn in conversations_of(examples[index])]
      train_tokenizer(texts, tokenizer_path.with_suffix(""), vocab_size=config.model.image_token_id)
    tokenizer = Tokenizer(str(tokenizer_path))
    print(f"   {tokenizer_path}: {tokenizer.image_token_id} pieces + <image>")

  config = apply_overrides(config, [
      *DEMO_OVERRIDES, f"data.builder='{instruct}'", f"data.bench_builder='{bench}'", f"data.data_dir='{data_dir}'",
      f"data.tokenizer='{tokenizer_path}'", f"model.image_token_id={tokenizer.image_token_id}",
      f"model.text.vocab_size={tokenizer.image_token_id + 1}", f"train.steps={steps}", f"train.seed={seed}",
      f"data.seed={seed}"])
  tower_dir, align_dir, run_dir = workdir / "tower", workdir / "align", workdir / "run"

  with _Stage(f"3. pretrain the vision tower on {tower.pages} synthetic sheets for {tower.steps} steps of "
              f"{tower.batch}"):
    from pulse_jax.config import model_config
    from pulse_jax.convert import orbax_params
    if not (tower_dir / str(orbax_params.STEP)).is_dir():  # Orbax names the step folder once it is complete
      shutil.rmtree(tower_dir, ignore_errors=True)
      params, _ = pretrain_tower.pretrain(config, tower, eval_every=tower.steps, seed=seed, progress=True)
      orbax_params.save(tower_dir, params, model_config(config.model))
    print(f"   {tower_dir}")

  from pulse_jax import train
  print("\n   model and training overrides of configs/tiny.py: " + " ".join(DEMO_OVERRIDES))
  with _Stage(f"4. align: {align_steps} steps of {config.train.global_batch} CODE-15% label-list questions of "
              f"{instruct}, from the tower (frozen)"):
    print("   overrides: " + " ".join(ALIGN_OVERRIDES))
    align = apply_overrides(copy.deepcopy(config), [*ALIGN_OVERRIDES, f"train.steps={align_steps}",
                                                    f"checkpoint.init_from='{tower_dir}'"])
    status = train.train(align, str(align_dir))
    if status:
      return status

  config = apply_overrides(config, [f"checkpoint.init_from='{align_dir}'"])
  with _Stage(f"5. instruction-tune for {steps} steps of {config.train.global_batch} on {instruct}, from the "
              "aligned model"):
    status = train.train(config, str(run_dir))
    if status:
      return status

  with _Stage(f"6. evaluate on {bench} (greedy, paper and strict rules, majority-answer baseline)"):
    from pulse_jax import evaluate
    report_dir = evaluate.evaluate(config, run_dir, sets=sets)
    print(f"   {report_dir / 'report.md'}")

  with _Stage("7. export to a transformers LLaVA-NeXT folder and read it back"):
    from pulse_jax.convert.cli import export_hf
    from pulse_jax.convert.hf import TensorSource, read_config, read_params
    from pulse_jax.convert.orbax_params import restore
    export_dir = workdir / "export" / "hf"
    model = model_config(config.model)
    trained, _, _ = restore(run_dir, model)

    def exported() -> dict:
      tensors = TensorSource()
      tensors.add_folder(export_dir)
      return read_params(read_config(export_dir, merge_mode=model.merge_mode), tensors)

    identical = (export_dir / "config.json").is_file() and _same_arrays(trained, exported())
    if not identical:
      shutil.rmtree(export_dir, ignore_errors=True)  # none yet, or an earlier run's (fewer steps)
      export_hf(run_dir, export_dir, config=model, default_tokenizer=str(tokenizer_path))
      identical = _same_arrays(trained, exported())
    files = sorted(p.name for p in export_dir.iterdir())
    print(f"   {export_dir}: {', '.join(files)}; read back {'bit-identical' if identical else 'DIFFERENT'}")
    if not identical:
      return 1

  return _summary(report_dir, time.perf_counter() - started)


def _same_arrays(a: dict, b: dict) -> bool:
  import jax
  left, right = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
  return ([p for p, _ in left] == [p for p, _ in right]
          and all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(left, right)))


@dataclasses.dataclass(frozen=True)
class Verdict:
  """The model against the majority answer on DETECTION_SET (strict rules, x100)."""
  f1: float
  auc: float
  majority_f1: float
  majority_auc: float

  @property
  def beats_majority(self) -> bool:
    return self.f1 >= self.majority_f1 + F1_MARGIN and self.auc >= self.majority_auc + AUC_MARGIN


def verdict(report: dict) -> Verdict:
  """Reads the DETECTION_SET scores out of an evaluation's report.json."""
  scores = report["sets"][DETECTION_SET]
  return Verdict(f1=scores["strict"]["f1"], auc=scores["strict"]["auc"], majority_f1=scores["majority"]["f1"],
                 majority_auc=scores["majority"]["auc"])


def _summary(report_dir: pathlib.Path, seconds: float) -> int:
  from pulse_jax import metrics
  report = json.loads((report_dir / "report.json").read_text())
  print(f"\n== summary ({seconds / 60:.1f} min)\n")
  print(metrics.comparison_table([r for modes in report["sets"].values() for r in modes.values()
                                  if "error" not in r]))
  scores = report["sets"].get(DETECTION_SET, {})
  strict = scores.get("strict", {"error": "no scores"})
  if "majority" not in scores or "error" in strict:
    print(f"\nFAILED: {DETECTION_SET} was not evaluated or could not be scored: "
          f"{strict.get('error', 'no majority answer')}")
    return 1
  result = verdict(report)
  answer = scores["majority"]["answer"]
  print(f"\nabnormality detection ({DETECTION_SET}, strict rules): macro F1 {result.f1:.1f} vs "
        f"{result.majority_f1:.1f} answering {answer!r} every time ({result.f1 - result.majority_f1:+.1f}); "
        f"macro AUC {result.auc:.1f} vs {result.majority_auc:.1f} ({result.auc - result.majority_auc:+.1f})")
  if result.beats_majority:
    print(f"the tiny model reads the images: it beats the majority answer by more than {F1_MARGIN:g} F1 and "
          f"{AUC_MARGIN:g} AUC points")
    return 0
  print(f"FAILED: the model does not beat the majority answer by {F1_MARGIN:g} F1 and {AUC_MARGIN:g} AUC points")
  return 1
