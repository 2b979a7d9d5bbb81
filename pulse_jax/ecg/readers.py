"""Readers for the raw 12-lead collections PULSE draws on, each yielding validated EcgRecords.

`read_wfdb` reads one WFDB record (what `pulse-jax render RECORD` uses); `read_ptbxl`, `read_mimic`,
`read_code15` and `read_challenge` walk a whole collection in its distributed on-disk layout and attach the
collection's labels, report text, demographics and patient id. Channels are always selected by their
(normalised) name, never by position: MIMIC-IV-ECG stores aVF before aVL and PTB stores extra Frank leads.

Failure policy: a record that cannot be read or is not a plausible 12-lead ECG raises RecordError naming it and
the problem. Collection iterators never stop on one bad record: they skip it and hand the error to `skipped`
(a SkipCounter) or, without one, log a warning. A missing or malformed collection index (the CSV tables) is not
one bad record, so it raises.
"""

import ast
import dataclasses
import math
import os
import pathlib
import re
from collections.abc import Iterable, Iterator
from typing import Any

import h5py
import numpy as np
import pandas as pd
import wfdb

from pulse_jax.ecg import snomed
from pulse_jax.ecg.leads import STANDARD_LEADS, normalize_lead_name
from pulse_jax.ecg.record import EcgRecord, Provenance, validate_signal
from pulse_jax.ecg.skips import SkipCounter, map_skipping, note_skip
from pulse_jax.errors import ConfigError, RecordError

PathLike = str | os.PathLike[str]

# Physical units a WFDB header may declare -> factor to millivolts.
_TO_MILLIVOLT = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}
_WFDB_SUFFIXES = (".hea", ".dat", ".mat")
# Ages outside this range are data-entry codes, not ages; they are read as unknown.
_MAX_AGE = 130.0

PTBXL_SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")
MIMIC_MEASUREMENTS: tuple[str, ...] = (
    "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis", "qrs_axis", "t_axis")
CODE15_LABELS: tuple[str, ...] = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")
CODE15_FS = 400.0


def read_wfdb(path: PathLike, *, source: str = "wfdb", record_id: str | None = None) -> EcgRecord:
  """Reads one WFDB record as a validated 12-lead EcgRecord.

  Args:
    path: the record, with or without its `.hea` (or `.dat`/`.mat`) suffix. Signal files may be WFDB `.dat` or
      PhysioNet Challenge MAT v4 `.mat` (format `16+24`: format 16 after the 24-byte MAT header).
    source: collection name for the provenance.
    record_id: id inside the collection; defaults to the record name.

  Returns:
    An EcgRecord with signal float32[12, T] in mV (converted from the header's µV/mV/V), rows in
    STANDARD_LEADS order whatever the channel order or name spelling in the file; channels that are not one of
    the 12 leads (Frank leads vx/vy/vz...) are not read. Age, sex and labels come from `# Age:`, `# Sex:` and
    `# Dx:` header comments where present; labels are the Dx entries as written (the source's taxonomy).

  Raises:
    RecordError: naming the record and the problem (missing or truncated file, unparsable header, missing or
      duplicated lead, unknown units, or anything validate_signal rejects).
  """
  base = pathlib.Path(path)
  if base.suffix.lower() in _WFDB_SUFFIXES:
    base = base.with_suffix("")
  record_id = base.name if record_id is None else record_id
  label = str(base) if record_id == base.name else f"{record_id} ({base})"
  header = _read_header(base, label)
  channels = _standard_channels(header.sig_name, label)
  try:
    data = wfdb.rdrecord(str(base), channels=channels)
  except FileNotFoundError as e:
    raise RecordError(f"{label}: missing signal file {e.filename}", reason="missing file") from e
  except (ValueError, OSError, KeyError) as e:  # truncated file; KeyError: a storage format wfdb lacks
    raise RecordError(f"{label}: unreadable signal file ({type(e).__name__}: {e})",
                      reason="unreadable signal file") from e
  if header.sig_len is not None and data.p_signal.shape[0] != header.sig_len:
    raise RecordError(f"{label}: {data.p_signal.shape[0]} samples read, header declares {header.sig_len}",
                      reason="unreadable signal file")
  scale = np.array([_millivolt_factor(unit, label) for unit in data.units])
  signal = validate_signal(data.p_signal.T * scale[:, None], float(header.fs), label)
  fields = _comment_fields(header.comments)
  dx = tuple(code.strip() for code in fields.get("dx", "").split(",") if code.strip())
  signal_file = base.parent / header.file_name[channels[0]]
  return EcgRecord(signal=signal, fs=float(header.fs), labels=dx,
                   provenance=Provenance(source=source, record_id=record_id, path=str(signal_file)),
                   age=_plausible_age(fields.get("age")), sex=_sex_from_text(fields.get("sex")))


def read_ptbxl(root: PathLike, *, sampling_rate: int = 500,
               skipped: SkipCounter | None = None) -> Iterator[EcgRecord]:
  """Yields the PTB-XL records under `root` (the folder holding ptbxl_database.csv), in ecg_id order.

  Args:
    root: the PTB-XL folder (ptbxl_database.csv, scp_statements.csv, records100/, records500/).
    sampling_rate: 500 reads records500 (`filename_hr`), 100 reads records100 (`filename_lr`).
    skipped: counts the records skipped as invalid; None logs each as a warning.

  Yields:
    EcgRecords with labels = diagnostic superclasses (a subset of PTBXL_SUPERCLASSES, in that order) of the
    record's SCP codes that scp_statements.csv marks diagnostic, likelihoods ignored (possibly empty);
    report = the `report` column (mostly German); patient_id, age, sex; extra = {"strat_fold": int,
    "scp_codes": {code: likelihood}, "ecg_id": int}. `ptbxl_split(strat_fold)` gives the standard split.
  """
  filename_column = {100: "filename_lr", 500: "filename_hr"}.get(sampling_rate)
  if filename_column is None:
    raise ConfigError(f"PTB-XL comes at 100 or 500 Hz, not {sampling_rate}")
  root = pathlib.Path(root)
  database = _read_table(root / "ptbxl_database.csv",
                         ("ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold", filename_column))
  statements = _read_table(root / "scp_statements.csv", ("diagnostic", "diagnostic_class"))
  diagnostic = statements[statements["diagnostic"] == 1]
  superclass_of = dict(zip(diagnostic.iloc[:, 0].astype(str), diagnostic["diagnostic_class"]))
  yield from map_skipping(lambda row: _ptbxl_record(root, row, filename_column, superclass_of),
                          _rows(database.sort_values("ecg_id")), item_id=lambda row: str(row["ecg_id"]),
                          skipped=skipped)


def ptbxl_split(strat_fold: int) -> str:
  """PTB-XL's recommended split of its patient-wise folds: 1-8 'train', 9 'validation', 10 'test'."""
  if not 1 <= strat_fold <= 10:
    raise ValueError(f"PTB-XL strat_fold is 1..10, got {strat_fold}")
  return {9: "validation", 10: "test"}.get(strat_fold, "train")


def read_mimic(root: PathLike, *, skipped: SkipCounter | None = None) -> Iterator[EcgRecord]:
  """Yields the MIMIC-IV-ECG records under `root`, in record_list.csv order.

  Args:
    root: the MIMIC-IV-ECG folder (record_list.csv, machine_measurements.csv, files/pNNNN/pSUBJECT/sSTUDY/).
    skipped: counts the records skipped as invalid; None logs each as a warning.

  Yields:
    EcgRecords with labels = () (MIMIC has no structured labels; tasks are derived from the report),
    report = the machine statements report_0..report_17 that are present, joined with a space (None if there
    are none), patient_id = subject_id, record id = study_id, and extra = {"study_id": int} plus the machine
    measurements of MIMIC_MEASUREMENTS (ms and degrees; None where missing).
  """
  root = pathlib.Path(root)
  records = _read_table(root / "record_list.csv", ("subject_id", "study_id", "path"))
  measurements = _read_table(root / "machine_measurements.csv", ("study_id",) + MIMIC_MEASUREMENTS)
  report_columns = sorted((c for c in measurements.columns if re.fullmatch(r"report_\d+", c)),
                          key=lambda c: int(c.split("_")[1]))
  table = records[["subject_id", "study_id", "path"]].merge(
      measurements[["study_id", *report_columns, *MIMIC_MEASUREMENTS]], on="study_id", how="left")
  yield from map_skipping(lambda row: _mimic_record(root, row, report_columns), _rows(table),
                          item_id=lambda row: str(row["study_id"]), skipped=skipped)


def read_code15(root: PathLike, *, skipped: SkipCounter | None = None) -> Iterator[EcgRecord]:
  """Yields the CODE-15% exams under `root`, grouped by their HDF5 part, in exams.csv order within each.

  Args:
    root: the CODE-15% folder (exams.csv and the unzipped exams_part*.hdf5 files it names in `trace_file`).
    skipped: counts the exams skipped as invalid; None logs each as a warning.

  Yields:
    EcgRecords at CODE15_FS Hz with the zero padding around each tracing removed; labels = the true ones of
    CODE15_LABELS, in that order; patient_id, age, sex (from is_male); extra = {"exam_id": int,
    "normal_ecg": bool}. HDF5 rows whose exam is not in exams.csv (such as the all-zero dummy last row,
    exam_id 0) are never read.
  """
  root = pathlib.Path(root)
  exams = _read_table(root / "exams.csv",
                      ("exam_id", "age", "is_male", "patient_id", "normal_ecg", "trace_file") + CODE15_LABELS)
  for trace_file, group in exams.groupby("trace_file", sort=False, dropna=False):
    try:
      part = _Code15Part(root, trace_file)
    except RecordError as e:  # the part is missing or unreadable: each of its exams is skipped
      for exam_id in group["exam_id"]:
        note_skip(skipped, str(exam_id), e)
      continue
    with part:
      yield from map_skipping(lambda row: _code15_record(part, row), _rows(group),
                              item_id=lambda row: str(row["exam_id"]), skipped=skipped)


def read_challenge(root: PathLike, *, source: str, skipped: SkipCounter | None = None) -> Iterator[EcgRecord]:
  """Yields the PhysioNet/CinC Challenge 2020/21-format records below `root` (CPSC 2018, G12EC, CSN).

  Args:
    root: searched recursively for `*.hea` headers, read in sorted path order; signals in `.mat` files.
    source: the collection's name for the provenance ('cpsc', 'g12ec', 'csn').
    skipped: counts the records skipped as invalid; None logs each as a warning.

  Yields:
    EcgRecords (record id = header name) with labels = class abbreviations of the `#Dx:` SNOMED CT codes
    (see pulse_jax.ecg.snomed; CPSC classes as ECGBench names them) and extra = {"dx_codes": all codes as
    written, "unmapped_dx": the codes outside the table}; age and sex from the header comments.
  """
  root = pathlib.Path(root)
  headers = sorted(root.rglob("*.hea"))
  if not headers:
    raise RecordError(f"{root}: no WFDB headers (*.hea) found", reason="missing file")
  yield from map_skipping(lambda header: _challenge_record(header, source), headers,
                          item_id=lambda header: header.stem, skipped=skipped)


def _read_header(base: pathlib.Path, label: str) -> wfdb.Record:
  """wfdb's parse of `<base>.hea`, checked to describe as many signals as it declares."""
  try:
    header = wfdb.rdheader(str(base))
  except FileNotFoundError as e:
    raise RecordError(f"{label}: missing header file {e.filename}", reason="missing file") from e
  except (ValueError, IndexError, OSError) as e:  # HeaderSyntaxError is a ValueError; empty files give IndexError
    raise RecordError(f"{label}: unparsable header ({type(e).__name__}: {e})", reason="unparsable header") from e
  if isinstance(header, wfdb.MultiRecord):
    raise RecordError(f"{label}: multi-segment records are not supported", reason="unparsable header")
  described = len(header.sig_name or ())
  if not described or described != header.n_sig:
    raise RecordError(f"{label}: header declares {header.n_sig} signals but describes {described}",
                      reason="unparsable header")
  return header


def _standard_channels(names: Iterable[str], label: str) -> list[int]:
  """Channel indices of the 12 standard leads, in STANDARD_LEADS order, found by normalised name."""
  names = list(names)
  index: dict[str, int] = {}
  duplicated = []
  for i, name in enumerate(names):
    lead = normalize_lead_name(name)
    if lead in index:
      duplicated.append(lead)
    elif lead is not None:
      index[lead] = i
  if duplicated:
    raise RecordError(f"{label}: duplicated lead(s) {', '.join(duplicated)} among channels {names}",
                      reason="duplicated lead")
  missing = [lead for lead in STANDARD_LEADS if lead not in index]
  if missing:
    raise RecordError(f"{label}: missing lead(s) {', '.join(missing)} among channels {names}",
                      reason="missing lead")
  return [index[lead] for lead in STANDARD_LEADS]


def _millivolt_factor(unit: str | None, label: str) -> float:
  factor = _TO_MILLIVOLT.get((unit or "mV").strip().lower())
  if factor is None:
    raise RecordError(f"{label}: signal unit {unit!r} is not a voltage", reason="unknown units")
  return factor


def _comment_fields(comments: Iterable[str]) -> dict[str, str]:
  """'Key: value' header comments as {lower-case key: value}, first occurrence winning."""
  fields: dict[str, str] = {}
  for comment in comments:
    key, sep, value = comment.lstrip("#").partition(":")
    if sep:
      fields.setdefault(key.strip().lower(), value.strip())
  return fields


def _plausible_age(value: Any) -> float | None:
  age = _optional_float(value)
  return age if age is not None and 0.0 <= age <= _MAX_AGE else None


def _sex_from_text(value: str | None) -> str | None:
  return {"m": "M", "male": "M", "f": "F", "female": "F"}.get((value or "").strip().lower())


def _optional_float(value: Any) -> float | None:
  """A finite float, or None for missing, NaN and text such as 'Unknown'."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) else None


def _required_int(value: Any, column: str, label: str) -> int:
  """An integer id from a CSV cell (pandas reads ids as float when the column has gaps)."""
  number = _optional_float(value)
  if number is None or not number.is_integer():
    raise RecordError(f"{label}: {column} is {value!r}, not an integer", reason="bad label row")
  return int(number)


def _optional_id(value: Any) -> str | None:
  """A patient id as text ('15709', not '15709.0'), or None where the cell is empty."""
  number = _optional_float(value)
  return None if number is None else str(int(number))


def _read_table(path: pathlib.Path, columns: tuple[str, ...]) -> pd.DataFrame:
  """A collection's CSV index, checked to have `columns`; RecordError if it is missing or malformed."""
  try:
    table = pd.read_csv(path)
  except FileNotFoundError as e:
    raise RecordError(f"{path}: missing file", reason="missing file") from e
  except (ValueError, OSError) as e:  # pandas' ParserError and EmptyDataError are ValueErrors
    raise RecordError(f"{path}: unparsable table ({e})", reason="unparsable table") from e
  absent = [c for c in columns if c not in table.columns]
  if absent:
    raise RecordError(f"{path}: missing column(s) {', '.join(absent)}", reason="unparsable table")
  return table


def _rows(table: pd.DataFrame) -> Iterator[dict[str, Any]]:
  """Rows as {column: value} dicts, one at a time (tables such as MIMIC's hold 800,000 rows)."""
  columns = list(table.columns)
  for values in table.itertuples(index=False, name=None):
    yield dict(zip(columns, values))


def _ptbxl_record(root: pathlib.Path, row: dict[str, Any], filename_column: str,
                  superclass_of: dict[str, str]) -> EcgRecord:
  ecg_id = _required_int(row["ecg_id"], "ecg_id", "PTB-XL row")
  try:
    scp_codes = ast.literal_eval(row["scp_codes"])
  except (ValueError, SyntaxError) as e:
    raise RecordError(f"PTB-XL ecg_id {ecg_id}: unparsable scp_codes {row['scp_codes']!r}",
                      reason="bad label row") from e
  strat_fold = _optional_float(row["strat_fold"])
  if not isinstance(scp_codes, dict) or strat_fold not in range(1, 11):
    raise RecordError(f"PTB-XL ecg_id {ecg_id}: bad scp_codes {row['scp_codes']!r} or strat_fold "
                      f"{row['strat_fold']!r}", reason="bad label row")
  if not isinstance(row[filename_column], str):
    raise RecordError(f"PTB-XL ecg_id {ecg_id}: no {filename_column}", reason="bad label row")
  record = read_wfdb(root / row[filename_column], source="ptbxl", record_id=str(ecg_id))
  superclasses = {superclass_of[code] for code in scp_codes if code in superclass_of}
  report = row["report"].strip() if isinstance(row["report"], str) else ""
  return dataclasses.replace(
      record, labels=tuple(c for c in PTBXL_SUPERCLASSES if c in superclasses), report=report or None,
      patient_id=_optional_id(row["patient_id"]), age=_plausible_age(row["age"]),
      sex={0.0: "M", 1.0: "F"}.get(_optional_float(row["sex"])),
      extra={"strat_fold": int(strat_fold), "scp_codes": dict(scp_codes), "ecg_id": ecg_id})


def _mimic_record(root: pathlib.Path, row: dict[str, Any], report_columns: list[str]) -> EcgRecord:
  study_id = _required_int(row["study_id"], "study_id", "MIMIC-IV-ECG row")
  if not isinstance(row["path"], str):
    raise RecordError(f"MIMIC-IV-ECG study {study_id}: no path", reason="bad label row")
  record = read_wfdb(root / row["path"], source="mimic", record_id=str(study_id))
  statements = [row[c].strip() for c in report_columns if isinstance(row[c], str) and row[c].strip()]
  extra = {"study_id": study_id, **{name: _optional_float(row[name]) for name in MIMIC_MEASUREMENTS}}
  return dataclasses.replace(record, labels=(), report=" ".join(statements) or None,
                             patient_id=_optional_id(row["subject_id"]), extra=extra)


def _challenge_record(header: pathlib.Path, source: str) -> EcgRecord:
  record = read_wfdb(header, source=source, record_id=header.stem)
  labels, unmapped = snomed.map_codes(record.labels)
  return dataclasses.replace(record, labels=labels, extra={"dx_codes": record.labels, "unmapped_dx": unmapped})


class _Code15Part:
  """One open exams_partN.hdf5: `tracings` float32 (N, 4096, 12) and `exam_id` (N,), indexed by exam id."""

  def __init__(self, root: pathlib.Path, trace_file: Any):
    """Opens and checks the part; RecordError if it is missing or unreadable (the caller then skips its exams)."""
    if not isinstance(trace_file, str):
      raise RecordError(f"CODE-15% exams.csv: exam without a trace_file ({trace_file!r})", reason="bad label row")
    self.path = root / trace_file
    try:
      self._file = h5py.File(self.path, "r")
    except FileNotFoundError as e:
      raise RecordError(f"{self.path}: missing file", reason="missing file") from e
    except OSError as e:
      raise RecordError(f"{self.path}: unreadable HDF5 file ({e})", reason="unreadable signal file") from e
    try:
      self.tracings = self._file["tracings"]
      exam_ids = self._file["exam_id"][:]
    except (KeyError, OSError) as e:
      self._file.close()
      raise RecordError(f"{self.path}: no readable 'tracings' and 'exam_id' datasets ({e})",
                        reason="unreadable signal file") from e
    shape = self.tracings.shape
    if len(shape) != 3 or shape[2] != len(STANDARD_LEADS) or shape[0] != len(exam_ids):
      self._file.close()
      raise RecordError(f"{self.path}: tracings {shape} do not match exam_id {exam_ids.shape}",
                        reason="unreadable signal file")
    self.row_of = {int(exam_id): i for i, exam_id in enumerate(exam_ids)}

  def __enter__(self) -> "_Code15Part":
    return self

  def __exit__(self, *exc_info) -> None:
    self._file.close()

  def tracing(self, exam_id: int) -> np.ndarray:
    """float32[T, 12] of one exam with the leading and trailing all-zero samples (the padding) removed."""
    if exam_id not in self.row_of:
      raise RecordError(f"CODE-15% exam {exam_id}: not in {self.path}", reason="exam not in trace file")
    try:
      tracing = self.tracings[self.row_of[exam_id]]
    except OSError as e:
      raise RecordError(f"CODE-15% exam {exam_id}: unreadable in {self.path} ({e})",
                        reason="unreadable signal file") from e
    recorded = np.flatnonzero(np.any(tracing != 0, axis=1))
    return tracing[recorded[0]:recorded[-1] + 1] if recorded.size else tracing[:0]


def _code15_record(part: _Code15Part, row: dict[str, Any]) -> EcgRecord:
  exam_id = _required_int(row["exam_id"], "exam_id", "CODE-15% row")
  label = f"CODE-15% exam {exam_id}"
  flags = {name: _as_bool(row[name], name, label) for name in CODE15_LABELS + ("normal_ecg", "is_male")}
  signal = validate_signal(part.tracing(exam_id).T, CODE15_FS, f"{label} ({part.path})")
  return EcgRecord(
      signal=signal, fs=CODE15_FS, labels=tuple(name for name in CODE15_LABELS if flags[name]),
      provenance=Provenance(source="code15", record_id=str(exam_id), path=str(part.path)),
      patient_id=_optional_id(row["patient_id"]), age=_plausible_age(row["age"]),
      sex="M" if flags["is_male"] else "F", extra={"exam_id": exam_id, "normal_ecg": flags["normal_ecg"]})


def _as_bool(value: Any, column: str, label: str) -> bool:
  """A CSV boolean (True/False, 1/0, 'true'/'false'); RecordError for anything else, such as a missing value."""
  if isinstance(value, str):
    value = {"true": True, "false": False}.get(value.strip().lower(), value)
  if isinstance(value, (bool, np.bool_)) or value in (0, 1):
    return bool(value)
  raise RecordError(f"{label}: {column} is {value!r}, not a boolean", reason="bad label row")
