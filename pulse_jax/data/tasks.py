"""ECGInstruct-style instruction tasks and ECGBench-style benchmark items, generated from one ECG record.

PULSE had Llama-3-70B write its instructions from clinical reports. We cannot run an LLM, so tasks are written
from structure, with answers that are correct by construction:
- what the record states: its labels in its source's taxonomy (PTB-XL SCP codes and superclasses, CODE-15% codes,
  Challenge SNOMED classes, the synthetic generator's rhythm and finding names) and the statements of its report.
  Both are mapped to FINDINGS (pulse_jax.ecg.findings), the one table that links every taxonomy to a
  human-readable name, a one-sentence explanation and the benchmark label codes (see also SCP_STATEMENTS and the
  label spaces);
- what the signal shows: pulse_jax.ecg.measure's rate, regularity, PR, QRS, QT/QTc and axis.

A question is only asked when its answer is decided: a finding is called absent only when the source would have
stated it (it is in the source's vocabulary), nothing present overlaps it and the measurements do not suggest it;
a threshold question ("is the QRS wide?") is skipped when the measured value lies within a margin of the threshold.

Instruction tasks (`instruction_tasks`) follow ECGInstruct (reference/pulse_paper.md §1): categories feature /
rhythm / morphology / report, task types close-ended / open-ended / fill-in-the-blank / multiple-choice / report,
several phrasings and styles per question (direct, hypothetical, educational, role-play; output formats such as
yes/no, one word, bulleted or numbered lists, JSON, step-by-step), and 2-4 turn dialogues. The mix of (category,
type) cells defaults to the paper's Table A1 counts per source (PAPER_MIX); CODE-15% gets close-ended questions
only, including the paper's label-list template.

Benchmark items (`benchmark_tasks`) follow ECGBench (§3) for the sets that can be built from raw signals; their gold
answers are written so that the paper's substring scorers and pulse_jax.metrics' strict scorers both parse them:
multi-label answers are "CODE(name)" items joined by "; " (CODE-15% answers exactly "NORM" or "ABNORMAL" when none
of its six codes applies), multiple-choice answers are the letter alone.
"""

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from pulse_jax.data.tokenizer import IMAGE_TOKEN
from pulse_jax.ecg import snomed, synth
# Finding, FINDINGS, FINDING_BY_KEY and SCP_STATEMENTS are also this module's API.
from pulse_jax.ecg.findings import FINDING_BY_KEY, FINDINGS, SCP_STATEMENTS, Finding
from pulse_jax.ecg.measure import Measurements
from pulse_jax.ecg.readers import CODE15_LABELS, PTBXL_SUPERCLASSES
from pulse_jax.ecg.record import EcgRecord
from pulse_jax.errors import ConfigError, DataError

TASK_TYPES: tuple[str, ...] = ("close-ended", "open-ended", "fill-in-the-blank", "multiple-choice", "report")
CATEGORIES: tuple[str, ...] = ("feature", "rhythm", "morphology", "report")
BENCHMARKS: tuple[str, ...] = (
    "ptb-test", "ptb-test-report", "code15-test", "cpsc-test", "csn-test-no-cot", "g12-test-no-cot")
REPORT_QUESTION = "Please write a clinical report based on this ECG image."

# ---------------------------------------------------------------------------------------------------------------
# Tasks.


@dataclasses.dataclass(frozen=True)
class Task:
  """One instruction or benchmark item in ECGInstruct's record format; validated on construction.

  Attributes:
    id: unique within a corpus and stable for a given record and seed.
    conversations: LLaVA turns {"from": "human" | "gpt", "value": str}, alternating from a human turn; the first
      human turn starts with "<image>\\n", and no other turn holds "<image>"; no value is empty.
    metadata: {"source", "task_type" (one of TASK_TYPES), "category" (one of CATEGORIES), "subtask"}.
    labels: gold labels where the item is scored by labels (label-list questions, the multi-label benchmark sets;
      the true diagnosis of a benchmark multiple-choice item), else ().
    record_id: the record the image shows.
  Raises DataError naming the task when any of this does not hold.
  """
  id: str
  conversations: list[dict[str, str]]
  metadata: dict[str, str]
  labels: tuple[str, ...]
  record_id: str

  def __post_init__(self):
    turns = self.conversations
    if len(turns) < 2 or len(turns) % 2:
      raise DataError(f"task {self.id}: {len(turns)} turns; a task is one or more (human, gpt) pairs")
    for index, turn in enumerate(turns):
      due = "human" if index % 2 == 0 else "gpt"
      value = turn.get("value")
      if turn.get("from") != due or not isinstance(value, str) or not value.strip():
        raise DataError(f"task {self.id}: turn {index} must be a non-empty {due!r} turn, got {turn!r}")
      if value.count(IMAGE_TOKEN) != (index == 0) or (index == 0 and not value.startswith(IMAGE_TOKEN + "\n")):
        raise DataError(f"task {self.id}: {IMAGE_TOKEN} must open the first human turn and appear nowhere else")
    if self.metadata.get("task_type") not in TASK_TYPES or self.metadata.get("category") not in CATEGORIES:
      raise DataError(f"task {self.id}: bad task_type/category in metadata {self.metadata}")


@dataclasses.dataclass(frozen=True)
class _Item:
  """A question-answer exchange (one or more turns) before it becomes a Task.

  `styled` items get a random opener ("Imagine you are an emergency physician reviewing this ECG. ") in front of
  their first question; fixed templates (the label lists) do not.
  """
  category: str
  task_type: str
  subtask: str
  turns: tuple[tuple[str, str], ...]
  labels: tuple[str, ...] = ()
  styled: bool = True


def _make_task(task_id: str, item: _Item, record: EcgRecord) -> Task:
  conversations = []
  for index, (question, answer) in enumerate(item.turns):
    conversations.append({"from": "human", "value": (IMAGE_TOKEN + "\n" if index == 0 else "") + question})
    conversations.append({"from": "gpt", "value": answer})
  metadata = {"source": record.provenance.source, "task_type": item.task_type, "category": item.category,
              "subtask": item.subtask}
  return Task(id=task_id, conversations=conversations, metadata=metadata, labels=item.labels,
              record_id=record.record_id)


# ---------------------------------------------------------------------------------------------------------------
# Findings: views of pulse_jax.ecg.findings, the one map between taxonomies, names, explanations and codes.

_FINDING_BY_CODE15 = {f.code15: f for f in FINDINGS if f.code15}
_FINDING_BY_SNOMED = {code: f for f in FINDINGS for code in f.snomed}
_PHRASES = tuple((f, re.compile(p, re.IGNORECASE)) for f in FINDINGS for p in f.phrases)

# Pairs a reader could both call present: neither is ever offered as wrong while the other is present.
_OVERLAPPING = frozenset(frozenset(pair) for pair in (
    ("sinus_rhythm", "sinus_bradycardia"), ("sinus_rhythm", "sinus_tachycardia"), ("sinus_rhythm", "sinus_arrhythmia"),
    ("sinus_bradycardia", "sinus_arrhythmia"), ("sinus_tachycardia", "sinus_arrhythmia"),
    ("right_bundle_branch_block", "incomplete_right_bundle_branch_block"),
    ("intraventricular_conduction_delay", "right_bundle_branch_block"),
    ("intraventricular_conduction_delay", "left_bundle_branch_block"),
    ("intraventricular_conduction_delay", "incomplete_right_bundle_branch_block"),
    ("intraventricular_conduction_delay", "wolff_parkinson_white"),
    ("left_anterior_fascicular_block", "left_axis_deviation"),
    ("right_ventricular_hypertrophy", "right_axis_deviation"),
    ("myocardial_ischemia", "st_depression"), ("myocardial_ischemia", "st_elevation"),
    ("myocardial_ischemia", "st_t_changes"), ("myocardial_infarction", "st_elevation"),
    ("myocardial_infarction", "st_t_changes"), ("st_t_changes", "st_depression"), ("st_t_changes", "st_elevation"),
    ("st_t_changes", "left_bundle_branch_block"), ("st_t_changes", "right_bundle_branch_block"),
    ("st_t_changes", "left_ventricular_hypertrophy"), ("st_t_changes", "wolff_parkinson_white"),
    # A left bundle branch block raises QRS voltages and moves ST segments by itself; a right one can depress them.
    ("left_bundle_branch_block", "left_ventricular_hypertrophy"), ("left_bundle_branch_block", "st_elevation"),
    ("left_bundle_branch_block", "st_depression"), ("right_bundle_branch_block", "st_depression")))

# Leads facing each wall; posterior walls have no facing lead of the 12.
_TERRITORY_LEADS: dict[str, tuple[str, ...]] = {
    **synth.TERRITORY_LEADS,
    "septal": ("V1", "V2"),
    "anteroseptal": ("V1", "V2", "V3", "V4"),
    "anterolateral": ("I", "aVL", "V3", "V4", "V5", "V6"),
    "inferolateral": ("II", "III", "aVF", "V5", "V6"),
}
_TERRITORY_WORD = re.compile(r"\b(inferoposterolateral|inferoposterior|inferolateral|anterolateral|anteroseptal|"
                             r"inferior|anterior|lateral|septal|posterior)\b", re.IGNORECASE)
_TERRITORIAL = frozenset({"myocardial_infarction", "st_elevation", "st_depression", "myocardial_ischemia"})
# The walls a territory multiple-choice question offers.
_WALLS = ("inferior", "anterior", "lateral", "posterior")

# ---------------------------------------------------------------------------------------------------------------
# Label spaces of the benchmark sets.


@dataclasses.dataclass(frozen=True)
class LabelSpace:
  """The labels of one ECGBench set and how a record gets them.

  Attributes:
    benchmark: the ECGBench set.
    sources: record sources labelled in this space natively (their record.labels are kept); synthetic records are
      mapped through FINDINGS.
    codes: the label codes, in the set's order.
    names: code -> full name, as options and answers write it.
    code_of: the code a synthetic finding maps to (or None).
    normal_code: the code that means "normal ECG" in this space: given to normal records only, unless
      `sinus_is_normal`.
    sinus_is_normal: a synthetic record in a sinus rhythm without any other code of the space gets normal_code too
      (PTB-XL codes NORM beside rate and ectopy statements, as pulse_jax.ecg.corpus writes it).
    verdicts: (normal, abnormal) codes answered alone when no code applies (CODE-15%); () when such records are
      not part of the set.
    category, subtask: the ECGInstruct category and sub-task of its questions.
    question: the benchmark's prompt; {options} lists "CODE(name)" items.
  """
  benchmark: str
  sources: tuple[str, ...]
  codes: tuple[str, ...]
  names: Mapping[str, str]
  code_of: Callable[[Finding], str | None]
  normal_code: str | None
  sinus_is_normal: bool
  verdicts: tuple[str, ...]
  category: str
  subtask: str
  question: str


_SELECT_ALL = "List every option that applies, separated by semicolons, without any explanation."
LABEL_SPACES: dict[str, LabelSpace] = {space.benchmark: space for space in (
    LabelSpace(
        "ptb-test", ("ptbxl",), PTBXL_SUPERCLASSES,
        {"NORM": "normal ECG", "MI": "myocardial infarction", "STTC": "ST/T change", "CD": "conduction disturbance",
         "HYP": "hypertrophy"},
        lambda f: f.ptbxl_superclass, "NORM", True, (), "morphology", "Diagnosis Classification",
        "Which of the following diagnostic classes does this ECG belong to: {options}? " + _SELECT_ALL),
    LabelSpace(
        "code15-test", ("code15",), CODE15_LABELS,
        {"1dAVb": "1st degree av block", "RBBB": "right bundle branch block", "LBBB": "left bundle branch block",
         "SB": "sinus bradycardia", "ST": "sinus tachycardia", "AF": "atrial fibrillation"},
        lambda f: f.code15, None, False, ("NORM", "ABNORMAL"), "rhythm", "Conduction Abnormality Detection",
        "As part of a heart health assessment, your task is to examine the ECG, identify all fitting options from "
        "the provided list, and enumerate them using semicolon: {options}. Only answer based on the given options "
        "without any explanation."),
    LabelSpace(
        "cpsc-test", ("cpsc",), snomed.CPSC_LABELS,
        {**{code: snomed.full_name(code) for code in snomed.CPSC_LABELS}, "NORM": "normal ECG"},
        lambda f: f.snomed[0] if f.snomed else None, "NORM", False, (), "rhythm", "Arrhythmia Identification",
        "Please determine the appropriate diagnosis for the ECG image, choosing all that apply from: {options}. "
        + _SELECT_ALL),
)}
# Phrasings of label-list questions in instruction tasks (each space's benchmark prompt is one more).
_LABEL_LIST_QUESTIONS = (
    "Review the ECG image and decide which of these options apply: {options}. " + _SELECT_ALL,
    "Identify all fitting options for this ECG from the list {options}, and enumerate them using semicolons. "
    "Only answer based on the given options without any explanation.",
    "Classify this tracing. Options: {options}. Select all that apply and list them separated by semicolons.",
)
_VERDICT_RULE = " If none of them applies, answer {normal} for a normal ECG or {abnormal} for an abnormal one."

# ECGBench's 8-option multiple-choice sets draw the options from every Challenge class.
MCQ_SPACES: dict[str, tuple[str, ...]] = {"csn-test-no-cot": ("csn",), "g12-test-no-cot": ("g12ec",)}
_SNOMED_CODES = tuple(c.abbreviation for c in snomed.SNOMED_CLASSES)
_MCQ_LETTERS = "ABCDEFGH"

# ---------------------------------------------------------------------------------------------------------------
# What a record states: findings, statements, normality.


@dataclasses.dataclass(frozen=True)
class _Present:
  finding: Finding
  territory: str | None = None


@dataclasses.dataclass(frozen=True)
class _Statement:
  """One report statement and the findings it states."""
  text: str
  findings: tuple[_Present, ...]


@dataclasses.dataclass(frozen=True)
class _Facts:
  """What questions about one record may rely on.

  Attributes:
    present: findings the record states, in FINDINGS order, one entry per finding.
    vocabulary: keys of the findings the source would have stated if present, so their absence is known.
    normal: the record is called a normal ECG (True), an abnormal one (False), or nothing is said (None).
    statements: the report, statement by statement, in English.
    measurements: the signal's measurements, None when they could not be taken.
    space_labels: benchmark -> the record's gold codes in that LABEL_SPACES space (None: it has none there).
  """
  present: tuple[_Present, ...]
  vocabulary: frozenset[str]
  normal: bool | None
  statements: tuple[_Statement, ...]
  measurements: Measurements | None
  space_labels: Mapping[str, tuple[str, ...] | None] = dataclasses.field(default_factory=dict)

  @property
  def keys(self) -> frozenset[str]:
    return frozenset(p.finding.key for p in self.present)

  @property
  def rhythm(self) -> Finding | None:
    return next((p.finding for p in self.present if p.finding.is_rhythm), None)

  def consistent(self, finding: Finding) -> bool:
    """The measurements agree with a stated finding (or cannot tell), so they may be quoted beside it."""
    m = self.measurements
    return m is not None and (finding.suggested is None or finding.suggested(m))

  def hinted(self, finding: Finding) -> bool:
    """The finding is present, overlaps one that is, or the measurements suggest it."""
    if finding.key in self.keys or any(frozenset((finding.key, key)) in _OVERLAPPING for key in self.keys):
      return True
    m = self.measurements
    return m is not None and finding.suggested is not None and finding.suggested(m)

  def clearly_absent(self, finding: Finding) -> bool:
    """The finding can be called absent: the source would have stated it, and nothing hints at it."""
    return finding.key in self.vocabulary and not self.hinted(finding)


_NEGATION = re.compile(r"\b(?:no|not|without|absent|no longer|resolved)\b", re.IGNORECASE)
_VERDICT = re.compile(r"^(normal|abnormal|borderline) (?:ecg|electrocardiogram)$", re.IGNORECASE)
# A statement boundary in a report whose statements were joined with spaces: a capitalised word (not an acronym)
# after a word that ends in a lower-case letter or digit ("Sinus rhythm Left axis deviation").
_JOINED_STATEMENT = re.compile(r"(?<=[a-z0-9]) (?=[A-Z][a-z])")


def _statement(text: str) -> _Statement:
  """A report statement with the findings its phrases state (not negated before the phrase)."""
  territory = _TERRITORY_WORD.search(text)
  found: dict[str, _Present] = {}
  for finding, pattern in _PHRASES:
    match = pattern.search(text)
    if match and finding.key not in found and not _NEGATION.search(text[:match.start()]):
      where = territory.group(1).lower() if territory and finding.key in _TERRITORIAL else None
      found[finding.key] = _Present(finding, where)
  return _Statement(text, tuple(found.values()))


def _report_statements(report: str | None) -> tuple[_Statement, ...]:
  """Statements of an English report: split at sentence ends and semicolons, then at joined statements.

  A one-word piece is a capitalised qualifier ("Possible Left atrial enlargement"), so it joins the next one.
  """
  pieces = []
  for part in re.split(r"(?<=[A-Za-z0-9)])\.(?:\s+|$)|[;\n]", report or ""):
    joined = []
    for piece in _JOINED_STATEMENT.split(part.strip()):
      if joined and " " not in joined[-1]:
        joined[-1] = f"{joined[-1]} {_lower_first(piece)}"
      else:
        joined.append(piece)
    pieces += joined
  return tuple(_statement(p) for p in pieces if p)


def _scp_statement(code: str) -> _Statement:
  """A PTB-XL SCP code as an English statement (PTB-XL's free-text reports are mostly German)."""
  description, key, territory = SCP_STATEMENTS[code]
  return _Statement(description, () if key is None else (_Present(FINDING_BY_KEY[key], territory),))


def _collect(statements: Sequence[_Statement], extra: Sequence[_Present] = ()) -> tuple[_Present, ...]:
  """Findings of statements (and `extra`), one per finding in FINDINGS order, keeping a known territory."""
  merged: dict[str, _Present] = {}
  for present in [p for s in statements for p in s.findings] + list(extra):
    if present.finding.key not in merged or merged[present.finding.key].territory is None:
      merged[present.finding.key] = present
  return tuple(merged[f.key] for f in FINDINGS if f.key in merged)


def _verdict(statements: Sequence[_Statement]) -> bool | None:
  verdicts = [m.group(1).lower() for s in statements if (m := _VERDICT.match(s.text.strip()))]
  return None if not verdicts else verdicts[-1] == "normal"


_SYNTHETIC_VOCABULARY = frozenset(synth.RHYTHMS + synth.FINDINGS + ("atrial_flutter", "paced_rhythm"))


def _facts(record: EcgRecord, measurements: Measurements | None) -> _Facts:
  """What a record states and shows; ConfigError for a source without a known taxonomy."""
  facts = _stated(record, measurements)
  return dataclasses.replace(facts, space_labels={
      benchmark: _space_labels(record, facts, space) for benchmark, space in LABEL_SPACES.items()})


def _stated(record: EcgRecord, measurements: Measurements | None) -> _Facts:
  """Findings, vocabulary, verdict and statements of a record, by its source's conventions."""
  source, labels = record.provenance.source, record.labels
  if source == "synthetic":
    territory = record.extra.get("spec", {}).get("territory")
    present = tuple(_Present(f, territory if f.key in _TERRITORIAL else None) for f in FINDINGS if f.key in labels)
    return _Facts(present, _SYNTHETIC_VOCABULARY, labels == ("sinus_rhythm",), _report_statements(record.report),
                  measurements)
  if source == "ptbxl":
    statements = tuple(_scp_statement(code) for code in record.extra.get("scp_codes", {}) if code in SCP_STATEMENTS)
    vocabulary = frozenset(key for _, key, _ in SCP_STATEMENTS.values() if key) if statements else frozenset()
    normal = None if not labels else labels == ("NORM",)
    return _Facts(_collect(statements), vocabulary, normal, statements, measurements)
  if source == "mimic":
    statements = _report_statements(record.report)
    vocabulary = frozenset(FINDING_BY_KEY) if statements else frozenset()
    return _Facts(_collect(statements), vocabulary, _verdict(statements), statements, measurements)
  if source == "code15":
    present = tuple(_Present(_FINDING_BY_CODE15[code]) for code in labels if code in _FINDING_BY_CODE15)
    normal = False if present else record.extra.get("normal_ecg")
    return _Facts(_collect((), present), frozenset(f.key for f in _FINDING_BY_CODE15.values()), normal, (),
                  measurements)
  if source in ("cpsc", "g12ec", "csn"):
    present = tuple(_Present(_FINDING_BY_SNOMED[code]) for code in labels if code in _FINDING_BY_SNOMED)
    normal = labels == ("NORM",) if source == "cpsc" else None
    return _Facts(_collect((), present), frozenset(f.key for f in _FINDING_BY_SNOMED.values()), normal, (),
                  measurements)
  raise ConfigError(f"record {record.record_id}: no task taxonomy for source {source!r}; expected synthetic, "
                    "ptbxl, mimic, code15, cpsc, g12ec or csn")


def _space_labels(record: EcgRecord, facts: _Facts, space: LabelSpace) -> tuple[str, ...] | None:
  """The record's gold codes in `space`, in the space's order; None when the record has none there."""
  source = record.provenance.source
  if source in space.sources:
    codes = set(record.labels)
  elif source == "synthetic":
    codes = {space.code_of(p.finding) for p in facts.present} - {None, space.normal_code}
    sinus = facts.rhythm is not None and facts.rhythm.key.startswith("sinus_")
    if space.normal_code and (facts.normal or (space.sinus_is_normal and sinus and not codes)):
      codes.add(space.normal_code)
  else:
    return None
  ordered = tuple(code for code in space.codes if code in codes)
  if ordered or not space.verdicts or facts.normal is None:
    return ordered or None
  return (space.verdicts[0] if facts.normal else space.verdicts[1],)


# ---------------------------------------------------------------------------------------------------------------
# Wording helpers.

_OPENERS = (
    "", "", "", "Look at this ECG image. ", "Based on the ECG image, ", "Given this 12-lead ECG, ",
    "Imagine you are an emergency physician reviewing this ECG. ",
    "You are teaching a group of medical students with this tracing. ",
    "You are consulting with a cardiologist about this ECG. ",
    "Suppose this tracing was handed to you during a night shift. ")
_BLANK = "_____"


def _pick(rng: np.random.Generator, options: Sequence):
  return options[int(rng.integers(len(options)))]


def _sample(rng: np.random.Generator, options: Sequence, k: int) -> list:
  """k distinct elements of `options`, in random order."""
  return [options[i] for i in rng.choice(len(options), size=k, replace=False)]


def _shuffled(rng: np.random.Generator, options: Sequence) -> list:
  return _sample(rng, options, len(options))


def _lower_first(text: str) -> str:
  """'What is...' -> 'what is...'; acronyms ('ST elevation', 'QRS') keep their case."""
  return text[0].lower() + text[1:] if text[1:2].islower() else text


def _sentence(text: str) -> str:
  text = text.strip().rstrip(".")
  return text[0].upper() + text[1:] + "."


def _styled(rng: np.random.Generator, question: str) -> str:
  opener = _pick(rng, _OPENERS)
  return opener + (_lower_first(question) if opener.endswith(", ") else question)


def _yes_no(rng: np.random.Generator, question: str, yes: bool, reason: str) -> tuple[str, str]:
  """A yes/no question with an output-format instruction, answered in that format."""
  word = "Yes" if yes else "No"
  instruction, answer = _pick(rng, (
      ("Answer yes or no.", word + "."),
      ("Answer with a single word: yes or no.", word),
      ("Answer yes or no, then justify your answer in one sentence.", f"{word}. {reason}"),
      ("", f"{word}. {reason}")))
  return f"{question} {instruction}".strip(), answer


def _fill_in(rng: np.random.Generator, sentence: str, fill: str) -> tuple[str, str]:
  """A fill-in-the-blank question on `sentence` ({blank} marks the gap), answered with the completed sentence."""
  instruction = _pick(rng, ("Fill in the blank:", "Complete the sentence:",
                            "Fill in the blank based on the ECG image and answer with the completed sentence:"))
  return f"{instruction}\n{sentence.format(blank=_BLANK)}", sentence.format(blank=fill)


def _multiple_choice(rng: np.random.Generator, stem: str, options: Sequence[str], correct: int,
                     reasoning: str | None = None) -> tuple[str, str]:
  """A multiple-choice question in one of several layouts and answer styles (chain of thought when reasoned)."""
  letters = _MCQ_LETTERS[:len(options)]
  styles = ["direct", "letter"] + (["reasoned"] if reasoning else [])
  style = _pick(rng, styles)
  instruction = {
      "direct": _pick(rng, ("Choose the correct option.", "Directly output one of the following options.")),
      "letter": "Answer with the letter of the correct option only.",
      "reasoned": _pick(rng, ("Think step by step before answering.",
                              "Share your thought process, then give your final answer.")),
  }[style]
  letter, text = letters[correct], options[correct]
  if rng.random() < 0.5:
    question = f"{instruction}\n{stem}\n" + "\n".join(f"{l}. {o}" for l, o in zip(letters, options))
    direct = f"{letter}. {text}"
  else:
    question = f"{stem} Options: " + "; ".join(f"{l}) {o}" for l, o in zip(letters, options)) + f". {instruction}"
    direct = f"{letter}) {text}"
  if style == "reasoned":
    conclusion = _pick(rng, ("We can conclude that the answer is", "Based on this, we select"))
    return question, f"{reasoning} {conclusion} {letter}. {text}"
  return question, letter if style == "letter" else direct


def _listed(rng: np.random.Generator, points: Sequence[str]) -> tuple[str, str]:
  """(format instruction, answer) presenting `points` (sentences) as bullets, a numbered list or a paragraph."""
  return _pick(rng, (
      ("Use a bulleted list.", "\n".join(f"- {p}" for p in points)),
      ("Answer as a numbered list.", "\n".join(f"{i}. {p}" for i, p in enumerate(points, 1))),
      ("Answer in a short paragraph.", " ".join(points))))


def _explain(present: _Present) -> str:
  """The finding's explanation, plus the leads it involves when its territory is known."""
  leads = _TERRITORY_LEADS.get(present.territory or "")
  where = f" Here it involves the {present.territory} leads ({', '.join(leads)})." if leads else ""
  return present.finding.explanation + where


def _located(present: _Present) -> str:
  return present.finding.name + (f" in the {present.territory} leads" if present.territory else "")


# ---------------------------------------------------------------------------------------------------------------
# Measurements in words.


@dataclasses.dataclass(frozen=True)
class _Threshold:
  """A yes/no question on one measurement: yes when the value is above (or below) `threshold`.

  Skipped when the value lies within `margin` of the threshold, where a reader of the image could not decide.
  """
  question: str
  what: str
  unit: str
  value: Callable[[Measurements], float | None]
  threshold: float
  margin: float
  yes_above: bool
  subtask: str


def _frontal_axis(m: Measurements) -> float | None:
  """The QRS axis for the deviation questions; None for an extreme axis (-180 to -90), which is neither."""
  return m.qrs_axis_deg if m.qrs_axis_deg > -80 else None


_THRESHOLDS = (
    _Threshold("Is the heart rate above 100 beats per minute?", "heart rate", "bpm",
               lambda m: m.heart_rate_bpm, 100, 4, True, "Basic Waveform Understanding"),
    _Threshold("Is the heart rate below 60 beats per minute?", "heart rate", "bpm",
               lambda m: m.heart_rate_bpm, 60, 3, False, "Basic Waveform Understanding"),
    _Threshold("Is the QRS complex wide (120 ms or more)?", "QRS duration", "ms",
               lambda m: m.qrs_ms, 120, 8, True, "Basic Waveform Understanding"),
    _Threshold("Is the PR interval prolonged beyond 200 ms?", "PR interval", "ms",
               lambda m: m.pr_ms, 200, 10, True, "Conduction System Interpretation"),
    _Threshold("Is the corrected QT interval (QTc) longer than 460 ms?", "QTc", "ms",
               lambda m: m.qtc_ms, 460, 15, True, "Basic Waveform Understanding"),
    _Threshold("Is there left axis deviation, with a QRS axis beyond -30 degrees?", "QRS axis", "degrees",
               _frontal_axis, -30, 10, False, "Axis and Rhythm Determination"),
    _Threshold("Is there right axis deviation, with a QRS axis beyond +90 degrees?", "QRS axis", "degrees",
               _frontal_axis, 90, 10, True, "Axis and Rhythm Determination"),
)


def _axis_class(axis: float) -> str | None:
  """'normal' (-30 to +90), 'left', 'right' or 'extreme' axis; None within 10 degrees of a border."""
  borders = (-90.0, -30.0, 90.0, 180.0)
  if any(abs((axis - b + 180) % 360 - 180) < 10 for b in borders):
    return None
  if -30 < axis < 90:
    return "normal"
  return "left" if -90 < axis <= -30 else "right" if 90 <= axis < 180 else "extreme"


_AXIS_WORDS = {"normal": "a normal axis", "left": "left axis deviation", "right": "right axis deviation",
               "extreme": "extreme axis deviation"}


def _regularity(m: Measurements) -> str:
  if m.irregular:
    return "irregular"
  if m.premature_beats:
    return f"regular apart from {m.premature_beats} premature beat{'s' * (m.premature_beats > 1)}"
  return "regular"


def _measured_points(m: Measurements, rhythm: Finding | None) -> list[str]:
  """Sentences giving rate, rhythm, intervals and axis."""
  points = [f"Heart rate: about {round(m.heart_rate_bpm)} bpm."]
  if rhythm is not None:
    points.append(f"Rhythm: {rhythm.name}.")
  points.append(f"RR intervals: {_regularity(m)}.")
  points.append(f"PR interval: {round(m.pr_ms)} ms." if m.pr_ms is not None
                else "PR interval: not measurable, as there are no consistent P waves.")
  width = "wide" if m.qrs_ms >= 128 else "narrow" if m.qrs_ms <= 112 else None
  points.append(f"QRS duration: {round(m.qrs_ms)} ms" + (f" ({width})." if width else "."))
  if m.qt_ms is not None and m.qtc_ms is not None:
    points.append(f"QT/QTc: {round(m.qt_ms)}/{round(m.qtc_ms)} ms.")
  axis = _axis_class(m.qrs_axis_deg)
  points.append(f"QRS axis: {m.qrs_axis_deg:+.0f} degrees" + (f" ({_AXIS_WORDS[axis]})." if axis else "."))
  return points


# ---------------------------------------------------------------------------------------------------------------
# Question generators: (facts, rng) -> _Item, or None when the record cannot answer that kind of question.

_Generator = Callable[[_Facts, np.random.Generator], "_Item | None"]


def _threshold_close(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  m = facts.measurements
  if m is None:
    return None
  decided = [t for t in _THRESHOLDS if t.value(m) is not None and abs(t.value(m) - t.threshold) >= t.margin]
  if not decided:
    return None
  t = _pick(rng, decided)
  value = t.value(m)
  reason = f"The measured {t.what} is {value:.0f} {t.unit}."
  question, answer = _yes_no(rng, t.question, (value > t.threshold) == t.yes_above, reason)
  return _Item("feature", "close-ended", t.subtask, ((question, answer),))


def _features_open(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  m = facts.measurements
  if m is None:
    return None
  stem = _pick(rng, ("What are the main ECG features here?",
                     "Describe the basic measurements of this ECG: rate, rhythm, intervals and axis.",
                     "Summarize the heart rate, conduction intervals and QRS axis of this tracing."))
  if rng.random() < 0.25:
    fields = {"heart_rate_bpm": round(m.heart_rate_bpm), "rhythm": facts.rhythm.name if facts.rhythm else None,
              "rr_intervals": _regularity(m), "pr_ms": None if m.pr_ms is None else round(m.pr_ms),
              "qrs_ms": round(m.qrs_ms), "qtc_ms": None if m.qtc_ms is None else round(m.qtc_ms),
              "qrs_axis_deg": round(m.qrs_axis_deg)}
    question = f"{stem} Answer in JSON with the keys {', '.join(fields)}."
    return _Item("feature", "open-ended", "Basic Waveform Understanding", ((question, json.dumps(fields)),))
  instruction, answer = _listed(rng, _measured_points(m, facts.rhythm))
  return _Item("feature", "open-ended", "Basic Waveform Understanding", ((f"{stem} {instruction}", answer),))


def _axis_open(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  m = facts.measurements
  axis = _axis_class(m.qrs_axis_deg) if m is not None else None
  if axis is None:
    return None
  lead_i, avf = np.cos(np.radians(m.qrs_axis_deg)), np.sin(np.radians(m.qrs_axis_deg))
  question = _pick(rng, ("What is the QRS axis, and how can it be read from the limb leads?",
                         "Explain how you would determine the cardiac axis on this ECG, and give its value."))
  answer = (f"The frontal QRS axis is about {m.qrs_axis_deg:+.0f} degrees, which is {_AXIS_WORDS[axis]}. "
            f"The net QRS deflection is {'positive' if lead_i > 0 else 'negative'} in lead I and "
            f"{'positive' if avf > 0 else 'negative'} in aVF, which places the axis in the "
            f"{'left' if lead_i > 0 else 'right'} {'inferior' if avf > 0 else 'superior'} quadrant of the frontal "
            "plane.")
  return _Item("feature", "open-ended", "Axis and Rhythm Determination", ((question, answer),))


def _measurement_blank(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  m = facts.measurements
  if m is None:
    return None
  axis = _axis_class(m.qrs_axis_deg)
  candidates = [
      ("The heart rate on this ECG is approximately {blank} beats per minute.", str(round(m.heart_rate_bpm)),
       "Basic Waveform Understanding"),
      ("The QRS duration measures about {blank} ms.", str(round(m.qrs_ms)), "Basic Waveform Understanding"),
      ("The PR interval measures about {blank} ms.", None if m.pr_ms is None else str(round(m.pr_ms)),
       "Conduction System Interpretation"),
      ("The corrected QT interval (QTc) is about {blank} ms.", None if m.qtc_ms is None else str(round(m.qtc_ms)),
       "Basic Waveform Understanding"),
      ("The frontal QRS axis shows {blank}.", _AXIS_WORDS[axis] if axis else None, "Axis and Rhythm Determination"),
  ]
  sentence, fill, subtask = _pick(rng, [c for c in candidates if c[1] is not None])
  return _Item("feature", "fill-in-the-blank", subtask, (_fill_in(rng, sentence, fill),))


def _rate_mcq(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  m = facts.measurements
  if m is None:
    return None
  rate = round(m.heart_rate_bpm)
  others = [rate + d for d in (-65, -45, -25, 25, 45, 65) if 25 <= rate + d <= 220]
  chosen = sorted([rate] + _sample(rng, others, 3))
  reasoning = (f"The RR intervals average {round(m.rr_mean_ms)} ms, and 60000 / {round(m.rr_mean_ms)} gives a rate of "
               f"about {rate} bpm.")
  question, answer = _multiple_choice(rng, "What is the approximate heart rate?", [f"{r} bpm" for r in chosen],
                                      chosen.index(rate), reasoning)
  return _Item("feature", "multiple-choice", "Basic Waveform Understanding", ((question, answer),))


def _axis_mcq(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  m = facts.measurements
  axis = _axis_class(m.qrs_axis_deg) if m is not None else None
  if axis is None:
    return None
  options = _shuffled(rng, list(_AXIS_WORDS.values()))
  reasoning = f"The net QRS deflections in leads I and aVF put the frontal axis at about {m.qrs_axis_deg:+.0f} degrees."
  question, answer = _multiple_choice(rng, "How would you describe the cardiac axis?", options,
                                      options.index(_AXIS_WORDS[axis]), reasoning)
  return _Item("feature", "multiple-choice", "Axis and Rhythm Determination", ((question, answer),))


def _finding_close(category: str) -> _Generator:
  """Yes/no questions on one finding of `category`, present or clearly absent (about as often each)."""

  def generate(facts: _Facts, rng: np.random.Generator) -> _Item | None:
    present = [p for p in facts.present if p.finding.category == category]
    absent = [_Present(f) for f in FINDINGS if f.category == category and facts.clearly_absent(f)]
    pools = [pool for pool in (present, absent) if pool]
    if not pools:
      return None
    target = _pick(rng, _pick(rng, pools))
    yes = target.finding.key in facts.keys
    stem = _pick(rng, ("Does this ECG show {name}?", "Is {name} present on this tracing?",
                       "Is there evidence of {name}?", "Would you report {name} on this ECG?"))
    if yes:
      reason = _explain(target)
    else:
      rhythm = facts.rhythm
      instead = f"; the rhythm is {rhythm.name}" if target.finding.is_rhythm and rhythm else ""
      reason = f"The tracing does not show {target.finding.name}{instead}."
    question, answer = _yes_no(rng, stem.format(name=target.finding.name), yes, reason)
    return _Item(category, "close-ended", target.finding.subtask, ((question, answer),))
  return generate


def _label_list(space: LabelSpace) -> _Generator:
  """Choose-all-that-apply questions over a benchmark label space, in its answer format."""

  def generate(facts: _Facts, rng: np.random.Generator) -> _Item | None:
    codes = facts.space_labels[space.benchmark]
    if codes is None:
      return None
    question = _label_list_question(space, _pick(rng, (space.question,) + _LABEL_LIST_QUESTIONS))
    return _Item(space.category, "close-ended", space.subtask, ((question, _label_list_answer(space, codes)),),
                 labels=codes, styled=False)
  return generate


def _label_list_question(space: LabelSpace, template: str) -> str:
  options = ", ".join(f"{code}({space.names[code]})" for code in space.codes)
  rule = _VERDICT_RULE.format(normal=space.verdicts[0], abnormal=space.verdicts[1]) if space.verdicts else ""
  return template.format(options=options) + rule


def _label_list_answer(space: LabelSpace, codes: Sequence[str]) -> str:
  if tuple(codes) in ((v,) for v in space.verdicts):
    return codes[0]
  return "; ".join(f"{code}({space.names[code]})" for code in codes)


def _rhythm_open(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  rhythm = facts.rhythm
  if rhythm is None:
    return None
  points = [f"The rhythm is {rhythm.name}. {rhythm.explanation}"]
  if facts.consistent(rhythm):
    points.append(f"The ventricular rate is about {round(facts.measurements.heart_rate_bpm)} bpm.")
  points += [f"There {'are' if p.finding.name.endswith('s') else 'is'} {p.finding.name}. {p.finding.explanation}"
             for p in facts.present if p.finding.category == "rhythm" and not p.finding.is_rhythm]
  stem = _pick(rng, ("What is the heart rhythm, and what features identify it?",
                     "Analyze the rhythm on this ECG.", "Teach a medical student how to read the rhythm of this ECG."))
  instruction, answer = _listed(rng, points)
  return _Item("rhythm", "open-ended", "Rhythm Analysis", ((f"{stem} {instruction}", answer),))


def _rhythm_blank(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  rhythm = facts.rhythm
  ectopy = [p.finding for p in facts.present if p.finding.key.startswith("premature_")]
  candidates = []
  if rhythm is not None:
    candidates += [("The rhythm shown on this ECG is {blank}.", rhythm.name),
                   ("The underlying rhythm on this tracing is best described as {blank}.", rhythm.name)]
  if len(ectopy) == 1:
    candidates.append(("The early beats on this tracing are {blank}.", ectopy[0].name))
  if not candidates:
    return None
  sentence, fill = _pick(rng, candidates)
  return _Item("rhythm", "fill-in-the-blank", "Rhythm Classification", (_fill_in(rng, sentence, fill),))


def _rhythm_mcq(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  rhythm = facts.rhythm
  wrong = [f for f in FINDINGS if f.is_rhythm and facts.clearly_absent(f)]
  if rhythm is None or len(wrong) < 2:
    return None
  names = _shuffled(rng, [rhythm.name] + [f.name for f in _sample(rng, wrong, min(3, len(wrong)))])
  question, answer = _multiple_choice(rng, "Which rhythm does this ECG show?", names, names.index(rhythm.name),
                                      rhythm.explanation)
  return _Item("rhythm", "multiple-choice", "Rhythm Classification", ((question, answer),))


def _morphology_open(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  found = [p for p in facts.present if p.finding.category == "morphology"]
  if found:
    target = _pick(rng, found)
    question = _pick(rng, ("What features on this ECG point to {name}?",
                           "Describe how the {name} shows on this tracing.")).format(
                               name=_located(target))
    return _Item("morphology", "open-ended", target.finding.subtask, ((question, _explain(target)),))
  if facts.normal:
    question = "Describe any abnormalities of the QRS complexes, ST segments and T waves."
    answer = ("The QRS complexes, ST segments and T waves look normal: there is no bundle branch block, "
              "hypertrophy, ST deviation or pathological Q wave.")
    return _Item("morphology", "open-ended", "Wave Morphology Analysis", ((question, answer),))
  return None


def _morphology_blank(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  candidates = [(f"The {p.finding.name} is seen in the {{blank}} leads.", p.territory, p.finding.subtask)
                for p in facts.present if p.territory in _TERRITORY_LEADS]
  conduction = [p.finding for p in facts.present if p.finding.subtask == "Pathological Conduction Identification"]
  if len(conduction) == 1:
    candidates.append(("The QRS morphology on this ECG is consistent with {blank}.", conduction[0].name,
                       conduction[0].subtask))
  st = [FINDING_BY_KEY[k] for k in ("st_elevation", "st_depression", "st_t_changes", "myocardial_ischemia")]
  if all(facts.clearly_absent(f) for f in st):
    candidates.append(("The ST segments are {blank}.", "isoelectric, neither elevated nor depressed",
                       "Wave Morphology Analysis"))
  if not candidates:
    return None
  sentence, fill, subtask = _pick(rng, candidates)
  return _Item("morphology", "fill-in-the-blank", subtask, (_fill_in(rng, sentence, fill),))


def _morphology_mcq(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  wrong = [f.name for f in FINDINGS if f.category == "morphology" and facts.clearly_absent(f)]
  found = [p.finding.name for p in facts.present if p.finding.category == "morphology"]
  none = "no morphological abnormality"
  if len(wrong) < 3 or not (found or facts.normal):
    return None
  right = _pick(rng, found) if found else none
  options = _shuffled(rng, [right] + _sample(rng, wrong, 3))
  question, answer = _multiple_choice(rng, "Which of the following does this ECG show?", options,
                                      options.index(right))
  return _Item("morphology", "multiple-choice", "Wave Morphology Analysis", ((question, answer),))


def _territory_mcq(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  located = [p for p in facts.present if p.territory in _WALLS]
  if not located:
    return None
  target = _pick(rng, located)
  walls = _shuffled(rng, _WALLS)
  question, answer = _multiple_choice(rng, f"Which wall does the {target.finding.name} involve?",
                                      [f"{w.capitalize()} wall" for w in walls], walls.index(target.territory),
                                      _explain(target))
  return _Item("morphology", "multiple-choice", target.finding.subtask, ((question, answer),))


def _expanded_report(facts: _Facts) -> str:
  """The report in full sentences: each statement, with what its findings look like (PULSE's report revision)."""
  sentences = []
  for statement in facts.statements:
    verdict = _VERDICT.match(statement.text.strip())
    if verdict:
      sentences.append(f"Overall, this is {'an' if verdict.group(1).lower() == 'abnormal' else 'a'} "
                       f"{verdict.group(1).lower()} ECG.")
    elif statement.findings:
      sentences.append(f"The tracing shows {_lower_first(statement.text.strip().rstrip('.'))}.")
      sentences += [_explain(p) for p in statement.findings]
    else:
      sentences.append(_sentence(statement.text))
  return " ".join(sentences)


def _plain_report(facts: _Facts) -> str:
  """The report's statements as sentences: the gold answer of report generation."""
  return " ".join(_sentence(s.text) for s in facts.statements)


def _report(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  if not facts.statements:
    return None
  question, conclude = _pick(rng, (
      (REPORT_QUESTION, False),
      ("Review this electrocardiogram image and provide your expert diagnosis.", False),
      ("Write the interpretation you would enter in the patient's chart for this ECG.", False),
      ("Examine the ECG image and produce a thorough report of your findings, ending with the final diagnosis.",
       True)))
  answer = _expanded_report(facts)
  if conclude:
    answer += " Final diagnosis: " + "; ".join(_lower_first(s.text.strip().rstrip(".")) for s in facts.statements
                                              if s.findings or _VERDICT.match(s.text.strip())) + "."
  return _Item("report", "report", "Clinical Report", ((question, answer),))


def _dialogue(facts: _Facts, rng: np.random.Generator) -> _Item | None:
  """A 2-4 turn conversation moving from basic features to the rhythm, the waveforms and an overall reading."""
  steps = [g(facts, rng) for g in (_features_open, _rhythm_open, _morphology_open)]
  turns = [item.turns[0] for item in steps if item is not None]
  if facts.statements:
    follow_up = _pick(rng, ("Putting it all together, what is your overall interpretation?",
                            "So what would you write in the report?"))
    turns.append((follow_up, _expanded_report(facts)))
  if len(turns) < 2:
    return None
  turns = turns[:int(rng.integers(2, min(4, len(turns)) + 1))]
  return _Item("feature", "open-ended", "Multi-turn Dialogue", tuple(turns))


_GENERATORS: dict[tuple[str, str], tuple[_Generator, ...]] = {
    ("feature", "close-ended"): (_threshold_close, _finding_close("feature")),
    ("feature", "open-ended"): (_features_open, _axis_open),
    ("feature", "fill-in-the-blank"): (_measurement_blank,),
    ("feature", "multiple-choice"): (_rate_mcq, _axis_mcq),
    ("rhythm", "close-ended"): (_finding_close("rhythm"),),
    ("rhythm", "open-ended"): (_rhythm_open,),
    ("rhythm", "fill-in-the-blank"): (_rhythm_blank,),
    ("rhythm", "multiple-choice"): (_rhythm_mcq,),
    ("morphology", "close-ended"): (_finding_close("morphology"),),
    ("morphology", "open-ended"): (_morphology_open,),
    ("morphology", "fill-in-the-blank"): (_morphology_blank,),
    ("morphology", "multiple-choice"): (_morphology_mcq, _territory_mcq),
    ("report", "report"): (_report,),
}
# Label-list questions over the benchmark label spaces, by the close-ended cell of their space's category.
_LABEL_LISTS: dict[tuple[str, str], tuple[_Generator, ...]] = {
    (category, "close-ended"): tuple(_label_list(s) for s in LABEL_SPACES.values() if s.category == category)
    for category in CATEGORIES}

# ---------------------------------------------------------------------------------------------------------------
# Instruction tasks.


def _table_a1(feature: Sequence[int], rhythm: Sequence[int], morphology: Sequence[int],
              report: int = 0) -> dict[tuple[str, str], int]:
  """Cells of ECGInstruct's Table A1 from (close-ended, open-ended, fill-in-the-blank, multiple-choice) counts."""
  cells = {(category, task_type): count
           for category, counts in (("feature", feature), ("rhythm", rhythm), ("morphology", morphology))
           for task_type, count in zip(TASK_TYPES[:4], counts) if count}
  return cells | ({("report", "report"): report} if report else {})


# The paper's sample counts per (category, task type) and source (reference/pulse_paper.md §1.1, Table A1).
# Synthetic records take PTB-XL's mix: every type, reports included.
PAPER_MIX: dict[str, dict[tuple[str, str], int]] = {
    "ptbxl": _table_a1((22759, 906, 449, 5716), (19550, 201, 436, 16179), (50166, 2649, 680, 13432), 16302),
    "mimic": _table_a1((759, 4759, 6470, 17186), (48625, 5262, 11487, 49352), (8241, 81080, 18264, 61456), 486746),
    "code15": _table_a1((22177,), (13893,), (31570,)),
}
PAPER_MIX["synthetic"] = PAPER_MIX["ptbxl"]


@dataclasses.dataclass(frozen=True)
class TaskMix:
  """How many instruction tasks a record gets, and of which kinds.

  Attributes:
    tasks_per_record: mean number of tasks per record: floor(x), plus one with probability x - floor(x). At most
      one task per (category, type) cell, plus a dialogue.
    weights: per source, (category, task type) -> relative weight; cells are drawn by weight without replacement.
      A source's types are the cells it lists (CODE-15%: close-ended only).
    dialogue_fraction: probability that one of a record's tasks is a 2-4 turn dialogue (sources with open-ended
      cells only).
    label_list_share: probability that a close-ended question is a label-list question (the benchmarks'
      abnormality-detection format) when the record has labels in a space of that category.
  """
  tasks_per_record: float = 1.75
  weights: Mapping[str, Mapping[tuple[str, str], float]] = dataclasses.field(default_factory=lambda: PAPER_MIX)
  dialogue_fraction: float = 0.1
  label_list_share: float = 0.5

  def __post_init__(self):
    if self.tasks_per_record <= 0 or not 0 <= self.dialogue_fraction <= 1 or not 0 <= self.label_list_share <= 1:
      raise ConfigError(f"TaskMix needs tasks_per_record > 0 and dialogue_fraction, label_list_share in [0, 1], "
                        f"got {self.tasks_per_record}, {self.dialogue_fraction}, {self.label_list_share}")
    for source, cells in self.weights.items():
      unknown = [cell for cell in cells if cell not in _GENERATORS]
      if unknown or any(w < 0 for w in cells.values()):
        raise ConfigError(f"TaskMix weights for {source!r}: unknown cells {unknown} or negative weights; cells are "
                          f"{sorted(_GENERATORS)}")


def instruction_tasks(record: EcgRecord, measurements: Measurements | None, *, rng: np.random.Generator,
                      mix: TaskMix = TaskMix()) -> list[Task]:
  """ECGInstruct-style tasks about one record, deterministic in `rng`'s state.

  Args:
    record: a synthetic, PTB-XL, MIMIC-IV-ECG or CODE-15% record (as pulse_jax.ecg.synth and readers make them).
    measurements: pulse_jax.ecg.measure.measure(record); None when measuring failed (no feature questions then).
    rng: the source of every choice.
    mix: how many tasks, and of which (category, type) cells.

  Returns:
    Tasks with ids "<source>-<record id>-<n>-<category>-<type>"; may be empty when the record supports none of
    the drawn cells.

  Raises:
    ConfigError: a source that `mix` has no weights for.
  """
  source = record.provenance.source
  weights = mix.weights.get(source)
  if not weights:
    raise ConfigError(f"record {record.record_id}: no instruction task mix for source {source!r}; mixes exist for "
                      f"{', '.join(sorted(mix.weights))}")
  facts = _facts(record, measurements)
  count = int(mix.tasks_per_record) + int(rng.random() < mix.tasks_per_record % 1)
  cells = [cell for cell, w in weights.items() if w > 0]
  items = []
  if any(t == "open-ended" for _, t in cells) and rng.random() < mix.dialogue_fraction:
    items += [d for d in (_dialogue(facts, rng),) if d is not None]
  p = np.array([weights[cell] for cell in cells], float)
  for index in rng.choice(len(cells), size=len(cells), replace=False, p=p / p.sum()):
    if len(items) >= count:
      break
    lists, others = _shuffled(rng, _LABEL_LISTS.get(cells[index], ())), _shuffled(rng, _GENERATORS[cells[index]])
    for generate in lists + others if rng.random() < mix.label_list_share else others + lists:
      item = generate(facts, rng)
      if item is not None:
        items.append(item)
        break
  made = []
  for n, item in enumerate(items):
    if item.styled:
      question, answer = item.turns[0]
      item = dataclasses.replace(item, turns=((_styled(rng, question), answer),) + item.turns[1:])
    made.append(_make_task(f"{source}-{record.record_id}-{n}-{item.category}-{item.task_type}", item, record))
  return made


# ---------------------------------------------------------------------------------------------------------------
# Benchmark items.


def _check_source(record: EcgRecord, benchmark: str, sources: Sequence[str]) -> None:
  source = record.provenance.source
  if source not in (*sources, "synthetic"):
    raise ConfigError(f"record {record.record_id}: {benchmark} is built from {' or '.join(sources)} or synthetic "
                      f"records, not {source!r}")


def _mcq_item(record: EcgRecord, facts: _Facts, rng: np.random.Generator) -> _Item | None:
  """Eight options: one true diagnosis and seven Challenge classes that the record does not show."""
  if record.provenance.source == "synthetic":
    labels = tuple(dict.fromkeys(p.finding.snomed[0] for p in facts.present if p.finding.snomed))
  else:
    labels = tuple(code for code in record.labels if code in _SNOMED_CODES)
  if not labels:
    return None
  true = _pick(rng, [code for code in labels if code != "NORM"] or labels)
  # A wrong option is a class the record is not labelled with and that nothing present or measured hints at.
  wrong = [code for code in _SNOMED_CODES if code not in labels
           and not (code in _FINDING_BY_SNOMED and facts.hinted(_FINDING_BY_SNOMED[code]))]
  codes = _shuffled(rng, [true] + _sample(rng, wrong, len(_MCQ_LETTERS) - 1))
  options = "\n".join(f"{letter}. {snomed.full_name(code)}" for letter, code in zip(_MCQ_LETTERS, codes))
  question = (f"Which of the following is the most likely diagnosis for this ECG image?\n{options}\n"
              "Answer with the option's letter directly.")
  finding = _FINDING_BY_SNOMED.get(true)
  return _Item(finding.category if finding else "morphology", "multiple-choice", "Abnormality Detection",
               ((question, _MCQ_LETTERS[codes.index(true)]),), labels=(true,))


def benchmark_tasks(record: EcgRecord, measurements: Measurements | None, *, benchmark: str,
                    rng: np.random.Generator) -> list[Task]:
  """The ECGBench item of `benchmark` for one record: [] when the record has no gold answer in that set.

  Args:
    record: a record of the set's source (ptb-test*: ptbxl; code15-test: code15; cpsc-test: cpsc;
      csn-test-no-cot: csn; g12-test-no-cot: g12ec) or a synthetic one (mapped through FINDINGS).
    measurements: the record's measurements; multiple-choice items never offer a class they suggest as wrong.
    benchmark: one of BENCHMARKS.
    rng: draws the true diagnosis and the wrong options of the multiple-choice sets.

  Returns:
    At most one Task, id "<benchmark>-<record id>", whose gpt turn is the gold answer: for ptb-test, code15-test
    and cpsc-test the "CODE(name); ..." list (CODE-15%: "NORM" or "ABNORMAL" alone when none of its codes
    applies) with labels = the codes; for ptb-test-report the report's statements as sentences; for the
    multiple-choice sets the letter, with labels = (true class,). Records without a diagnostic label in the set
    (e.g. a PTB-XL record with no superclass) give [].

  Raises:
    ConfigError: an unknown benchmark, or a record from a source the set is not built from.
  """
  if benchmark not in BENCHMARKS:
    raise ConfigError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
  facts = _facts(record, measurements)
  item = None
  if benchmark == "ptb-test-report":
    _check_source(record, benchmark, ("ptbxl",))
    if facts.statements:
      item = _Item("report", "report", "Report Generation", ((REPORT_QUESTION, _plain_report(facts)),))
  elif benchmark in LABEL_SPACES:
    space = LABEL_SPACES[benchmark]
    _check_source(record, benchmark, space.sources)
    codes = facts.space_labels[benchmark]
    if codes is not None:
      question = _label_list_question(space, space.question)
      item = _Item(space.category, "close-ended", "Abnormality Detection",
                   ((question, _label_list_answer(space, codes)),), labels=codes)
  else:
    _check_source(record, benchmark, MCQ_SPACES[benchmark])
    item = _mcq_item(record, facts, rng)
  return [] if item is None else [_make_task(f"{benchmark}-{record.record_id}", item, record)]
