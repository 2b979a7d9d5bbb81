"""Instruction and benchmark tasks: well formed, deterministic, true to labels and measurements, scored perfectly."""

import collections
import dataclasses
import json
import re

import numpy as np
import pytest

from pulse_jax import metrics
from pulse_jax.data import tasks
from pulse_jax.data.conversation import render_prompt
from pulse_jax.ecg import corpus, measure, readers, snomed, synth
from pulse_jax.ecg.readers import CODE15_LABELS, PTBXL_SUPERCLASSES
from pulse_jax.ecg.record import Provenance
from pulse_jax.errors import ConfigError, DataError

FS = 100.0
SR, SB, ST, AF = synth.RHYTHMS
# Per source: (spec, labels, report, extra) of small records written the way each reader yields them.
SOURCE_RECORDS = {
    "ptbxl": [
        (synth.EcgSpec(SR), ("NORM",), "sinusrhythmus normales ekg", {"scp_codes": {"NORM": 100.0, "SR": 0.0}}),
        (synth.EcgSpec(SR, ("myocardial_infarction", "st_depression"), "inferior"), ("MI", "STTC"),
         "sinusrhythmus inferiorer infarkt st-senkung", {"scp_codes": {"IMI": 100.0, "ISCIN": 50.0, "SR": 0.0}}),
        (synth.EcgSpec(AF, ("right_bundle_branch_block",)), ("CD",), "vorhofflimmern rechtsschenkelblock",
         {"scp_codes": {"CRBBB": 100.0, "AFIB": 0.0}}),
        (synth.EcgSpec(SB, ("left_ventricular_hypertrophy",)), ("HYP",), "sinusbradykardie linkshypertrophie",
         {"scp_codes": {"LVH": 100.0, "SBRAD": 0.0}}),
    ],
    "mimic": [
        (synth.EcgSpec(SR), (), "Sinus rhythm Normal ECG", {}),
        (synth.EcgSpec(SR, ("left_ventricular_hypertrophy",)), (),
         "Sinus rhythm Left ventricular hypertrophy Abnormal ECG", {}),
        (synth.EcgSpec(AF), (), "Atrial fibrillation Abnormal ECG", {}),
        (synth.EcgSpec(ST, ("premature_ventricular_complexes",)), (), "Sinus tachycardia with PVCs Abnormal ECG", {}),
        (synth.EcgSpec(SR, ("myocardial_infarction",), "anterior"), (),
         "Sinus rhythm Anterior infarct - age undetermined Abnormal ECG", {}),
        (synth.EcgSpec(SB), (), "Sinus bradycardia Possible Left atrial enlargement Borderline ECG", {}),
    ],
    "code15": [
        (synth.EcgSpec(SR), (), None, {"normal_ecg": True}),
        (synth.EcgSpec(SR, ("right_bundle_branch_block",)), ("RBBB",), None, {"normal_ecg": False}),
        (synth.EcgSpec(SB, ("first_degree_av_block",)), ("1dAVb", "SB"), None, {"normal_ecg": False}),
        (synth.EcgSpec(SR, ("left_ventricular_hypertrophy",)), (), None, {"normal_ecg": False}),
    ],
    "cpsc": [
        (synth.EcgSpec(AF, ("right_bundle_branch_block",)), ("AF", "RBBB"), None, {}),
        (synth.EcgSpec(SR), ("NORM",), None, {}),
        (synth.EcgSpec(SR, ("premature_ventricular_complexes",)), ("PVC",), None, {}),
    ],
    "csn": [
        (synth.EcgSpec(SB), ("SB",), None, {}),
        (synth.EcgSpec(SR, ("left_bundle_branch_block",)), ("NORM", "LBBB"), None, {}),
    ],
    "g12ec": [
        (synth.EcgSpec(AF), ("AF",), None, {}),
        (synth.EcgSpec(SR, ("st_elevation",), "lateral"), ("NORM", "STE"), None, {}),
    ],
}
BENCHMARK_SOURCE = {"ptb-test": "ptbxl", "ptb-test-report": "ptbxl", "code15-test": "code15", "cpsc-test": "cpsc",
                    "csn-test-no-cot": "csn", "g12-test-no-cot": "g12ec"}
BLANK = re.compile(r"_{3,}")


@pytest.fixture(scope="module")
def records():
  """{source: [(record, measurements)]}: the source records above and 24 synthetic ones drawn by sample_spec."""
  made = collections.defaultdict(list)
  for source, rows in SOURCE_RECORDS.items():
    for i, (spec, labels, report, extra) in enumerate(rows):
      record = synth.synthesize(spec, fs=FS, seed=(7, i), noise=False)
      record = dataclasses.replace(record, labels=labels, report=report, extra=extra,
                                   provenance=Provenance(source, f"{source}{i}", ""))
      made[source].append((record, measure.measure(record)))
  rng = np.random.default_rng(0)
  for i in range(24):
    record = synth.synthesize(synth.sample_spec(rng), fs=FS, seed=i)
    made["synthetic"].append((record, measure.measure(record)))
  return made


def _instruction(records, source, mix=tasks.TaskMix(), seeds=(0,)):
  return [(record, m, task) for seed in seeds for i, (record, m) in enumerate(records[source])
          for task in tasks.instruction_tasks(record, m, rng=np.random.default_rng((seed, i)), mix=mix)]


def _only(*cells, label_list_share=0.0):
  """A mix of the given (category, type) cells for every source, one task per cell and record."""
  return tasks.TaskMix(tasks_per_record=len(cells), dialogue_fraction=0.0, label_list_share=label_list_share,
                       weights={s: {c: 1.0 for c in cells} for s in ("ptbxl", "mimic", "code15", "synthetic")})


def _options(question: str) -> dict[str, str]:
  """Letter -> option text of a multiple-choice question, in either layout ("A. x" lines or "Options: A) x; ...")."""
  lines = dict(re.findall(r"^([A-H])\. (.+)$", question, flags=re.MULTILINE))
  if lines:
    return lines
  listed = question.split("Options: ", 1)[1]
  return dict(re.findall(r"([A-H])\) (.+?)(?=; [A-H]\) |\. |$)", listed))


def _chosen(answer: str) -> str:
  match = re.search(r"(?:^|answer is |we select )([A-H])(?:[.)] |$)", answer)
  assert match, answer
  return match.group(1)


def _fill(question: str, answer: str) -> str:
  """The text an answer puts into the question's blank (the answer must be the completed sentence)."""
  line = next(line for line in question.splitlines() if BLANK.search(line))
  prefix, suffix = BLANK.split(line)
  assert answer.startswith(prefix) and answer.endswith(suffix) and len(answer) > len(prefix) + len(suffix), \
      (line, answer)
  return answer[len(prefix):len(answer) - len(suffix)]


def _yes(answer: str) -> bool:
  word = re.match(r"(Yes|No)\b", answer)
  assert word, answer
  return word.group(1) == "Yes"


def _named_finding(question: str) -> tasks.Finding:
  """The finding a yes/no question asks about: the longest finding name in it."""
  named = [f for f in tasks.FINDINGS if f.name in question]
  assert named, question
  return max(named, key=lambda f: len(f.name))


@pytest.mark.parametrize("source", ["ptbxl", "mimic", "code15", "synthetic"])
def test_tasks_are_well_formed_with_unique_ids(records, source):
  generated = _instruction(records, source, tasks.TaskMix(tasks_per_record=20, dialogue_fraction=0.5), seeds=(0, 1))
  assert generated
  for record, _, task in generated:
    turns = task.conversations
    assert 2 <= len(turns) <= 8 and len(turns) % 2 == 0  # a question and its answer, or a 2-4 turn dialogue
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    assert turns[0]["value"].startswith("<image>\n")
    assert sum(t["value"].count("<image>") for t in turns) == 1
    assert all(t["value"].strip() and not BLANK.search(t["value"]) for t in turns[1::2])
    assert task.metadata["source"] == source and task.record_id == record.record_id
    assert task.metadata["task_type"] in tasks.TASK_TYPES and task.metadata["category"] in tasks.CATEGORIES
    assert task.metadata["subtask"]
    render_prompt(task.conversations, record_id=task.id)  # the llava_v1 template accepts it
  first_seed = _instruction(records, source, tasks.TaskMix(tasks_per_record=20, dialogue_fraction=0.5))
  assert len({task.id for _, _, task in first_seed}) == len(first_seed)
  assert any(len(task.conversations) > 2 for _, _, task in generated) == (source != "code15")


def test_task_rejects_malformed_conversations():
  good = [{"from": "human", "value": "<image>\nWhat is the rhythm?"}, {"from": "gpt", "value": "Sinus rhythm."}]
  meta = {"source": "synthetic", "task_type": "open-ended", "category": "rhythm", "subtask": "Rhythm Analysis"}
  tasks.Task("ok", good, meta, (), "r")
  bad_conversations = [
      good[:1],  # no answer
      [good[1], good[0]],  # gpt first
      [{"from": "human", "value": "What is the rhythm?"}, good[1]],  # no image
      [{"from": "human", "value": "What <image> is the rhythm?"}, good[1]],  # image not at the front
      good + [{"from": "human", "value": "<image>\nAnd now?"}, good[1]],  # a second image
      [good[0], {"from": "gpt", "value": "  "}],  # empty answer
  ]
  for conversations in bad_conversations:
    with pytest.raises(DataError):
      tasks.Task("bad", conversations, meta, (), "r")
  with pytest.raises(DataError):
    tasks.Task("bad", good, {**meta, "task_type": "essay"}, (), "r")


def test_same_seed_gives_the_same_tasks(records):
  first = [dataclasses.asdict(t) for _, _, t in _instruction(records, "synthetic", seeds=(3,))]
  again = [dataclasses.asdict(t) for _, _, t in _instruction(records, "synthetic", seeds=(3,))]
  other = [dataclasses.asdict(t) for _, _, t in _instruction(records, "synthetic", seeds=(4,))]
  assert first == again and first != other
  for benchmark in tasks.BENCHMARKS:
    record, m = records["synthetic"][1]
    runs = [tasks.benchmark_tasks(record, m, benchmark=benchmark, rng=np.random.default_rng(5)) for _ in range(2)]
    assert runs[0] == runs[1]


def test_mix_covers_the_sources_types_and_averages_under_two_per_record(records):
  full = tasks.TaskMix(tasks_per_record=20, dialogue_fraction=0.0)
  for source in ("ptbxl", "mimic", "synthetic"):
    generated = [t for _, _, t in _instruction(records, source, full)]
    assert {t.metadata["task_type"] for t in generated} == set(tasks.TASK_TYPES), source
    assert {t.metadata["category"] for t in generated} == set(tasks.CATEGORIES), source
  code15 = [t for _, _, t in _instruction(records, "code15", full)]
  assert {t.metadata["task_type"] for t in code15} == {"close-ended"}
  assert {t.metadata["category"] for t in code15} == {"feature", "rhythm", "morphology"}
  per_record = len(_instruction(records, "synthetic", seeds=(0, 1, 2))) / (3 * len(records["synthetic"]))
  assert 1.5 <= per_record <= 2.0
  with pytest.raises(ConfigError):
    tasks.TaskMix(weights={"synthetic": {("feature", "essay"): 1.0}})


def test_feature_answers_match_the_measurements(records):
  cells = [("feature", t) for t in tasks.TASK_TYPES[:4]]
  checked = collections.Counter()
  for source in ("synthetic", "mimic", "code15"):
    for _, m, task in _instruction(records, source, _only(*cells), seeds=(0, 1, 2)):
      question, answer = task.conversations[0]["value"], task.conversations[1]["value"]
      rate = str(round(m.heart_rate_bpm))
      kind = task.metadata["task_type"]
      if kind == "fill-in-the-blank":
        fill = _fill(question, answer)
        if "heart rate" in question:
          assert fill == rate
          checked["rate blank"] += 1
        else:
          assert fill in {str(round(v)) for v in (m.qrs_ms, m.pr_ms, m.qtc_ms) if v is not None} | {
              "a normal axis", "left axis deviation", "right axis deviation", "extreme axis deviation"}
      elif kind == "multiple-choice" and "heart rate" in question:
        assert _options(question)[_chosen(answer)] == f"{rate} bpm"
        checked["rate choice"] += 1
      elif kind == "close-ended" and "heart rate" in question:
        assert _yes(answer) == (m.heart_rate_bpm > 100 if "above 100" in question else m.heart_rate_bpm < 60)
        checked["rate yes/no"] += 1
      elif kind == "close-ended" and "QRS complex wide" in question:
        assert _yes(answer) == (m.qrs_ms >= 120)
        checked["qrs yes/no"] += 1
      elif kind == "open-ended" and "JSON" in question:
        assert json.loads(answer)["heart_rate_bpm"] == round(m.heart_rate_bpm)
        checked["json"] += 1
      elif "Heart rate:" in answer:
        assert f"Heart rate: about {rate} bpm." in answer
        checked["feature list"] += 1
  assert set(checked) == {"rate blank", "rate choice", "rate yes/no", "qrs yes/no", "json", "feature list"}, checked


def test_yes_no_and_choices_agree_with_synthetic_labels(records):
  cells = [(c, t) for c in ("rhythm", "morphology") for t in ("close-ended", "multiple-choice", "fill-in-the-blank")]
  checked = collections.Counter()
  for record, _, task in _instruction(records, "synthetic", _only(*cells), seeds=(0, 1, 2)):
    labels = set(record.labels)
    rhythm = tasks.FINDING_BY_KEY[record.labels[0]].name
    question, answer = task.conversations[0]["value"], task.conversations[1]["value"]
    kind = (task.metadata["category"], task.metadata["task_type"])
    if kind[1] == "close-ended":
      assert _yes(answer) == (_named_finding(question).key in labels), (question, answer, labels)
      checked["yes" if _yes(answer) else "no"] += 1
    elif kind == ("rhythm", "multiple-choice"):
      options = _options(question)
      assert options[_chosen(answer)] == rhythm and list(options.values()).count(rhythm) == 1
      checked["rhythm choice"] += 1
    elif kind == ("morphology", "multiple-choice"):
      chosen = _options(question)[_chosen(answer)]
      present = {tasks.FINDING_BY_KEY[k].name for k in labels} | {
          f"{w.capitalize()} wall" for w in [record.extra["spec"]["territory"]]}
      assert chosen in present or (chosen == "no morphological abnormality" and labels == {SR}), (chosen, labels)
      checked["morphology choice"] += 1
    elif kind == ("rhythm", "fill-in-the-blank"):
      assert _fill(question, answer) in {rhythm} | {tasks.FINDING_BY_KEY[k].name for k in labels}
      checked["rhythm blank"] += 1
    else:
      fill = _fill(question, answer)
      assert fill in {record.extra["spec"]["territory"], "isoelectric, neither elevated nor depressed"} | {
          tasks.FINDING_BY_KEY[k].name for k in labels}
      checked["morphology blank"] += 1
  assert set(checked) == {"yes", "no", "rhythm choice", "morphology choice", "rhythm blank", "morphology blank"}


def test_label_list_answers_are_parsed_back_to_their_labels(records):
  cells = [("rhythm", "close-ended"), ("morphology", "close-ended")]
  seen = collections.Counter()
  for source in ("synthetic", "ptbxl", "code15"):
    for record, _, task in _instruction(records, source, _only(*cells, label_list_share=1.0), seeds=(0, 1)):
      if not task.labels:
        continue
      question, answer = task.conversations[0]["value"], task.conversations[1]["value"]
      bench = next(b for b in metrics.BENCH_SETS.values() if b.labels and set(b.labels) & set(
          re.findall(r"([\w-]+)\(", question)) == set(b.labels))
      for strict in (False, True):
        assert metrics.gold_labels(answer, bench, strict=strict) == list(task.labels)
      seen[bench.name] += 1
      if source == "code15":  # the paper's template and answer format
        assert "1dAVb(1st degree av block), RBBB(right bundle branch block), LBBB(left bundle branch block), " \
               "SB(sinus bradycardia), ST(sinus tachycardia), AF(atrial fibrillation)" in question
        assert answer == {"code150": "NORM", "code151": "RBBB(right bundle branch block)",
                          "code152": "1dAVb(1st degree av block); SB(sinus bradycardia)",
                          "code153": "ABNORMAL"}[record.record_id]
  assert set(seen) == {"ptb-test", "code15-test", "cpsc-test"}


def test_reports_are_english_full_sentences(records):
  mix = _only(("report", "report"))
  ptbxl = {r.record_id: t.conversations[1]["value"] for r, _, t in _instruction(records, "ptbxl", mix)}
  assert "The tracing shows inferior myocardial infarction." in ptbxl["ptbxl1"]
  assert "inferior leads (II, III, aVF)" in ptbxl["ptbxl1"] and "infarkt" not in ptbxl["ptbxl1"]
  mimic = {r.record_id: t.conversations[1]["value"] for r, _, t in _instruction(records, "mimic", mix)}
  assert mimic["mimic1"].startswith("The tracing shows sinus rhythm.")
  assert "The tracing shows left ventricular hypertrophy." in mimic["mimic1"]
  assert "Overall, this is an abnormal ECG." in mimic["mimic1"] and len(re.findall(r"\.(?: |$)", mimic["mimic1"])) >= 4
  assert "anterior leads (V1, V2, V3, V4)" in mimic["mimic4"]
  assert "The tracing shows possible left atrial enlargement." in mimic["mimic5"]
  assert mimic["mimic5"].endswith("Overall, this is a borderline ECG.")
  for record, _, task in _instruction(records, "synthetic", mix):
    assert all(tasks.FINDING_BY_KEY[key].explanation in task.conversations[1]["value"] for key in record.labels)
  record, m = records["ptbxl"][1]
  [gold] = tasks.benchmark_tasks(record, m, benchmark="ptb-test-report", rng=np.random.default_rng(0))
  assert gold.conversations[0]["value"] == "<image>\n" + tasks.REPORT_QUESTION
  assert gold.conversations[1]["value"] == ("Inferior myocardial infarction. Ischemic changes in the inferior leads. "
                                            "Sinus rhythm.")


@pytest.mark.parametrize("benchmark", tasks.BENCHMARKS)
def test_gold_answers_score_perfectly_with_the_papers_scorers(records, benchmark):
  pairs = records[BENCHMARK_SOURCE[benchmark]] + records["synthetic"]
  items = [task for i, (record, m) in enumerate(pairs)
           for task in tasks.benchmark_tasks(record, m, benchmark=benchmark, rng=np.random.default_rng(i))]
  assert len(items) >= 15
  assert len({t.id for t in items}) == len(items)
  golds = [t.conversations[1]["value"] for t in items]
  prompts = [t.conversations[0]["value"] for t in items]
  bench = metrics.BENCH_SETS[benchmark]
  for strict in (False, True):
    scores = metrics.score_set(benchmark, golds, golds, prompts, strict=strict)
    if bench.kind == "multilabel":
      assert scores["f1"] == 100.0 and scores["hamming_loss"] == 0.0
      assert [metrics.gold_labels(g, bench, strict=strict) for g in golds] == [list(t.labels) for t in items]
    elif bench.kind == "mcq":
      assert scores["accuracy"] == 100.0 and scores["n_unparsed"] == 0
    else:
      assert scores["proxy_f1"] == 100.0
  if bench.kind == "mcq":
    by_id = {r.record_id: r for r, _ in pairs}
    for task, gold, prompt in zip(items, golds, prompts):
      options = _options(prompt)
      assert len(options) == 8 and len(set(options.values())) == 8 and gold in options
      assert options[gold] == snomed.full_name(task.labels[0])
      labels = by_id[task.record_id].labels
      stated = {tasks.FINDING_BY_KEY[k].snomed[0] if k in tasks.FINDING_BY_KEY else k for k in labels}
      wrong = {text for letter, text in options.items() if letter != gold}
      assert not {snomed.full_name(code) for code in stated} & wrong


def test_wrong_options_avoid_what_the_tracing_suggests(records):
  """An LBBB record never gets LVH or ST deviation as wrong options; its wide QRS keeps out other blocks."""
  record, m = records["csn"][1]
  hinted = {"left ventricular hypertrophy", "left ventricular high voltage", "ST elevation", "ST depression",
            "bundle branch block", "nonspecific intraventricular conduction disorder"}
  for seed in range(30):
    [task] = tasks.benchmark_tasks(record, m, benchmark="csn-test-no-cot", rng=np.random.default_rng(seed))
    options = _options(task.conversations[0]["value"])
    assert options[task.conversations[1]["value"]] == "left bundle branch block"
    assert not hinted & set(options.values())


def test_every_taxonomy_maps_to_findings():
  assert set(synth.RHYTHMS + synth.FINDINGS) <= set(tasks.FINDING_BY_KEY)
  assert {f.code15 for f in tasks.FINDINGS} >= set(CODE15_LABELS)
  assert {c for f in tasks.FINDINGS for c in f.snomed} >= set(snomed.CPSC_LABELS)
  assert {c for f in tasks.FINDINGS for c in f.snomed} <= {c.abbreviation for c in snomed.SNOMED_CLASSES}
  assert len(tasks.SCP_STATEMENTS) == 71
  assert {key for _, key, _ in tasks.SCP_STATEMENTS.values() if key} <= set(tasks.FINDING_BY_KEY)
  assert {f.ptbxl_superclass for f in tasks.FINDINGS} - {None} == set(PTBXL_SUPERCLASSES) - {"NORM"}


def test_unsupported_sources_and_sets_raise(records):
  record, m = records["code15"][1]
  with pytest.raises(ConfigError, match="ptb-test"):
    tasks.benchmark_tasks(record, m, benchmark="ptb-test", rng=np.random.default_rng(0))
  with pytest.raises(ConfigError, match="unknown benchmark"):
    tasks.benchmark_tasks(record, m, benchmark="mmmu-ecg", rng=np.random.default_rng(0))
  cpsc, m = records["cpsc"][0]
  with pytest.raises(ConfigError, match="no instruction task mix"):
    tasks.instruction_tasks(cpsc, m, rng=np.random.default_rng(0))
  unknown = dataclasses.replace(cpsc, provenance=Provenance("wfdb", "x", ""))
  with pytest.raises(ConfigError, match="no task taxonomy"):
    tasks.benchmark_tasks(unknown, m, benchmark="cpsc-test", rng=np.random.default_rng(0))


def test_a_finding_the_measurements_suggest_is_never_called_absent():
  """A report that misses a long PR (machine statement 'Sinus rhythm' on a first-degree AV block) still never
  yields 'no first degree AV block': the measured PR keeps the question from being asked with that answer."""
  record = synth.synthesize(synth.EcgSpec(SR, ("first_degree_av_block",)), fs=FS, seed=11, noise=False)
  record = dataclasses.replace(record, labels=(), report="Sinus rhythm", provenance=Provenance("mimic", "m", ""))
  m = measure.measure(record)
  assert m.pr_ms > 200
  asked = set()
  for seed in range(40):
    for task in tasks.instruction_tasks(record, m, rng=np.random.default_rng(seed),
                                        mix=_only(("rhythm", "close-ended"), ("rhythm", "multiple-choice"))):
      question = task.conversations[0]["value"]
      asked |= {f.key for f in tasks.FINDINGS if f.name in question}
  assert "first_degree_av_block" not in asked and "atrial_fibrillation" in asked


def test_synthetic_corpus_read_back_gets_the_same_golds(tmp_path):
  """A synthetic record and the same record written in a real layout and read back get the same gold answers."""
  read = {"ptbxl": readers.read_ptbxl, "mimic": readers.read_mimic, "code15": readers.read_code15,
          "challenge": lambda root: readers.read_challenge(root, source="cpsc")}
  sets = {"ptbxl": "ptb-test", "code15": "code15-test", "challenge": "cpsc-test"}
  for layout, reader in read.items():
    written = {r.record_id: r for r in corpus.write_corpus(layout, tmp_path / layout, 10, seed=1)}
    for record in reader(tmp_path / layout):
      original = written[record.record_id]
      if layout in sets:
        golds = [tasks.benchmark_tasks(r, None, benchmark=sets[layout], rng=np.random.default_rng(0))
                 for r in (original, record)]
        assert [t.conversations[1]["value"] for t in golds[0]] == [t.conversations[1]["value"] for t in golds[1]]
      else:  # MIMIC: the machine statements, parsed back, answer every yes/no question as the labels do
        for task in tasks.instruction_tasks(record, None, rng=np.random.default_rng(0),
                                            mix=_only(("rhythm", "close-ended"), ("morphology", "close-ended"))):
          question, answer = task.conversations[0]["value"], task.conversations[1]["value"]
          assert _yes(answer) == (_named_finding(question).key in original.labels), (record.report, question)
