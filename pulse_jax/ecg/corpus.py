"""Synthetic corpora in the real on-disk layouts of PTB-XL, MIMIC-IV-ECG, CODE-15% and the Challenge (CPSC 2018).

`write_corpus` draws specs (pulse_jax.ecg.synth.sample_spec, restricted to what the collection's taxonomy can
say), synthesizes the records and writes them exactly where and how the real collection keeps them, with
labels, reports and machine measurements derived from the same specs and ground truth as the signals. The
readers in pulse_jax.ecg.readers therefore read a miniature corpus the same way as the real one, which lets
the demo and the tests run the whole pipeline without downloading anything.

Some patients get several records (PTB-XL folds and MIMIC/CODE-15% patient ids stay consistent across them).
`pulse-jax synth --layout {ptbxl,mimic,code15,challenge} --n N --out DIR [--seed S]` is the command line.
"""

import argparse
import dataclasses
import datetime
import functools
import os
import pathlib
import sys
from collections.abc import Callable, Iterable, Sequence

import h5py
import numpy as np
import pandas as pd
import scipy.io
from scipy import signal as sps
from tqdm import tqdm

from pulse_jax.ecg import findings, snomed
from pulse_jax.ecg.leads import STANDARD_LEADS, lead_index
from pulse_jax.ecg.readers import CODE15_LABELS
from pulse_jax.ecg.record import EcgRecord
from pulse_jax.ecg.synth import (FINDINGS, RHYTHMS, TERRITORIAL_FINDINGS, EcgSpec, sample_spec, statements,
                                 synthesize)
from pulse_jax.errors import ConfigError

PathLike = str | os.PathLike[str]
LAYOUTS: tuple[str, ...] = ("ptbxl", "mimic", "code15", "challenge")

# Share of records that belong to a patient seen before.
_REPEAT_PATIENT = 0.25

# --- Taxonomies -----------------------------------------------------------------------------------------------

# The rows of PTB-XL's scp_statements.csv (v1.0.3, CC BY 4.0) for every statement ptbxl_scp_codes writes.
_SCP_STATEMENTS_CSV = """\
,description,diagnostic,form,rhythm,diagnostic_class,diagnostic_subclass,Statement Category,SCP-ECG Statement Description,AHA code,aECG REFID,CDISC Code,DICOM Code
NORM,normal ECG,1.0,,,NORM,NORM,Normal/abnormal,normal ECG,1,,,F-000B7
IMI,inferior myocardial infarction,1.0,,,MI,IMI,Myocardial Infarction,inferior myocardial infarction,161,,,
AMI,anterior myocardial infarction,1.0,,,MI,AMI,Myocardial Infarction,anterior myocardial infarction,160,,,
LMI,lateral myocardial infarction,1.0,,,MI,LMI,Myocardial Infarction,lateral myocardial infarction,163,,,
ISCIN,ischemic in inferior leads,1.0,,,STTC,ISCI,ischemic ST-T changes,in inferior leads,,,,
ISCAN,ischemic in anterior leads,1.0,,,STTC,ISCA,ischemic ST-T changes,in anterior leads,,,,
ISCLA,ischemic in lateral leads,1.0,,,STTC,ISCA,ischemic ST-T changes,in lateral leads,,,,
LVH,left ventricular hypertrophy,1.0,,,HYP,LVH,Ventricular Hypertrophy,left ventricular hypertrophy,142,,C71076,
1AVB,first degree AV block,1.0,,,CD,_AVB,"Sinus node dysfunction, atrial and AV-conduction defects",first degree AV block,,MDC_ECG_RHY_AV_HEART_BLK_DEG_1,C111088,
CRBBB,complete right bundle branch block,1.0,,,CD,CRBBB,Intraventricular and intra-atrial Conduction disturbances,(complete) right bundle branch block,106,MDC_ECG_BEAT_RBB_BLK_COMP,C62270,D3-33110
CLBBB,complete left bundle branch block,1.0,,,CD,CLBBB,Intraventricular and intra-atrial Conduction disturbances,(complete) left bundle branch block,104,MDC_ECG_BEAT_LBB_BLK_COMP,C62269,D3-33120 or 122752
PVC,ventricular premature complex,,1.0,,,,Statements related to ectopic rhythm abnormalities,ventricular premature complex (beat),60,MDC_ECG_BEAT_V_P_C,,
PAC,atrial premature complex,,1.0,,,,Statements related to ectopic rhythm abnormalities,atrial premature complex (beat),30,MDC_ECG_BEAT_ATR_P_C,,
STD_,non-specific ST depression,,1.0,,,,Basic roots for coding ST-T changes and abnormalities,non-specific ST depression,502,,,F-38278
STE_,non-specific ST elevation,,1.0,,,,Basic roots for coding ST-T changes and abnormalities,non-specific ST elevation,501,MDC_ECG_RHY_STELVATION,,F-38277
SR,sinus rhythm,,,1.0,,,Statements related to impulse formation (abnormalities),sinus rhythm,20,MDC_ECG_RHY_SINUS_RHY,,
AFIB,atrial fibrillation,,,1.0,,,Statements related to impulse formation (abnormalities),atrial fibrillation,50,MDC_ECG_RHY_ATR_FIB,,D3-31520
STACH,sinus tachycardia,,,1.0,,,Statements related to impulse formation (abnormalities),sinus tachycardia,21,MDC_ECG_RHY_SINUS_TACHY,,
SBRAD,sinus bradycardia,,,1.0,,,Statements related to impulse formation (abnormalities),sinus bradycardia,22,MDC_ECG_RHY_SINUS_BRADY,,
"""
# Labels through pulse_jax.ecg.findings: a finding's CODE-15% exams.csv column, and its CPSC 2018 class (the
# first of its Challenge classes, when that is one of CPSC's; no class -> NORM).
_CODE15_LABEL = {f.key: f.code15 for f in findings.FINDINGS if f.code15}
_CPSC_LABEL = {f.key: f.snomed[0] for f in findings.FINDINGS
               if f.snomed and f.snomed[0] in snomed.CPSC_LABELS and f.snomed[0] != "NORM"}
_SNOMED_CODE = {c.abbreviation: c.codes[0] for c in snomed.SNOMED_CLASSES}

# What each collection's labels can express; sample_spec draws only that, so no record carries a finding its
# labels would leave unsaid (CODE-15% has no ST classes, CPSC no rate classes, no infarct and no LVH).
_TAXONOMY: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ptbxl": (RHYTHMS, FINDINGS),
    "mimic": (RHYTHMS, FINDINGS),
    "code15": (RHYTHMS, tuple(f for f in FINDINGS if f in _CODE15_LABEL)),
    "challenge": (("sinus_rhythm", "atrial_fibrillation"), tuple(f for f in FINDINGS if f in _CPSC_LABEL)),
}


def ptbxl_scp_codes(spec: EcgSpec) -> dict[str, float]:
  """PTB-XL scp_codes of a spec: diagnostic statements at likelihood 100, form and rhythm statements at 0.

  Each finding takes its statement (pulse_jax.ecg.findings.scp_code). Old Q-wave infarcts and acute ST elevation
  both take the infarct statement of their wall (PTB-XL's MI class), ST depression the ischaemia statement of its
  wall (STTC); ST elevation and depression add their form statements. NORM is added when no diagnostic
  statement applies to a sinus rhythm (a sinus rate outside 60-100 bpm and ectopic beats are rhythm and form
  statements, which PTB-XL combines with NORM); AF alone gets no diagnostic statement, as in PTB-XL, so its
  superclass list is empty.
  """
  diagnostic: list[str] = []
  form: list[str] = []
  if spec.has("myocardial_infarction") or spec.has("st_elevation"):
    diagnostic.append(findings.scp_code("myocardial_infarction", spec.territory))
  if spec.has("st_depression"):
    diagnostic.append(findings.scp_code("myocardial_ischemia", spec.territory))
  for finding in spec.findings:
    if finding not in TERRITORIAL_FINDINGS:
      code = findings.scp_code(finding)
      (diagnostic if code in findings.SCP_DIAGNOSTIC else form).append(code)
  form += [findings.scp_code(finding) for finding in ("st_elevation", "st_depression") if spec.has(finding)]
  if not diagnostic and spec.rhythm != "atrial_fibrillation":
    diagnostic.append("NORM")
  codes = {code: 100.0 for code in diagnostic}
  codes.update({code: 0.0 for code in form + [findings.scp_code(spec.rhythm)]})
  return codes


def code15_labels(spec: EcgSpec) -> tuple[str, ...]:
  """The CODE-15% label columns set for a spec (rhythm classes included), in exams.csv column order."""
  present = {_CODE15_LABEL[key] for key in (spec.rhythm, *spec.findings) if key in _CODE15_LABEL}
  return tuple(label for label in CODE15_LABELS if label in present)


def cpsc_labels(spec: EcgSpec) -> tuple[str, ...]:
  """The CPSC 2018 classes of a spec, in snomed.CPSC_LABELS order; ('NORM',) when none applies."""
  present = {_CPSC_LABEL[key] for key in (spec.rhythm, *spec.findings) if key in _CPSC_LABEL}
  return tuple(label for label in snomed.CPSC_LABELS if label in present) or ("NORM",)


# --- Corpus -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Draw:
  """One record to write: its spec, the patient it belongs to and the synthesis seed."""
  spec: EcgSpec
  patient: int
  age: float
  sex: str
  first_of_patient: bool
  seed: tuple[int, int]


# Wraps a writer's loop over its records, e.g. in a progress bar.
_Track = Callable[[list[_Draw]], Iterable[_Draw]]


def _draws(layout: str, n: int, seed: int) -> list[_Draw]:
  """n specs from the layout's taxonomy and an assignment to patients (a quarter are repeat visits, a few
  months to years older)."""
  rng = np.random.default_rng([seed, LAYOUTS.index(layout)])
  rhythms, drawable = _TAXONOMY[layout]
  patients: list[tuple[float, str]] = []
  draws = []
  for i in range(n):
    spec = sample_spec(rng, rhythms=rhythms, findings=drawable)
    if patients and rng.random() < _REPEAT_PATIENT:
      patient = int(rng.integers(len(patients)))
      age, sex = patients[patient]
      age = min(age + float(rng.integers(0, 3)), 89.0)
      patients[patient] = (age, sex)
      first = False
    else:
      age, sex = float(np.clip(round(rng.normal(62, 16)), 18, 89)), ("M" if rng.random() < 0.52 else "F")
      patients.append((age, sex))
      patient, first = len(patients) - 1, True
    draws.append(_Draw(spec=spec, patient=patient, age=age, sex=sex, first_of_patient=first, seed=(seed, i)))
  return draws


def write_corpus(layout: str, out: PathLike, n: int, *, seed: int = 0, progress: bool = False) -> list[EcgRecord]:
  """Writes `n` synthetic records under `out` in `layout`'s real on-disk form.

  Args:
    layout: one of LAYOUTS.
    out: the collection's root folder (created; files of an earlier corpus there are overwritten).
    n: number of records.
    seed: the corpus seed; the same (layout, n, seed) writes the same files.
    progress: show a tqdm bar on stderr.

  Returns:
    The synthesized EcgRecords in writing order, with record_id set to the collection's id (PTB-XL ecg_id,
    MIMIC study_id, CODE-15% exam_id, CPSC record name); signals as synthesized, before the writers quantize
    them (PTB-XL 1 uV, MIMIC 5 uV, CPSC 1 uV; CODE-15% float32).
  """
  if layout not in LAYOUTS:
    raise ConfigError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
  if n < 1:
    raise ConfigError(f"a corpus needs at least 1 record, got n={n}")
  root = pathlib.Path(out)
  root.mkdir(parents=True, exist_ok=True)
  track = functools.partial(tqdm, desc=f"synth {layout}", unit="record", disable=not progress, file=sys.stderr)
  rng = np.random.default_rng([seed, len(LAYOUTS) + LAYOUTS.index(layout)])
  return _WRITERS[layout](root, _draws(layout, n, seed), rng, track)


def _record(draw: _Draw, record_id: str, *, fs: float = 500.0, seconds: float = 10.0) -> EcgRecord:
  """The draw's record, synthesized under the collection's id."""
  return synthesize(draw.spec, fs=fs, seconds=seconds, seed=draw.seed, age=draw.age, sex=draw.sex,
                    record_id=record_id)


def _write_wfdb(directory: pathlib.Path, name: str, signal: np.ndarray, fs: float, *, lead_names: Sequence[str],
                gain: float, start: datetime.datetime | None = None, comments: Sequence[str] = ()) -> None:
  """Writes float[12, T] mV (STANDARD_LEADS order) as the WFDB record directory/name.{hea,dat}.

  Format 16 (little-endian int16, frame-interleaved) at `gain` adu/mV with baseline 0, channels ordered and
  spelled as `lead_names`; the header is laid out as wfdb-python writes it (and PhysioNet distributes PTB-XL
  and MIMIC-IV-ECG), with an unsigned 16-bit checksum. wfdb.wrsamp writes the same files but spends ~150 ms per
  record in its pandas-based header code, which would dominate a corpus of hundreds of records.
  """
  digital = np.clip(np.round(signal[[lead_index(lead) for lead in lead_names]] * gain), -32767, 32767)
  digital = digital.astype("<i2")  # -32768 is format 16's missing-sample code
  directory.mkdir(parents=True, exist_ok=True)
  digital.T.tofile(directory / f"{name}.dat")
  checksums = digital.astype(np.int64).sum(axis=1) % 65536
  lines = [f"{name} 12 {fs:g} {digital.shape[1]}" + (f" {start:%H:%M:%S %d/%m/%Y}" if start else "")]
  lines += [f"{name}.dat 16 {gain:.1f}(0)/mV 16 0 {digital[i, 0]} {checksums[i]} 0 {lead}"
            for i, lead in enumerate(lead_names)]
  lines += [f"# {comment}" for comment in comments]
  (directory / f"{name}.hea").write_text("\n".join(lines) + "\n")


# --- PTB-XL -------------------------------------------------------------------------------------------------------

_PTBXL_COLUMNS = (
    "ecg_id", "patient_id", "age", "sex", "height", "weight", "nurse", "site", "device", "recording_date",
    "report", "scp_codes", "heart_axis", "infarction_stadium1", "infarction_stadium2", "validated_by",
    "second_opinion", "initial_autogenerated_report", "validated_by_human", "baseline_drift", "static_noise",
    "burst_noise", "electrodes_problems", "extra_beats", "pacemaker", "strat_fold", "filename_lr", "filename_hr")
_PTBXL_LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
_PTBXL_DEVICES = ("CS-12   E", "AT-6 C 5.5", "CS100    3", "AT-60    3")
# extra_beats notation: count of ventricular / supraventricular extrasystoles, e.g. '2VES'.
_PTBXL_EXTRA_BEATS = {"V": "VES", "A": "SVES"}


def _heart_axis(axis_deg: float) -> str:
  """PTB-XL's heart_axis code for a frontal QRS axis (MID normal, LAD/ALAD left, RAD/ARAD right)."""
  if axis_deg < -45:
    return "ALAD"
  if axis_deg < -30:
    return "LAD"
  if axis_deg <= 90:
    return "MID"
  return "RAD" if axis_deg <= 120 else "ARAD"


def _write_ptbxl(root: pathlib.Path, draws: list[_Draw], rng: np.random.Generator,
                 track: _Track) -> list[EcgRecord]:
  """ptbxl_database.csv (28 columns, index ecg_id), scp_statements.csv and records100/ + records500/ WFDB files
  ({ecg_id:05d}_lr at 100 Hz, _hr at 500 Hz, gain 1000/mV, leads spelled AVR AVL AVF), English reports."""
  folds = rng.permutation(max(d.patient for d in draws) + 1) % 10 + 1  # strat_fold per patient
  start = datetime.datetime(1984, 1, 1)
  records, rows = [], []
  for ecg_id, draw in enumerate(track(draws), start=1):
    record = _record(draw, str(ecg_id))
    truth = record.extra["ground_truth"]
    folder = f"{(ecg_id // 1000) * 1000:05d}"
    filename_lr, filename_hr = f"records100/{folder}/{ecg_id:05d}_lr", f"records500/{folder}/{ecg_id:05d}_hr"
    _write_wfdb(root / "records500" / folder, f"{ecg_id:05d}_hr", record.signal, record.fs,
                lead_names=_PTBXL_LEADS, gain=1000.0)
    _write_wfdb(root / "records100" / folder, f"{ecg_id:05d}_lr", sps.resample_poly(record.signal, 1, 5, axis=1),
                record.fs / 5, lead_names=_PTBXL_LEADS, gain=1000.0)
    spec = draw.spec
    extra_beats = "".join(f"{truth['beat_kinds'].count(kind)}{name}" for kind, name in _PTBXL_EXTRA_BEATS.items()
                          if kind in truth["beat_kinds"])
    stadium = ("Stadium I" if spec.has("st_elevation") else "Stadium III" if spec.has("myocardial_infarction")
               else None)
    human = rng.random() < 0.75
    rows.append({
        "ecg_id": ecg_id, "patient_id": float(draw.patient + 1), "age": draw.age, "sex": int(draw.sex == "F"),
        "height": float(round(rng.normal(176 if draw.sex == "M" else 164, 7))) if rng.random() < 0.3 else None,
        "weight": float(round(rng.normal(82 if draw.sex == "M" else 68, 12))) if rng.random() < 0.4 else None,
        "nurse": float(rng.integers(0, 12)) if rng.random() < 0.7 else None, "site": float(rng.integers(0, 50)),
        "device": _PTBXL_DEVICES[rng.integers(len(_PTBXL_DEVICES))],
        "recording_date": (start + datetime.timedelta(seconds=int(rng.integers(0, 17 * 365 * 86400)))).isoformat(" "),
        "report": record.report, "scp_codes": str(ptbxl_scp_codes(spec)),
        "heart_axis": _heart_axis(truth["qrs_axis_deg"]), "infarction_stadium1": stadium,
        "infarction_stadium2": None, "validated_by": float(rng.integers(0, 12)) if human else None,
        "second_opinion": bool(rng.random() < 0.02), "initial_autogenerated_report": bool(not human),
        "validated_by_human": human, "baseline_drift": None, "static_noise": None, "burst_noise": None,
        "electrodes_problems": None, "extra_beats": extra_beats or None, "pacemaker": None,
        "strat_fold": int(folds[draw.patient]), "filename_lr": filename_lr, "filename_hr": filename_hr})
    records.append(record)
  pd.DataFrame(rows, columns=_PTBXL_COLUMNS).set_index("ecg_id").to_csv(root / "ptbxl_database.csv")
  (root / "scp_statements.csv").write_text(_SCP_STATEMENTS_CSV)
  return records


# --- MIMIC-IV-ECG -------------------------------------------------------------------------------------------------

_MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
_MIMIC_REPORTS = 18
# Where the cart puts the QRS onset in its median-beat frame (ms); P, QRS and T fiducials are relative to it.
_MIMIC_QRS_ONSET_MS = 200


def _write_mimic(root: pathlib.Path, draws: list[_Draw], rng: np.random.Generator,
                 track: _Track) -> list[EcgRecord]:
  """record_list.csv, machine_measurements.csv (report_0..report_17 statements, intervals, axes) and
  files/pNNNN/pSUBJECT/sSTUDY/STUDY WFDB records (500 Hz, gain 200/mV, leads I II III aVR aVF aVL V1-V6)."""
  subjects = 10_000_000 + rng.choice(10_000_000, max(d.patient for d in draws) + 1, replace=False)
  studies = 40_000_000 + rng.choice(10_000_000, len(draws), replace=False)
  records, listed, measured = [], [], []
  for draw, study in zip(track(draws), studies):
    subject = int(subjects[draw.patient])
    record = _record(draw, str(study))
    truth = record.extra["ground_truth"]
    when = datetime.datetime(2110, 1, 1) + datetime.timedelta(minutes=int(rng.integers(0, 90 * 365 * 1440)))
    path = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
    _write_wfdb(root / pathlib.Path(path).parent, str(study), record.signal, record.fs, lead_names=_MIMIC_LEADS,
                gain=200.0, start=when, comments=[f"<subject_id>: {subject}"])
    listed.append({"subject_id": subject, "study_id": int(study), "file_name": int(study),
                   "ecg_time": when.isoformat(" "), "path": path})
    reports = list(statements(draw.spec)) + [None] * _MIMIC_REPORTS
    qrs_onset = _MIMIC_QRS_ONSET_MS
    has_p = truth["pr_ms"] is not None
    measured.append({
        "subject_id": subject, "study_id": int(study), "cart_id": int(rng.integers(6000, 9000)),
        "ecg_time": when.isoformat(" "), **{f"report_{k}": reports[k] for k in range(_MIMIC_REPORTS)},
        "bandwidth": "0.005-150 Hz", "filtering": "60 Hz notch Baseline filter",
        "rr_interval": round(truth["rr_mean_ms"]),
        "p_onset": round(qrs_onset - truth["pr_ms"]) if has_p else None,
        "p_end": round(qrs_onset - truth["pr_ms"] + truth["p_ms"]) if has_p else None,
        "qrs_onset": qrs_onset, "qrs_end": round(qrs_onset + truth["qrs_ms"]),
        "t_end": round(qrs_onset + truth["qt_ms"]),
        "p_axis": round(truth["p_axis_deg"]) if has_p else None,
        "qrs_axis": round(truth["qrs_axis_deg"]), "t_axis": round(truth["t_axis_deg"])})
    records.append(record)
  pd.DataFrame(listed).to_csv(root / "record_list.csv", index=False)
  pd.DataFrame(measured).to_csv(root / "machine_measurements.csv", index=False)
  return records


# --- CODE-15% -----------------------------------------------------------------------------------------------------

_CODE15_FS = 400.0
_CODE15_SAMPLES = 4096
_CODE15_PART = "exams_part0.hdf5"


def _write_code15(root: pathlib.Path, draws: list[_Draw], rng: np.random.Generator,
                  track: _Track) -> list[EcgRecord]:
  """exams.csv and exams_part0.hdf5: `tracings` float32 (N + 1, 4096, 12) at 400 Hz, 7 s or 10 s exams zero-padded
  on both sides, `exam_id` (N + 1,), the last row a dummy (exam_id 0, all zeros)."""
  exam_ids = 100_000 + rng.choice(3_900_000, len(draws), replace=False)
  patient_ids = 1 + rng.choice(1_499_999, max(d.patient for d in draws) + 1, replace=False)
  records, rows = [], []
  with h5py.File(root / _CODE15_PART, "w") as part:
    part.create_dataset("exam_id", data=np.concatenate([exam_ids, [0]]).astype(np.int64))
    tracings = part.create_dataset("tracings", (len(draws) + 1, _CODE15_SAMPLES, 12), np.float32, fillvalue=0.0)
    for row, (draw, exam_id) in enumerate(zip(track(draws), exam_ids)):
      record = _record(draw, str(exam_id), fs=_CODE15_FS, seconds=7.0 if rng.random() < 0.3 else 10.0)
      padded = np.zeros((_CODE15_SAMPLES, 12), np.float32)
      start = (_CODE15_SAMPLES - record.signal.shape[1]) // 2
      padded[start:start + record.signal.shape[1]] = record.signal.T
      tracings[row] = padded
      labels = code15_labels(draw.spec)
      dies = rng.random() < 0.04
      rows.append({
          "exam_id": int(exam_id), "age": int(draw.age), "is_male": draw.sex == "M",
          "nn_predicted_age": round(float(draw.age + rng.normal(0, 8)), 4),
          **{label: label in labels for label in CODE15_LABELS},
          "patient_id": int(patient_ids[draw.patient]),
          "death": dies if draw.first_of_patient else None,
          "timey": round(float(rng.uniform(0.1, 8.0)), 4) if draw.first_of_patient else None,
          "normal_ecg": draw.spec.is_normal, "trace_file": _CODE15_PART})
      records.append(record)
  pd.DataFrame(rows).to_csv(root / "exams.csv", index=False)
  return records


# --- PhysioNet/CinC Challenge (CPSC 2018) ---------------------------------------------------------------------------


def _write_challenge(root: pathlib.Path, draws: list[_Draw], rng: np.random.Generator,
                     track: _Track) -> list[EcgRecord]:
  """training/cpsc_2018/gK/A0001.{hea,mat}: MAT v4 `val` int16 [12, T] (uV) behind a `16+24` WFDB header with
  #Age, #Sex and #Dx (SNOMED CT codes of the CPSC classes); 500 Hz, 10-15 s."""
  records = []
  for number, draw in enumerate(track(draws), start=1):
    name = f"A{number:04d}"
    folder = root / "training" / "cpsc_2018" / f"g{(number - 1) // 1000 + 1}"
    folder.mkdir(parents=True, exist_ok=True)
    record = _record(draw, name, seconds=float(rng.integers(10, 16)))
    val = np.round(record.signal * 1000.0).astype(np.int16)
    scipy.io.savemat(folder / f"{name}.mat", {"val": val}, format="4")
    checksums = (val.astype(np.int64).sum(axis=1) + 32768) % 65536 - 32768  # WFDB: 16-bit signed sum
    dx = ",".join(_SNOMED_CODE[label] for label in cpsc_labels(draw.spec))
    lines = [f"{name} 12 {record.fs:g} {val.shape[1]} 05-Feb-2020 11:39:16"]
    lines += [f"{name}.mat 16+24 1000/mV 16 0 {val[i, 0]} {checksums[i]} 0 {lead}"
              for i, lead in enumerate(STANDARD_LEADS)]
    lines += [f"#Age: {int(draw.age)}", f"#Sex: {'Male' if draw.sex == 'M' else 'Female'}", f"#Dx: {dx}",
              "#Rx: Unknown", "#Hx: Unknown", "#Sx: Unknown"]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    records.append(record)
  return records


_WRITERS: dict[str, Callable[[pathlib.Path, list[_Draw], np.random.Generator, _Track], list[EcgRecord]]] = {
    "ptbxl": _write_ptbxl, "mimic": _write_mimic, "code15": _write_code15, "challenge": _write_challenge}


# --- Command line -------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--layout", required=True, choices=LAYOUTS, help="the collection whose layout to write")
  parser.add_argument("--n", type=int, required=True, help="number of records")
  parser.add_argument("--out", required=True, help="the collection's root folder (created)")
  parser.add_argument("--seed", type=int, default=0, help="corpus seed (same seed, same files)")


def run(args: argparse.Namespace) -> int:
  records = write_corpus(args.layout, args.out, args.n, seed=args.seed, progress=args.n > 20)
  counts = pd.Series([label for r in records for label in r.labels]).value_counts()
  print(f"wrote {len(records)} {args.layout} records to {args.out}: "
        + ", ".join(f"{label} {count}" for label, count in counts.items()))
  return 0
