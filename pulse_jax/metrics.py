"""ECGBench scorers: the PULSE paper's rules (`strict=False`) and a corrected variant (`strict=True`).

Every scorer is a pure function over lists of model outputs and gold answers; `score_set` is the front door that
looks a set up in BENCH_SETS and dispatches. All figures are x100 at full precision; round only for display
(`comparison_table`), as the paper prints them (x100, one decimal).

Paper rules (`strict=False`), as AIMedLab/PULSE `evaluation/evaluate_ecgbench.py` computes them:
- Multi-label sets (ptb-test, cpsc-test, code15-test): a label is named when it is a case-sensitive substring of
  the text, for the output and the gold answer alike. code15-test first cuts the output to the text after the
  last "Answer:"; then "NORM" without "ABNORMAL" predicts ["NORM"] + labels, "ABNORMAL" predicts
  ["ABNORMAL"] + labels, and a gold answer that is exactly "NORM" or "ABNORMAL" is that single label.
  A MultiLabelBinarizer is fit on the gold lists (predicted labels absent from every gold list are dropped);
  F1 = mean of the per-class F1; AUC = mean over classes of roc_auc_score on the hard 0/1 predictions (the
  per-class balanced accuracy), NaN for a class whose gold column is constant, averaged with plain np.mean so
  one such class makes the set's AUC NaN; Hamming loss on the binarised matrices.
- Multiple choice (csn-test-no-cot, g12-test-no-cot, mmmu-ecg): the letter is, in this order, the whole text
  when it is one letter A-H; the first of "A." ... "H." present anywhere, tried in A->H order; the character
  after the last "The correct option is " (None when it is not a letter, without trying further; the paper
  raises IndexError when nothing follows, we return None); after the last "Answer:", the first of A-H, tried
  in A->H order, present anywhere in that tail. No letter -> `rng.choice` over the set's options (A-H, or A-D
  for MMMU) from one `random.Random(42)` consumed in file order. Gold = first character of the gold answer
  (csn, g12) or the whole answer (mmmu). Accuracy.
- ECG-QA: options = prompt text after the last "Options:", with the sentence ECGQA_INSTRUCTION removed, split on
  ",", stripped; predicted = the options that are substrings of the lower-cased output (options are not
  lower-cased, so one with a capital, e.g. "lead V3", never matches); correct iff set(predicted) == set(gold).

Strict rules (`strict=True`) fix the defects of those rules:
- Labels and options are matched as whole tokens: not preceded or followed by a letter, digit or hyphen. This
  stops "NORM" matching inside "ABNORMAL", "AF" inside "AFL"/"LAFB", "ST" inside "STD"/"STE"/"ST-T", the
  option "no" inside "not sure" and "lead I" inside "lead III"; "AF," "(AF)" and "AF;RBBB" still match. The
  other side of it: a code inside a longer code ("MI" in "IMI") no longer counts either.
- Multi-label outputs are cut to the text after the last "Answer:" in every set, not only in code15-test, so
  labels that a chain of thought mentions and then rules out are not predicted. In code15-test NORM and
  ABNORMAL are two more labels of the space (both are predicted when both are named) instead of the
  if/elif rule.
- The macro AUC averages over the classes where it is defined (np.nanmean) and is NaN only when none is;
  `per_class_auc` and `auc_undefined` say which classes were left out.
- Multiple choice: only the set's own letters count (A-D for MMMU); a letter must stand alone, so "B." inside
  "RBBB." or "C" inside "ECG" is no answer. Order: the whole text is one letter (optionally "(C)", "C.",
  "C)"); the last explicit statement ("answer is C", "correct option is (C)"); the first standalone letter
  after the last "Answer:"; the first option-style letter ("C." or "C)") by position in the text. The seeded
  random fallback is kept so that accuracies stay comparable with the paper's; `n_unparsed` counts it.
  Gold = first non-blank character of the gold answer for every set.
- ECG-QA: options and gold answers are case-folded like the output, the instruction sentence is removed
  whatever its case, a trailing full stop is dropped from an option, and empty options are ignored.

The paper seeds `random` once per process (at import) and runs mmmu, then csn, then g12 in one process, so its
csn/g12 fallback letters continue mmmu's sequence. `score_set` seeds a fresh `random.Random(42)` per call
(each set reproducible on its own); pass one shared `rng` to reproduce the paper's cross-file sequence. The
paper also skips an MCQ file whose line count is not the set's size; `score_set` scores any count and says
whether it was `complete`.

Report generation and ECG Arena are scored by an LLM judge (pulse_jax.judge) when one is given. Offline, they
get a deterministic proxy: F1 between the findings that the generated and the gold text state, over
REPORT_FINDINGS (each with synonyms), with simple negation handling (see `report_findings`).
"""

import collections
import dataclasses
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import f1_score, hamming_loss, roc_auc_score
from sklearn.preprocessing import MultiLabelBinarizer

from pulse_jax.ecg.readers import CODE15_LABELS, PTBXL_SUPERCLASSES
from pulse_jax.ecg.snomed import CPSC_LABELS
from pulse_jax.errors import ConfigError, DataError, JudgeError

if TYPE_CHECKING:
  from pulse_jax.judge import JudgeClient

ANSWER_MARKER = "Answer:"
MCQ_LETTERS = "ABCDEFGH"
ECGQA_INSTRUCTION = "Only answer based on the given Options without any explanation."
RANDOM_SEED = 42

# ---------------------------------------------------------------------------------------------------------------
# Token matching shared by the strict rules and the report proxy.

_TOKEN_CHAR = r"A-Za-z0-9\-"


def _token_regex(term: str) -> str:
  """Regex source matching `term` as a whole token: no letter, digit or hyphen right before or after it."""
  return rf"(?<![{_TOKEN_CHAR}]){re.escape(term)}(?![{_TOKEN_CHAR}])"


def _names_token(text: str, term: str) -> bool:
  return re.search(_token_regex(term), text) is not None


def _after_last(text: str, marker: str) -> str:
  return text.split(marker)[-1] if marker in text else text


# ---------------------------------------------------------------------------------------------------------------
# The nine ECGBench sets.


@dataclasses.dataclass(frozen=True)
class BenchSet:
  """One ECGBench test set and how it is scored.

  Attributes:
    name: the HF `PULSE-ECG/ECGBench` config name.
    kind: 'multilabel', 'mcq', 'ecgqa', 'report' or 'arena'.
    labels: the label space (multilabel) or the option letters (mcq); empty otherwise.
    size: number of items in the released set.
    overall_labels: code15-test's whole-ECG verdicts ("NORM", "ABNORMAL"), scored beside `labels`.
    gold_is_first_char: mcq gold is the first character of the gold answer (csn, g12), not the whole answer.
  """
  name: str
  kind: str
  labels: tuple[str, ...]
  size: int
  overall_labels: tuple[str, ...] = ()
  gold_is_first_char: bool = False


BENCH_SETS: dict[str, BenchSet] = {b.name: b for b in (
    BenchSet("ptb-test", "multilabel", PTBXL_SUPERCLASSES, 2082),
    BenchSet("ptb-test-report", "report", (), 500),
    BenchSet("code15-test", "multilabel", CODE15_LABELS, 1400, overall_labels=("NORM", "ABNORMAL")),
    BenchSet("ecgqa-test", "ecgqa", (), 1317),
    BenchSet("cpsc-test", "multilabel", CPSC_LABELS, 2061),
    BenchSet("csn-test-no-cot", "mcq", tuple(MCQ_LETTERS), 1611, gold_is_first_char=True),
    BenchSet("g12-test-no-cot", "mcq", tuple(MCQ_LETTERS), 2026, gold_is_first_char=True),
    BenchSet("mmmu-ecg", "mcq", tuple("ABCD"), 200),
    BenchSet("arena", "arena", (), 50),
)}

# The headline metrics of each kind, in the order the paper's tables give them.
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "multilabel": ("auc", "f1", "hamming_loss"),
    "mcq": ("accuracy",),
    "ecgqa": ("accuracy",),
    "report": ("report_score", "Diagnosis", "Form", "Rhythm", "proxy_f1"),
    "arena": ("arena_score", "Accuracy", "Completeness", "Instruction Adherence", "proxy_f1"),
}

# Paper Tables 3-4 (arXiv 2410.19008 v1), x100; Hamming loss is lower-is-better. PULSE-7B's report breakdown is
# the paper's Fig. 4 (Form is the judge key of the "Waveform" aspect).
PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "PULSE-7B": {
        "ptb-test": {"auc": 82.4, "f1": 74.8, "hamming_loss": 11.0},
        "ptb-test-report": {"report_score": 61.3, "Diagnosis": 47.7, "Form": 50.4, "Rhythm": 85.7},
        "code15-test": {"auc": 90.7, "f1": 85.4, "hamming_loss": 5.0},
        "ecgqa-test": {"accuracy": 73.8},
        "cpsc-test": {"auc": 76.9, "f1": 57.6, "hamming_loss": 8.6},
        "csn-test-no-cot": {"accuracy": 85.2},
        "g12-test-no-cot": {"accuracy": 78.2},
        "mmmu-ecg": {"accuracy": 58.0},
        "arena": {"arena_score": 38.9},
    },
    "GPT-4o": {
        "ptb-test": {"auc": 55.6, "f1": 28.3, "hamming_loss": 26.2},
        "ptb-test-report": {"report_score": 50.2},
        "code15-test": {"auc": 59.9, "f1": 24.9, "hamming_loss": 15.7},
        "ecgqa-test": {"accuracy": 35.2},
        "cpsc-test": {"auc": 50.9, "f1": 10.6, "hamming_loss": 18.2},
        "csn-test-no-cot": {"accuracy": 57.5},
        "g12-test-no-cot": {"accuracy": 49.2},
        "mmmu-ecg": {"accuracy": 43.5},
        "arena": {"arena_score": 33.5},
    },
    "Random": {
        "ptb-test": {"auc": 50.3, "f1": 33.2, "hamming_loss": 50.1},
        "ptb-test-report": {"report_score": 0.0},
        "code15-test": {"auc": 48.8, "f1": 15.0, "hamming_loss": 32.1},
        "ecgqa-test": {"accuracy": 16.2},
        "cpsc-test": {"auc": 51.2, "f1": 15.1, "hamming_loss": 28.8},
        "csn-test-no-cot": {"accuracy": 11.6},
        "g12-test-no-cot": {"accuracy": 12.1},
        "mmmu-ecg": {"accuracy": 24.2},
        "arena": {"arena_score": 0.0},
    },
}

# ---------------------------------------------------------------------------------------------------------------
# Multi-label sets: ptb-test, cpsc-test, code15-test.


def predicted_labels(text: str, bench: BenchSet, *, strict: bool) -> list[str]:
  """The labels of `bench` that a model output names (see the module docstring for both rule sets)."""
  if strict:
    text = _after_last(text, ANSWER_MARKER)
    return [label for label in bench.overall_labels + bench.labels if _names_token(text, label)]
  if not bench.overall_labels:
    return [label for label in bench.labels if label in text]
  normal, abnormal = bench.overall_labels
  text = _after_last(text, ANSWER_MARKER)
  named = [label for label in bench.labels if label in text]
  if normal in text and abnormal not in text:
    return [normal] + named
  if abnormal in text:
    return [abnormal] + named
  return named


def gold_labels(answer: str, bench: BenchSet, *, strict: bool) -> list[str]:
  """The labels of `bench` that a gold answer names."""
  if strict:
    return [label for label in bench.overall_labels + bench.labels if _names_token(answer, label)]
  if answer in bench.overall_labels:
    return [answer]
  return [label for label in bench.labels if label in answer]


def _hard_auc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """roc_auc_score of 0/1 predictions for one class; NaN when the gold column is constant (AUC undefined)."""
  if y_true.min() == y_true.max():
    return float("nan")
  return float(roc_auc_score(y_true, y_pred))


def multilabel_scores(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]], *,
                      strict: bool) -> dict[str, Any]:
  """Macro AUC, macro F1 and Hamming loss (x100) of label lists, over the classes present in the gold lists.

  Args:
    predicted: per sample, the labels the output names.
    gold: per sample, the gold labels.
    strict: average the AUC over the classes where it is defined (np.nanmean) instead of np.mean.

  Returns:
    {"auc", "f1", "hamming_loss"} x100 (AUC may be NaN), "classes" (sorted, as the binarizer orders them),
    "per_class_f1" and "per_class_auc" ({class: x100}), "auc_undefined" (classes whose gold column is constant).
  """
  if len(predicted) != len(gold):
    raise DataError(f"{len(predicted)} predictions for {len(gold)} gold answers")
  binarizer = MultiLabelBinarizer().fit(gold)
  classes = [str(c) for c in binarizer.classes_]
  if not classes:
    raise DataError("no gold answer names a label of the set's label space")
  known = set(classes)
  y_true = binarizer.transform(gold)
  y_pred = binarizer.transform([[label for label in p if label in known] for p in predicted])
  per_class_f1 = f1_score(y_true, y_pred, average=None, zero_division=0.0)
  per_class_auc = np.array([_hard_auc(y_true[:, c], y_pred[:, c]) for c in range(len(classes))])
  undefined = [c for c, auc in zip(classes, per_class_auc) if np.isnan(auc)]
  if strict and len(undefined) < len(classes):
    auc = float(np.nanmean(per_class_auc))
  else:
    auc = float(np.mean(per_class_auc))
  return {
      "auc": 100 * auc,
      "f1": 100 * float(np.mean(per_class_f1)),
      "hamming_loss": 100 * float(hamming_loss(y_true, y_pred)),
      "classes": classes,
      "per_class_f1": {c: 100 * float(v) for c, v in zip(classes, per_class_f1)},
      "per_class_auc": {c: 100 * float(v) for c, v in zip(classes, per_class_auc)},
      "auc_undefined": undefined,
  }


# ---------------------------------------------------------------------------------------------------------------
# Multiple choice: csn-test-no-cot, g12-test-no-cot, mmmu-ecg.


def _paper_choice(text: str) -> str | None:
  if len(text) == 1 and text in MCQ_LETTERS:
    return text
  for letter in MCQ_LETTERS:
    if letter + "." in text:
      return letter
  marker = "The correct option is "
  if marker in text:
    tail = text.split(marker)[-1]
    return tail[0] if tail and tail[0] in MCQ_LETTERS else None
  if ANSWER_MARKER in text:
    tail = text.split(ANSWER_MARKER)[-1].strip()
    return next((letter for letter in MCQ_LETTERS if letter in tail), None)
  return None


def _strict_choice(text: str, letters: str) -> str | None:
  letter = f"[{letters}]"
  alone = rf"(?<![A-Za-z0-9])\(?({letter})(?![A-Za-z0-9])"
  text = text.strip()
  whole = re.fullmatch(rf"\(?({letter})[.)]?\)?", text)
  if whole:
    return whole.group(1)
  statements = re.findall(rf"(?i:answer|option|choice)\s+is:?\s*{alone}", text)
  if statements:
    return statements[-1]
  if ANSWER_MARKER in text:
    first = re.search(alone, text.split(ANSWER_MARKER)[-1])
    if first:
      return first.group(1)
  option = re.search(rf"(?<![A-Za-z0-9])\(?({letter})[.)](?![A-Za-z0-9])", text)
  return option.group(1) if option else None


def extract_choice(text: str, letters: str = MCQ_LETTERS, *, strict: bool) -> str | None:
  """The option letter an output chooses, or None (the caller then draws a random letter).

  Args:
    text: the model output.
    letters: the set's option letters ("ABCDEFGH", or "ABCD" for MMMU). Paper rules ignore it and look for A-H.
    strict: the corrected rules of the module docstring instead of the paper's.
  """
  return _strict_choice(text, letters) if strict else _paper_choice(text)


def mcq_scores(predictions: Sequence[str], golds: Sequence[str], *, letters: str, gold_is_first_char: bool,
               strict: bool, rng: random.Random | None = None) -> dict[str, Any]:
  """Accuracy (x100) of multiple-choice outputs; unparsed outputs get a random letter, as in the paper.

  Args:
    predictions: model outputs, in file order.
    golds: gold answers.
    letters: the set's option letters; the random fallback draws from them.
    gold_is_first_char: paper rules compare with the gold's first character (csn, g12) instead of the whole gold.
    strict: corrected extraction (module docstring).
    rng: the fallback generator; a fresh random.Random(42) when None. Draws are consumed in order.

  Returns:
    {"accuracy", "n_unparsed", "choices"} where choices are the letters scored, fallbacks included.
  """
  if len(predictions) != len(golds):
    raise DataError(f"{len(predictions)} predictions for {len(golds)} gold answers")
  rng = random.Random(RANDOM_SEED) if rng is None else rng
  choices, unparsed = [], 0
  for text in predictions:
    choice = extract_choice(text, letters, strict=strict)
    if choice is None:
      unparsed += 1
      choice = rng.choice(list(letters))
    choices.append(choice)
  if strict:
    targets = [gold.strip()[:1] for gold in golds]
  else:
    targets = [gold[0] if gold_is_first_char else gold for gold in golds]
  correct = sum(choice == target for choice, target in zip(choices, targets))
  return {"accuracy": 100 * correct / len(golds), "n_unparsed": unparsed, "choices": choices}


# ---------------------------------------------------------------------------------------------------------------
# ECG-QA: exact set match against options listed in the prompt.


def ecgqa_options(prompt: str, *, strict: bool) -> list[str]:
  """The answer options a prompt lists after its last "Options:" (case-folded under strict rules)."""
  listed = prompt.split("Options:")[-1]
  if not strict:
    return [option.strip() for option in listed.replace(ECGQA_INSTRUCTION, "").split(",")]
  listed = re.sub(re.escape(ECGQA_INSTRUCTION), "", listed, flags=re.IGNORECASE)
  options = (option.strip().rstrip(".").strip().casefold() for option in listed.split(","))
  return [option for option in options if option]


def ecgqa_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]], prompts: Sequence[str], *,
                 strict: bool) -> dict[str, Any]:
  """Exact-set-match accuracy (x100) of ECG-QA outputs.

  Args:
    predictions: model outputs.
    golds: per sample, the list of gold options.
    prompts: the questions as asked, which list the options after "Options:".
    strict: corrected matching (module docstring).

  Returns:
    {"accuracy", "correct": per-sample bools}.
  """
  if not len(predictions) == len(golds) == len(prompts):
    raise DataError(f"{len(predictions)} predictions, {len(golds)} gold answers and {len(prompts)} prompts")
  correct = []
  for text, gold, prompt in zip(predictions, golds, prompts):
    options = ecgqa_options(prompt, strict=strict)
    if strict:
      output = text.casefold()
      chosen = {option for option in options if _names_token(output, option)}
      correct.append(chosen == {g.strip().casefold() for g in gold})
    else:
      chosen = {option for option in options if option in text.lower()}
      correct.append(chosen == set(gold))
  return {"accuracy": 100 * sum(correct) / len(correct), "correct": correct}


# ---------------------------------------------------------------------------------------------------------------
# Offline report proxy: findings F1 with negation.


@dataclasses.dataclass(frozen=True)
class Finding:
  """One ECG finding and the ways reports write it. Synonyms without lower-case letters (abbreviations such as
  "AF", "LVH") match case-sensitively, the others case-insensitively; spaces and hyphens are interchangeable and
  a plural "s"/"es" is accepted."""
  name: str
  synonyms: tuple[str, ...]


REPORT_FINDINGS: tuple[Finding, ...] = (
    # Rhythm.
    Finding("sinus rhythm", ("sinus rhythm", "normal sinus rhythm", "NSR")),
    Finding("sinus bradycardia", ("sinus bradycardia", "SB")),
    Finding("sinus tachycardia", ("sinus tachycardia",)),
    Finding("sinus arrhythmia", ("sinus arrhythmia",)),
    Finding("atrial fibrillation", ("atrial fibrillation", "AF", "afib", "a-fib")),
    Finding("atrial flutter", ("atrial flutter", "AFL")),
    Finding("supraventricular tachycardia", ("supraventricular tachycardia", "SVT")),
    Finding("premature atrial contraction", (
        "premature atrial contraction", "premature atrial complex", "atrial premature beat",
        "atrial premature complex", "atrial extrasystole", "supraventricular extrasystole", "PAC", "APB")),
    Finding("premature ventricular contraction", (
        "premature ventricular contraction", "premature ventricular complex", "ventricular premature beat",
        "ventricular premature complex", "ventricular extrasystole", "PVC", "VPB", "VPC")),
    Finding("paced rhythm", ("paced rhythm", "pacemaker rhythm", "pacemaker", "ventricular pacing")),
    # Conduction.
    Finding("first degree AV block", (
        "first degree AV block", "1st degree AV block", "first degree atrioventricular block",
        "1st degree atrioventricular block", "first degree A-V block", "1dAVb", "I-AVB", "1AVB")),
    Finding("second degree AV block", (
        "second degree AV block", "2nd degree AV block", "second degree atrioventricular block", "Mobitz",
        "Wenckebach")),
    Finding("third degree AV block", (
        "third degree AV block", "3rd degree AV block", "third degree atrioventricular block",
        "complete heart block", "complete AV block", "CHB")),
    Finding("right bundle branch block", (
        "right bundle branch block", "complete right bundle branch block", "RBBB", "CRBBB")),
    Finding("incomplete right bundle branch block", (
        "incomplete right bundle branch block", "incomplete RBBB", "IRBBB")),
    Finding("left bundle branch block", (
        "left bundle branch block", "complete left bundle branch block", "LBBB", "CLBBB")),
    Finding("incomplete left bundle branch block", (
        "incomplete left bundle branch block", "incomplete LBBB", "ILBBB")),
    Finding("left anterior fascicular block", (
        "left anterior fascicular block", "left anterior hemiblock", "LAFB", "LAHB")),
    Finding("left posterior fascicular block", (
        "left posterior fascicular block", "left posterior hemiblock", "LPFB", "LPHB")),
    Finding("intraventricular conduction delay", (
        "intraventricular conduction delay", "intraventricular conduction disturbance",
        "intraventricular conduction defect", "IVCD")),
    Finding("pre-excitation", ("Wolff-Parkinson-White", "pre-excitation", "preexcitation", "WPW")),
    Finding("prolonged QT", ("prolonged QT", "QT prolongation", "long QT")),
    # Morphology and ischaemia.
    Finding("ST elevation", ("ST elevation", "ST segment elevation", "elevated ST", "STE")),
    Finding("ST depression", ("ST depression", "ST segment depression", "depressed ST", "STD")),
    Finding("ST-T change", (
        "ST-T change", "ST-T abnormality", "ST-T abnormalities", "ST-T wave change", "ST/T change",
        "repolarization abnormality", "repolarisation abnormality", "repolarization abnormalities",
        "repolarisation abnormalities", "repolarization disturbance", "repolarisation disturbance", "STTC")),
    Finding("T wave inversion", ("T wave inversion", "inverted T wave", "negative T wave", "TWI")),
    Finding("ischaemia", ("ischemia", "ischaemia", "ischemic", "ischaemic")),
    Finding("myocardial infarction", (
        "myocardial infarction", "infarction", "infarct", "MI", "AMI", "IMI", "ASMI", "ALMI", "ILMI", "STEMI",
        "NSTEMI")),
    Finding("left ventricular hypertrophy", (
        "left ventricular hypertrophy", "left ventricular enlargement", "LVH")),
    Finding("right ventricular hypertrophy", ("right ventricular hypertrophy", "RVH")),
    Finding("left atrial enlargement", (
        "left atrial enlargement", "left atrial abnormality", "left atrial overload", "P mitrale", "LAE", "LAO")),
    Finding("right atrial enlargement", (
        "right atrial enlargement", "right atrial abnormality", "right atrial overload", "P pulmonale", "RAE",
        "RAO")),
    Finding("low QRS voltage", ("low QRS voltage", "low voltage", "LVOLT")),
    Finding("left axis deviation", ("left axis deviation", "leftward axis")),  # not "LAD": also the artery
    Finding("right axis deviation", ("right axis deviation", "rightward axis")),
    Finding("poor R wave progression", ("poor R wave progression", "PRWP")),
    Finding("normal ECG", ("normal ECG", "normal electrocardiogram", "NORM")),
)


def _synonym_regex(synonym: str) -> re.Pattern[str]:
  words = re.split(r"[\s-]+", synonym)
  body = r"[\s-]+".join(re.escape(word) for word in words)
  flags = 0 if synonym == synonym.upper() else re.IGNORECASE
  return re.compile(rf"(?<![{_TOKEN_CHAR}]){body}(?:e?s)?(?![{_TOKEN_CHAR}])", flags)


_FINDING_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (finding.name, _synonym_regex(synonym)) for finding in REPORT_FINDINGS for synonym in finding.synonyms)

# A clause ends at punctuation or a contrasting conjunction; negation never crosses it.
_CLAUSE_BREAK = re.compile(r"[.;:,!?\n]|\b(?:but|however|although|though|whereas|except)\b", re.IGNORECASE)
# Cues before a finding ("no ST elevation") and after it ("ST elevation is absent").
_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|absence of|absent|negative for|free of|rules? out|ruled out|neither|nor)\b",
    re.IGNORECASE)
_NEGATION_AFTER = re.compile(
    r"\b(?:absent|not (?:seen|present|observed|evident|identified|noted|detected)|(?:is|are|was|were) not|"
    r"ruled out|excluded)\b", re.IGNORECASE)
# Phrases that contain a cue but keep the finding possible ("cannot rule out MI"): blanked before cue search.
_NOT_NEGATION = re.compile(
    r"\b(?:cannot|can ?not|can't)\s+(?:be\s+)?(?:rule[sd]?\s+out|exclude[sd]?)\b|\bnot\s+(?:be\s+)?"
    r"(?:ruled\s+out|excluded)\b", re.IGNORECASE)


def report_findings(text: str) -> frozenset[str]:
  """The REPORT_FINDINGS names that a report states as present.

  Mentions are found longest first, so "incomplete right bundle branch block" is not also read as "right bundle
  branch block". A mention is negated when its clause (text between punctuation or "but"/"however"/...) has a
  negation cue before it ("no", "not", "without", "absence of", "negative for", ...) or after it ("is absent",
  "not seen", "ruled out", ...); "cannot rule out" and "cannot be excluded" are not negations. A finding counts
  when at least one of its mentions is not negated. Uncertainty ("possible", "probable") counts as present.
  """
  blanked = _NOT_NEGATION.sub(lambda m: " " * len(m.group()), text)
  mentions = sorted(((m.start(), m.end(), name) for name, pattern in _FINDING_PATTERNS
                     for m in pattern.finditer(text)), key=lambda m: (m[0] - m[1], m[0]))
  taken = np.zeros(len(text) + 1, dtype=bool)
  breaks = [0] + [b for m in _CLAUSE_BREAK.finditer(text) for b in (m.start(), m.end())] + [len(text)]
  present = set()
  for start, end, name in mentions:
    if taken[start:end].any():
      continue
    taken[start:end] = True
    clause_start = max(b for b in breaks if b <= start)
    clause_end = min(b for b in breaks if b >= end)
    if not (_NEGATION_BEFORE.search(blanked[clause_start:start]) or _NEGATION_AFTER.search(blanked[end:clause_end])):
      present.add(name)
  return frozenset(present)


def report_proxy_scores(generated: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
  """Findings F1 (x100) between generated and gold reports: a judge-free, deterministic report score.

  Per sample, F1 = 2|P & G| / (|P| + |G|) over the sets of findings stated (`report_findings`); 100 when
  neither report states any finding. Not a paper metric: no paper figure to compare with, the same in both modes.

  Returns:
    {"proxy_f1": mean per-sample F1, "proxy_micro_f1": F1 of the pooled counts, "per_sample_f1": list}.
  """
  if len(generated) != len(references):
    raise DataError(f"{len(generated)} generated reports for {len(references)} gold reports")
  per_sample, overlap, total = [], 0, 0
  for text, reference in zip(generated, references):
    predicted, gold = report_findings(text), report_findings(reference)
    both, size = len(predicted & gold), len(predicted) + len(gold)
    per_sample.append(100 * 2 * both / size if size else 100.0)
    overlap, total = overlap + both, total + size
  return {
      "proxy_f1": float(np.mean(per_sample)),
      "proxy_micro_f1": 100 * 2 * overlap / total if total else 100.0,
      "per_sample_f1": per_sample,
  }


# ---------------------------------------------------------------------------------------------------------------
# Front door and display.


def score_set(name: str, predictions: Sequence[Any], golds: Sequence[Any], prompts: Sequence[str] | None = None,
              strict: bool = False, *, judge: "JudgeClient | None" = None,
              rng: random.Random | None = None) -> dict[str, Any]:
  """Scores one ECGBench set.

  Args:
    name: a BENCH_SETS key.
    predictions: model outputs (str) in file order; for 'arena', per dialogue the list of the model's answers.
    golds: gold answers (str); for 'ecgqa-test', lists of options; for 'arena', per dialogue the list of
      {"question", "answer"} turns.
    prompts: the questions as asked; required for 'ecgqa-test' (they list the options).
    strict: corrected rules instead of the paper's (module docstring); the report proxy and the judge have one
      rule set and ignore it.
    judge: scores 'ptb-test-report' and 'arena' with the LLM judge as well as with the offline proxy.
    rng: the MCQ random-fallback generator (default: a fresh random.Random(42)).

  Returns:
    {"set", "kind", "mode" ('paper' or 'strict'), "n", "expected_n", "complete"} plus the kind's metrics (x100,
    full precision; see HEADLINE_METRICS and the per-kind scorers).
  """
  if name not in BENCH_SETS:
    raise ConfigError(f"unknown ECGBench set {name!r}; expected one of {', '.join(BENCH_SETS)}")
  bench = BENCH_SETS[name]
  if len(predictions) != len(golds):
    raise DataError(f"{name}: {len(predictions)} predictions for {len(golds)} gold answers")
  if not golds:
    raise DataError(f"{name}: no samples to score")
  result: dict[str, Any] = {"set": name, "kind": bench.kind, "mode": "strict" if strict else "paper",
                            "n": len(golds), "expected_n": bench.size, "complete": len(golds) == bench.size}
  if bench.kind == "multilabel":
    result |= multilabel_scores([predicted_labels(p, bench, strict=strict) for p in predictions],
                                [gold_labels(g, bench, strict=strict) for g in golds], strict=strict)
  elif bench.kind == "mcq":
    result |= mcq_scores(predictions, golds, letters="".join(bench.labels),
                         gold_is_first_char=bench.gold_is_first_char, strict=strict, rng=rng)
  elif bench.kind == "ecgqa":
    if prompts is None:
      raise DataError(f"{name}: scoring needs the prompts, which list the answer options")
    result |= ecgqa_scores(predictions, golds, prompts, strict=strict)
  elif bench.kind == "report":
    result |= report_proxy_scores(predictions, golds)
    if judge is not None:
      result |= _judged(lambda: judge.score_reports(predictions, golds))
  else:
    result |= report_proxy_scores(["\n".join(answers) for answers in predictions],
                                  ["\n".join(turn["answer"] for turn in turns) for turns in golds])
    if judge is not None:
      result |= _judged(lambda: judge.score_arena(golds, predictions))
  return result


def _judged(scoring: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  """The judge's scores, or {"judge_error": why} when the judge cannot be used: the offline scores stand."""
  try:
    return scoring()
  except JudgeError as e:
    return {"judge_error": str(e)}


def majority_baseline(name: str, golds: Sequence[Any], prompts: Sequence[str] | None = None) -> dict[str, Any] | None:
  """The strict scores of answering every item with the set's most frequent gold answer (the first one seen on
  a tie), or None for report and Arena sets, which have no single answer to repeat.

  The bar that shows a model reads the image: a model that learned only which answer is common scores this.
  The result is a `score_set` result with mode "majority" and the repeated "answer".
  """
  if name not in BENCH_SETS:
    raise ConfigError(f"unknown ECGBench set {name!r}; expected one of {', '.join(BENCH_SETS)}")
  if BENCH_SETS[name].kind in ("report", "arena") or not golds:
    return None
  keys = [tuple(g) if isinstance(g, (list, tuple)) else g for g in golds]
  most_common = collections.Counter(keys).most_common(1)[0][0]  # ties: the first seen (insertion order)
  answer = golds[keys.index(most_common)]
  text = "; ".join(answer) if isinstance(answer, (list, tuple)) else answer
  return score_set(name, [text] * len(golds), golds, prompts, strict=True) | {"mode": "majority", "answer": text}


def _cell(value: float | None) -> str:
  return "–" if value is None else f"{value:.1f}"


def _metric(result: Mapping[str, Any], metric: str) -> float | None:
  """A headline metric of a `score_set` result; judge aspects sit under "aspects"."""
  return result.get(metric, result.get("aspects", {}).get(metric))


def comparison_table(results: Sequence[Mapping[str, Any]]) -> str:
  """A markdown table of `score_set` results (paper and strict modes side by side) beside PAPER_RESULTS.

  One row per set and headline metric, in BENCH_SETS order; values rounded to one decimal for display only.
  When `majority_baseline` results are among `results`, a "majority answer (strict)" column follows ours.
  """
  ours: dict[tuple[str, str], Mapping[str, Any]] = {(r["set"], r["mode"]): r for r in results}
  modes = ("paper", "strict", "majority") if any(r["mode"] == "majority" for r in results) else ("paper", "strict")
  models = list(PAPER_RESULTS)
  headers = {"paper": "ours (paper rules)", "strict": "ours (strict)", "majority": "majority answer (strict)"}
  lines = ["| set | metric | " + " | ".join(headers[m] for m in modes) + " | " + " | ".join(models) + " |",
           "|---|---|" + "---:|" * (len(modes) + len(models))]
  for name, bench in BENCH_SETS.items():
    if (name, "paper") not in ours and (name, "strict") not in ours:
      continue
    for metric in HEADLINE_METRICS[bench.kind]:
      mine = [_metric(ours.get((name, mode), {}), metric) for mode in modes]
      if all(v is None for v in mine[:2]):
        continue
      theirs = [PAPER_RESULTS[model].get(name, {}).get(metric) for model in models]
      lines.append(f"| {name} | {metric} | " + " | ".join(_cell(v) for v in mine + theirs) + " |")
  return "\n".join(lines)
