"""Readers: real WFDB records, tiny trees in each collection's real layout, and a corpus of broken files."""

import logging
import pathlib

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import wfdb

from pulse_jax.ecg import readers, snomed
from pulse_jax.ecg.leads import STANDARD_LEADS
from pulse_jax.ecg.record import Provenance
from pulse_jax.ecg.skips import SkipCounter
from pulse_jax.errors import ConfigError, RecordError

FS = 500
SECONDS = 2
# MIMIC-IV-ECG stores aVF before aVL.
MIMIC_ORDER = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
PTBXL_NAMES = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _signal(seed=0, n=FS * SECONDS) -> np.ndarray:
  """float64[n, 12] in mV (whole µV); each channel has its own offset and rhythm, so rows can be told apart."""
  rng = np.random.default_rng(seed)
  t = np.arange(n)[:, None] / FS
  channel = np.arange(12)
  signal = 0.1 * (1 + channel) + 0.4 * np.sin(2 * np.pi * (1 + 0.1 * channel) * t + channel)
  return np.round(signal + 0.02 * rng.standard_normal((n, 12)), 3)


def _write_wfdb(directory: pathlib.Path, name: str, signal: np.ndarray, names=STANDARD_LEADS,
                comments=(), units="mV", gain=1000.0, fs=FS) -> pathlib.Path:
  """A format-16 WFDB record (.hea + .dat); returns its extension-less path."""
  directory.mkdir(parents=True, exist_ok=True)
  n = signal.shape[1]
  wfdb.wrsamp(name, fs=fs, units=[units] * n, sig_name=list(names), p_signal=signal, fmt=["16"] * n,
              adc_gain=[gain] * n, baseline=[0] * n, comments=list(comments), write_dir=str(directory))
  return directory / name


def _write_challenge(directory: pathlib.Path, name: str, signal: np.ndarray, dx="426783006",
                     names=STANDARD_LEADS, fs=FS, gain=1000, dx_prefix="#Dx: ") -> pathlib.Path:
  """A PhysioNet Challenge record: MAT v4 `val` int16 [12, T] in µV plus a `16+24` header, as distributed.

  `gain` (adu/mV) is what the header claims; the stored values are always µV.
  """
  directory.mkdir(parents=True, exist_ok=True)
  val = np.round(signal.T * 1000).astype(np.int16)
  scipy.io.savemat(directory / f"{name}.mat", {"val": val}, format="4")
  lines = [f"{name} {len(names)} {fs} {val.shape[1]} 05-Feb-2020 11:39:16"]
  lines += [f"{name}.mat 16+24 {gain}/mV 16 0 {val[i, 0]} 0 0 {lead}" for i, lead in enumerate(names)]
  lines += ["#Age: 63", "#Sex: Female", f"{dx_prefix}{dx}", "#Rx: Unknown"]
  header = directory / f"{name}.hea"
  header.write_text("\n".join(lines) + "\n")
  return header


def _wfdb_channel(path: pathlib.Path, name: str) -> np.ndarray:
  """wfdb's own reading of one channel, by its name in the file."""
  data = wfdb.rdrecord(str(path))
  return data.p_signal[:, data.sig_name.index(name)]


# --- Real records -------------------------------------------------------------------------------------------


def test_ptb_record_with_frank_leads_gives_the_12_standard_leads(real_ecg_dir, tmp_path):
  path = real_ecg_dir / "wfdb" / "s0010_re"
  record = readers.read_wfdb(path)
  assert record.signal.shape == (12, 38400) and record.signal.dtype == np.float32
  assert record.fs == 1000.0 and record.age == 81.0 and record.sex == "F"
  assert record.provenance.record_id == "s0010_re" and record.provenance.path.endswith("s0010_re.dat")
  for lead, name in (("aVR", "avr"), ("aVL", "avl"), ("V6", "v6"), ("I", "i")):
    np.testing.assert_allclose(record.lead(lead), _wfdb_channel(path, name), atol=1e-6)
  peaks = np.abs(record.signal).max(axis=1)
  assert np.all(peaks > 0.1) and np.all(peaks < 5.0)
  # The Frank leads live in s0010_re.xyz, which is never read.
  for suffix in (".hea", ".dat"):
    (tmp_path / f"s0010_re{suffix}").write_bytes((real_ecg_dir / "wfdb" / f"s0010_re{suffix}").read_bytes())
  np.testing.assert_array_equal(readers.read_wfdb(tmp_path / "s0010_re.hea").signal, record.signal)


def test_ptbxl_record_with_upper_case_limb_leads(real_ecg_dir):
  path = real_ecg_dir / "wfdb" / "00001_lr"
  record = readers.read_wfdb(str(path) + ".hea", source="ptbxl", record_id="1")
  assert record.signal.shape == (12, 1000) and record.fs == 100.0
  assert record.provenance == Provenance("ptbxl", "1", str(path) + ".dat")
  assert record.labels == () and record.age is None and record.sex is None
  for lead in ("aVR", "aVL", "aVF"):
    np.testing.assert_allclose(record.lead(lead), _wfdb_channel(path, lead.upper()), atol=1e-6)


# --- read_wfdb on written records ---------------------------------------------------------------------------


def test_wfdb_comments_units_and_channel_order(tmp_path):
  signal = _signal()
  path = _write_wfdb(tmp_path, "rec", signal * 1000, names=MIMIC_ORDER, units="uV", gain=1.0,
                     comments=["Age: 57", "Sex: Male", "Dx: 164889003, 59118001"])
  record = readers.read_wfdb(path)
  assert record.labels == ("164889003", "59118001") and record.age == 57.0 and record.sex == "M"
  np.testing.assert_allclose(record.signal, signal[:, [MIMIC_ORDER.index(lead) for lead in STANDARD_LEADS]].T,
                             atol=1e-6)


def test_wfdb_unknown_units_are_rejected(tmp_path):
  path = _write_wfdb(tmp_path, "pressure", _signal(), units="mmHg")
  with pytest.raises(RecordError, match="pressure.*mmHg"):
    readers.read_wfdb(path)


# --- PTB-XL ----------------------------------------------------------------------------------------------------


def _ptbxl_tree(root: pathlib.Path) -> None:
  statements = pd.DataFrame(
      {"description": ["normal ECG", "inferior MI", "anteroseptal MI", "LVH", "sinus rhythm"],
       "diagnostic": [1, 1, 1, 1, None], "diagnostic_class": ["NORM", "MI", "MI", "HYP", None]},
      index=["NORM", "IMI", "ASMI", "LVH", "SR"])
  statements.to_csv(root / "scp_statements.csv")
  rows = [
      (1, 15709.0, 56.0, 1, "sinusrhythmus normales ekg", "{'NORM': 100.0, 'SR': 0.0}", 3),
      (2, 13243.0, 19.0, 0, "sinusrhythmus", "{'LVH': 0.0, 'IMI': 50.0, 'ASMI': 15.0, 'SR': 0.0}", 9),
      (3, 20372.0, 37.0, 0, "sinusrhythmus", "{'SR': 0.0}", 10),
      (4, 17014.0, 24.0, 1, "no file", "{'NORM': 100.0}", 2),
      (5, 17448.0, 19.0, 0, "broken codes", "{'NORM': 100.0", 5),
  ]
  table = []
  for ecg_id, patient_id, age, sex, report, scp_codes, fold in rows:
    stem = f"{ecg_id:05d}"
    table.append(dict(ecg_id=ecg_id, patient_id=patient_id, age=age, sex=sex, report=report,
                      scp_codes=scp_codes, strat_fold=fold, filename_lr=f"records100/00000/{stem}_lr",
                      filename_hr=f"records500/00000/{stem}_hr"))
    if ecg_id != 4:
      _write_wfdb(root / "records500" / "00000", f"{stem}_hr", _signal(seed=ecg_id), PTBXL_NAMES)
      _write_wfdb(root / "records100" / "00000", f"{stem}_lr", _signal(seed=ecg_id, n=100 * SECONDS), PTBXL_NAMES,
                  fs=100)
  pd.DataFrame(table).to_csv(root / "ptbxl_database.csv", index=False)


def test_ptbxl_labels_metadata_and_skips(tmp_path):
  _ptbxl_tree(tmp_path)
  skipped = SkipCounter()
  records = list(readers.read_ptbxl(tmp_path, skipped=skipped))
  assert [r.record_id for r in records] == ["1", "2", "3"]
  first, second, third = records
  assert first.labels == ("NORM",) and second.labels == ("MI", "HYP") and third.labels == ()
  assert first.report == "sinusrhythmus normales ekg" and first.patient_id == "15709"
  assert (first.age, first.sex, second.sex) == (56.0, "F", "M")
  assert second.extra == {"strat_fold": 9, "ecg_id": 2,
                          "scp_codes": {"LVH": 0.0, "IMI": 50.0, "ASMI": 15.0, "SR": 0.0}}
  assert [readers.ptbxl_split(r.extra["strat_fold"]) for r in records] == ["train", "validation", "test"]
  assert first.provenance.path.endswith("records500/00000/00001_hr.dat") and first.fs == FS
  np.testing.assert_allclose(first.lead("aVL"), _signal(seed=1)[:, PTBXL_NAMES.index("AVL")],
                             atol=1e-6)
  assert dict(skipped.counts) == {"missing file": 1, "bad label row": 1}
  assert skipped.examples == {"missing file": ["4"], "bad label row": ["5"]}
  low = list(readers.read_ptbxl(tmp_path, sampling_rate=100, skipped=SkipCounter()))
  assert low[0].provenance.path.endswith("records100/00000/00001_lr.dat") and low[0].fs == 100.0
  with pytest.raises(ConfigError):
    next(readers.read_ptbxl(tmp_path, sampling_rate=250))


def test_missing_collection_index_raises(tmp_path):
  with pytest.raises(RecordError, match="ptbxl_database.csv"):
    next(readers.read_ptbxl(tmp_path))
  with pytest.raises(RecordError, match="no WFDB headers"):
    next(readers.read_challenge(tmp_path, source="cpsc"))


# --- MIMIC-IV-ECG ----------------------------------------------------------------------------------------------


def test_mimic_selects_leads_by_name_and_joins_reports(tmp_path):
  studies = [(10000032, 40689238), (10000032, 40689239), (10000117, 45090959)]
  records, measurements = [], []
  for i, (subject, study) in enumerate(studies):
    relative = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
    records.append(dict(subject_id=subject, study_id=study, file_name=study, ecg_time="2180-07-23 08:44:00",
                        path=relative))
    if study != 45090959:  # the last study's file is missing
      _write_wfdb(tmp_path / pathlib.Path(relative).parent, str(study), _signal(seed=i), MIMIC_ORDER)
  reports = {f"report_{k}": [None, None] for k in range(18)}
  reports["report_0"] = ["Sinus rhythm", None]
  reports["report_2"] = ["Normal ECG ", None]
  measurements = pd.DataFrame(dict(subject_id=[10000032] * 2, study_id=[40689238, 45090959], cart_id=[6848, 6848],
                                   **reports, bandwidth="0.005-150Hz", filtering="60 Hz notch Baseline filter",
                                   rr_interval=[659, 800], p_onset=[40, 40], p_end=[128, 120], qrs_onset=[170, 170],
                                   qrs_end=[258, 250], t_end=[518, 500], p_axis=[81, 80], qrs_axis=[77, None],
                                   t_axis=[79, 70]))
  pd.DataFrame(records).to_csv(tmp_path / "record_list.csv", index=False)
  measurements.to_csv(tmp_path / "machine_measurements.csv", index=False)

  skipped = SkipCounter()
  first, second = readers.read_mimic(tmp_path, skipped=skipped)
  path = tmp_path / records[0]["path"]
  np.testing.assert_allclose(first.lead("aVL"), _wfdb_channel(path, "aVL"), atol=1e-6)
  assert not np.allclose(first.lead("aVL"), wfdb.rdrecord(str(path)).p_signal[:, 4])
  np.testing.assert_allclose(first.lead("aVF"), _wfdb_channel(path, "aVF"), atol=1e-6)
  assert first.report == "Sinus rhythm Normal ECG" and second.report is None
  assert first.labels == () and first.patient_id == "10000032" and first.record_id == "40689238"
  assert first.extra["study_id"] == 40689238 and first.extra["rr_interval"] == 659.0
  assert set(first.extra) == {"study_id", *readers.MIMIC_MEASUREMENTS}
  assert second.extra["qrs_axis"] is None
  assert dict(skipped.counts) == {"missing file": 1} and skipped.examples["missing file"] == ["45090959"]


# --- CODE-15% --------------------------------------------------------------------------------------------------


def test_code15_strips_padding_ignores_dummy_row_and_skips_missing(tmp_path):
  lengths = {1001: 2800, 1002: 4000}
  tracings = np.zeros((3, 4096, 12), np.float32)
  for row, (exam_id, n) in enumerate(lengths.items()):
    start = (4096 - n) // 2
    tracings[row, start:start + n] = _signal(seed=exam_id, n=n)
  with h5py.File(tmp_path / "exams_part0.hdf5", "w") as f:
    f["tracings"] = tracings
    f["exam_id"] = np.array([1001, 1002, 0])
  exams = pd.DataFrame(dict(
      exam_id=[1001, 1002, 1003, 2001], age=[48, 67, 50, 70], is_male=[True, False, True, True],
      nn_predicted_age=[50.1, 60.2, 55.0, 71.0], **{"1dAVb": [False, True, False, False]},
      RBBB=[False, True, False, False], LBBB=False, SB=False, ST=[False, False, False, True], AF=False,
      patient_id=[523632, 1724173, 9, 10], death=False, timey=1.0, normal_ecg=[True, False, True, True],
      trace_file=["exams_part0.hdf5"] * 3 + ["exams_part1.hdf5"]))
  exams.to_csv(tmp_path / "exams.csv", index=False)

  skipped = SkipCounter()
  records = list(readers.read_code15(tmp_path, skipped=skipped))
  assert [r.record_id for r in records] == ["1001", "1002"]
  first, second = records
  assert first.signal.shape == (12, 2800) and second.signal.shape == (12, 4000) and first.fs == 400.0
  np.testing.assert_allclose(first.signal, _signal(seed=1001, n=2800).T, atol=1e-6)
  assert first.labels == () and second.labels == ("1dAVb", "RBBB")
  assert first.extra == {"exam_id": 1001, "normal_ecg": True} and second.extra["normal_ecg"] is False
  assert (first.sex, second.sex, second.age, second.patient_id) == ("M", "F", 67.0, "1724173")
  assert first.provenance.path == str(tmp_path / "exams_part0.hdf5")
  assert dict(skipped.counts) == {"exam not in trace file": 1, "missing file": 1}
  assert skipped.examples == {"exam not in trace file": ["1003"], "missing file": ["2001"]}


# --- Challenge (CPSC 2018, G12EC, CSN) and the SNOMED table --------------------------------------------------


def test_challenge_maps_snomed_codes_and_keeps_unknown_ones(tmp_path):
  _write_challenge(tmp_path / "g2", "A0002", _signal(seed=2), dx="59118001,713427006,164884008")
  _write_challenge(tmp_path / "g1", "A0001", _signal(seed=1), dx="426783006", dx_prefix="# Dx: ")
  _write_challenge(tmp_path / "g1", "A0003", _signal(seed=3), dx="164931005,999999999,429622005")
  records = list(readers.read_challenge(tmp_path, source="cpsc", skipped=SkipCounter()))
  assert [r.record_id for r in records] == ["A0001", "A0003", "A0002"]  # sorted by path: g1/... before g2/...
  normal, elevated, blocked = records
  assert normal.labels == ("NORM",) and normal.provenance.source == "cpsc"
  assert blocked.labels == ("RBBB", "PVC") and blocked.extra["unmapped_dx"] == ()
  assert elevated.labels == ("STD", "STE")
  assert elevated.extra == {"dx_codes": ("164931005", "999999999", "429622005"), "unmapped_dx": ("999999999",)}
  assert (normal.age, normal.sex, normal.fs) == (63.0, "F", 500.0)
  assert normal.provenance.path.endswith("A0001.mat")
  np.testing.assert_allclose(normal.signal, _signal(seed=1).T, atol=6e-4)  # 1 µV steps


def test_snomed_table():
  codes = [code for c in snomed.SNOMED_CLASSES for code in c.codes]
  assert len(codes) == len(set(codes))
  assert len({c.abbreviation for c in snomed.SNOMED_CLASSES}) == len(snomed.SNOMED_CLASSES)
  assert snomed.CPSC_LABELS == ("NORM", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")
  cpsc_codes = ["426783006", "164889003", "270492004", "164909002", "59118001", "284470004", "164884008",
                "429622005", "164931005"]
  assert [snomed.lookup(code).abbreviation for code in cpsc_codes] == list(snomed.CPSC_LABELS)
  for code, abbreviation in (("733534002", "LBBB"), ("713427006", "RBBB"), ("63593006", "PAC"),
                             ("427172004", "PVC"), ("426177001", "SB"), ("427084000", "STach"),
                             ("164890007", "AFL"), ("164934002", "TAb"), ("164873001", "LVH"),
                             ("39732003", "LAD")):
    assert snomed.lookup(code).abbreviation == abbreviation
  assert snomed.full_name("AF") == "atrial fibrillation" and snomed.lookup("0") is None
  assert snomed.map_codes([" 164889003", "733534002", "164909002", "1", "1"]) == (("AF", "LBBB"), ("1",))


# --- Broken files -----------------------------------------------------------------------------------------------


def _broken_challenge_records(directory: pathlib.Path) -> dict[str, str]:
  """Writes one broken Challenge record per failure; returns {record name: expected skip reason}."""
  good = _signal()
  _write_challenge(directory, "B_missing_mat", good).with_suffix(".mat").unlink()
  mat = _write_challenge(directory, "B_truncated_mat", good).with_suffix(".mat")
  mat.write_bytes(mat.read_bytes()[:5000])
  (directory / "B_garbage_header.hea").write_bytes(b"\x00\x17 not a header \xff\n12 lines? no\n")
  (directory / "B_empty_header.hea").write_text("")
  nan = _write_challenge(directory, "B_nan", good).with_suffix(".mat")
  val = scipy.io.loadmat(nan)["val"]
  val[3, 100:200] = -32768  # format 16's invalid-sample code, which wfdb reads as NaN
  scipy.io.savemat(nan, {"val": val}, format="4")
  _write_challenge(directory, "B_missing_lead", good[:, :11], names=STANDARD_LEADS[:11])
  _write_challenge(directory, "B_duplicated_lead", good, names=STANDARD_LEADS[:11] + ("II",))
  flat = good.copy()
  flat[:, 7] = 0.0
  _write_challenge(directory, "B_flat_lead", flat)
  _write_challenge(directory, "B_microvolts", good, gain=1)  # µV values declared as mV
  _write_challenge(directory, "B_zero_fs", good, fs=0)
  _write_challenge(directory, "B_absurd_fs", good, fs=100_000)
  return {
      "B_missing_mat": "missing file", "B_truncated_mat": "unreadable signal file",
      "B_garbage_header": "unparsable header", "B_empty_header": "unparsable header",
      "B_nan": "NaN or infinite samples", "B_missing_lead": "missing lead", "B_duplicated_lead": "duplicated lead",
      "B_flat_lead": "flat lead", "B_microvolts": "absurd amplitude", "B_zero_fs": "absurd sampling rate",
      "B_absurd_fs": "absurd sampling rate"}


def test_each_broken_record_raises_record_error_naming_it(tmp_path):
  expected = _broken_challenge_records(tmp_path)
  for name, reason in expected.items():
    with pytest.raises(RecordError, match=name) as caught:
      readers.read_wfdb(tmp_path / name)
    assert caught.value.reason == reason, (name, str(caught.value))


def test_collection_with_good_and_bad_records_yields_the_good_and_counts_the_bad(tmp_path):
  expected = _broken_challenge_records(tmp_path / "g1")
  for i in range(3):
    _write_challenge(tmp_path / "g2", f"G{i}", _signal(seed=i), dx="164889003")
  skipped = SkipCounter(max_examples=1)
  records = list(readers.read_challenge(tmp_path, source="g12ec", skipped=skipped))
  assert [r.record_id for r in records] == ["G0", "G1", "G2"]
  assert all(r.labels == ("AF",) for r in records)
  reasons = pd.Series(expected).value_counts().to_dict()
  assert dict(skipped.counts) == reasons and skipped.total == len(expected)
  assert skipped.summary().startswith(f"skipped {len(expected)}: ")
  assert "absurd sampling rate 2 (e.g. B_absurd_fs)" in skipped.summary()


def test_without_a_counter_skips_are_logged(tmp_path, caplog):
  _write_challenge(tmp_path, "A0001", _signal())
  flat = _signal()
  flat[:, 0] = 0.0
  _write_challenge(tmp_path, "A0002", flat)
  with caplog.at_level(logging.WARNING):
    records = list(readers.read_challenge(tmp_path, source="csn"))
  assert [r.record_id for r in records] == ["A0001"]
  assert any("A0002" in message and "flat lead" in message for message in caplog.messages)


def test_skip_counter_summary():
  counter = SkipCounter(max_examples=2)
  assert counter.summary() == "skipped 0"
  for item in ("a", "b", "c"):
    counter.add(item, RecordError(f"{item}: flat lead(s) V1", reason="flat lead"))
  counter.add("d", RecordError("d: something"))
  assert counter.summary() == "skipped 4: flat lead 3 (e.g. a, b); RecordError 1 (e.g. d)"
