"""Synthetic ECGs (pulse_jax.ecg.synth) and corpora in the real on-disk layouts (pulse_jax.ecg.corpus).

The signal tests look for each finding where a cardiologist would, on clean (noise-free) records, measured
from the ground-truth QRS onsets; the corpus tests write each layout and read it back with pulse_jax.ecg.readers.
"""

import ast
import collections
import re

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.signal
import tqdm

from pulse_jax import cli
from pulse_jax.ecg import corpus, readers, snomed, synth
from pulse_jax.ecg.leads import STANDARD_LEADS
from pulse_jax.ecg.synth import EcgSpec
from pulse_jax.errors import ConfigError

N_PER_LAYOUT = 16
PTBXL_SUPERCLASS = {"NORM": "NORM", "IMI": "MI", "AMI": "MI", "LMI": "MI", "ISCIN": "STTC", "ISCAN": "STTC",
                    "ISCLA": "STTC", "1AVB": "CD", "CRBBB": "CD", "CLBBB": "CD", "LVH": "HYP"}


def _clean(spec: EcgSpec, seed: int = 0, **kwargs):
  return synth.synthesize(spec, seed=seed, noise=False, **kwargs)


def _conducted_beat(record) -> float:
  """QRS onset (s) of a conducted beat in the middle of the record."""
  truth = record.extra["ground_truth"]
  onsets = [t for t, kind in zip(truth["beat_onsets_s"], truth["beat_kinds"]) if kind == "N"]
  return onsets[len(onsets) // 2]


def _window(record, lead: str, onset_s: float, start_ms: float, end_ms: float) -> np.ndarray:
  """Samples of `lead` from onset + start_ms to onset + end_ms, relative to the PR-segment level."""
  x = record.lead(lead)
  at = lambda ms: int(round((onset_s + ms / 1000) * record.fs))
  baseline = x[at(-10):at(-2)].mean()
  return x[at(start_ms):at(end_ms)] - baseline


def _st_level(record, lead: str) -> float:
  """ST level (mV) at the J point + 60 ms of a conducted beat."""
  onset = _conducted_beat(record)
  j_ms = record.extra["ground_truth"]["qrs_ms"]
  return float(_window(record, lead, onset, j_ms + 55, j_ms + 65).mean())


# --- Lead system, determinism, record fields --------------------------------------------------------------------


def test_limb_leads_obey_einthoven_and_goldberger_with_noise():
  record = synth.synthesize(EcgSpec("atrial_fibrillation", ("right_bundle_branch_block",)), seed=3)
  i, ii, iii, avr, avl, avf = (record.lead(name).astype(np.float64) for name in STANDARD_LEADS[:6])
  np.testing.assert_allclose(ii, i + iii, atol=1e-5)
  np.testing.assert_allclose(avr, -(i + ii) / 2, atol=1e-5)
  np.testing.assert_allclose(avl, i - ii / 2, atol=1e-5)
  np.testing.assert_allclose(avf, ii - i / 2, atol=1e-5)


def test_same_seed_same_record_other_seed_other_record():
  spec = EcgSpec(findings=("premature_ventricular_complexes",))
  a, b, c = (synth.synthesize(spec, seed=seed) for seed in ((1, 2), (1, 2), (1, 3)))
  np.testing.assert_array_equal(a.signal, b.signal)
  assert a.extra == b.extra and a.report == b.report
  assert not np.allclose(a.signal, c.signal)


def test_record_fields_and_ground_truth():
  spec = EcgSpec("sinus_bradycardia", ("first_degree_av_block", "st_elevation"), territory="anterior")
  record = synth.synthesize(spec, fs=400, seconds=7.0, seed=5, age=70, sex="F")
  assert record.signal.shape == (12, 2800) and record.signal.dtype == np.float32 and record.fs == 400
  assert record.provenance.source == "synthetic" and record.record_id == "synthetic-5"
  assert record.labels == ("sinus_bradycardia", "first_degree_av_block", "st_elevation")
  assert (record.age, record.sex) == (70, "F")
  truth = record.extra["ground_truth"]
  assert truth["rhythm"] == "sinus_bradycardia" and truth["findings"] == ["first_degree_av_block", "st_elevation"]
  assert truth["territory"] == "anterior" and truth["normal"] is False
  assert truth["heart_rate_bpm"] < 60 and truth["pr_ms"] > 200 and 60 < truth["qrs_ms"] < 120
  assert truth["qtc_ms"] == pytest.approx(truth["qt_ms"] / np.sqrt(truth["rr_mean_ms"] / 1000), abs=0.1)
  assert all(0 <= t + truth["qrs_ms"] / 2000 < 7.0 for t in truth["beat_onsets_s"])
  assert set(truth["beat_kinds"]) == {"N"}
  assert record.report.startswith("Sinus bradycardia. First degree AV block. ST elevation in the anterior leads")
  assert f"PR {truth['pr_ms']:.0f} ms" in record.report
  assert EcgSpec(**record.extra["spec"]).labels == spec.labels


def test_spec_is_validated_and_normalised():
  spec = EcgSpec(findings=("premature_atrial_complexes", "right_bundle_branch_block"))
  assert spec.findings == ("right_bundle_branch_block", "premature_atrial_complexes")
  assert EcgSpec().is_normal and not EcgSpec("sinus_tachycardia").is_normal
  for bad in (dict(rhythm="atrial_flutter"), dict(findings=("wpw",)), dict(territory="posterior"),
              dict(rhythm="atrial_fibrillation", findings=("first_degree_av_block",)),
              dict(rhythm="atrial_fibrillation", findings=("premature_atrial_complexes",)),
              dict(findings=("right_bundle_branch_block", "left_bundle_branch_block")),
              dict(findings=("st_elevation", "st_depression")),
              dict(rhythm="sinus_bradycardia", heart_rate=75.0), dict(heart_rate=120.0)):
    with pytest.raises(ConfigError):
      EcgSpec(**bad)


def test_sample_spec_mix_and_restriction():
  rng = np.random.default_rng(0)
  specs = [synth.sample_spec(rng) for _ in range(400)]
  counts = collections.Counter(label for spec in specs for label in spec.labels)
  assert 0.25 < sum(spec.is_normal for spec in specs) / len(specs) < 0.45
  assert set(counts) == set(synth.RHYTHMS) | set(synth.FINDINGS)
  assert sum(len(spec.findings) == 2 for spec in specs) > 20  # combinations occur
  for spec in specs:  # never a pair where one finding hides the other
    assert not (spec.has("left_bundle_branch_block") and synth.TERRITORIAL_FINDINGS & set(spec.findings))
    assert not (spec.rhythm == "sinus_tachycardia" and spec.has("first_degree_av_block"))
  cpsc = [synth.sample_spec(rng, rhythms=("sinus_rhythm", "atrial_fibrillation"),
                            findings=("st_depression", "premature_ventricular_complexes")) for _ in range(100)]
  assert {label for spec in cpsc for label in spec.labels} == {
      "sinus_rhythm", "atrial_fibrillation", "st_depression", "premature_ventricular_complexes"}


# --- Rhythm -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rhythm, low, high", [("sinus_rhythm", 60, 100), ("sinus_bradycardia", 30, 60),
                                               ("sinus_tachycardia", 100, 180)])
def test_sinus_rates_are_regular_and_in_range(rhythm, low, high):
  for seed in range(3):
    truth = _clean(EcgSpec(rhythm), seed).extra["ground_truth"]
    rr = np.diff(truth["beat_onsets_s"])
    assert low < truth["heart_rate_bpm"] < high
    assert rr.std() / rr.mean() < 0.05 and truth["pr_ms"] is not None


def test_atrial_fibrillation_is_irregular_with_fibrillatory_waves_and_no_p():
  record = _clean(EcgSpec("atrial_fibrillation"), seed=2)
  truth = record.extra["ground_truth"]
  rr = np.diff(truth["beat_onsets_s"])
  assert rr.std() / rr.mean() > 0.12 and truth["pr_ms"] is None and truth["p_axis_deg"] is None
  # Between each T end and the next QRS the baseline oscillates at the f-wave rate (4-10 Hz) in V1.
  v1 = record.lead("V1")
  for onset, following in zip(truth["beat_onsets_s"], truth["beat_onsets_s"][1:]):
    start, end = int((onset + truth["qt_ms"] / 1000 + 0.03) * record.fs), int((following - 0.03) * record.fs)
    if end - start < 0.25 * record.fs:
      continue
    segment = v1[start:end] - v1[start:end].mean()
    crossings = np.count_nonzero(np.diff(np.sign(segment)) != 0)
    assert segment.std() > 0.01  # a clean sinus record is flat there, apart from its P wave
    assert 3.5 < crossings / 2 / ((end - start) / record.fs) < 10


def test_premature_ventricular_complex_is_early_wide_and_followed_by_a_compensatory_pause():
  record = _clean(EcgSpec(findings=("premature_ventricular_complexes",), heart_rate=70.0), seed=1)
  truth = record.extra["ground_truth"]
  onsets, kinds = np.array(truth["beat_onsets_s"]), truth["beat_kinds"]
  rr = 60 / 70
  for i in [k for k, kind in enumerate(kinds) if kind == "V"]:
    coupling, pause = onsets[i] - onsets[i - 1], onsets[i + 1] - onsets[i]
    assert coupling < 0.75 * rr and coupling + pause == pytest.approx(2 * rr, rel=0.06)
    # Wide and tall: the PVC's QRS vector is larger than a conducted one's and lasts beyond 120 ms.
    spatial = lambda onset, start, end: np.sqrt(sum(_window(record, lead, onset, start, end) ** 2
                                                   for lead in STANDARD_LEADS))
    assert spatial(onsets[i], 0, 180).max() > 1.15 * spatial(_conducted_beat(record), 0, 180).max()
    assert spatial(onsets[i], 100, 125).min() > 0.5  # still inside the QRS after 120 ms


def test_premature_atrial_complex_is_early_and_resets_the_sinus_node():
  record = _clean(EcgSpec(findings=("premature_atrial_complexes",), heart_rate=75.0), seed=4)
  truth = record.extra["ground_truth"]
  onsets, kinds = np.array(truth["beat_onsets_s"]), truth["beat_kinds"]
  rr = 60 / 75
  early = [i for i, kind in enumerate(kinds) if kind == "A"]
  assert early
  for i in early:
    coupling, after = onsets[i] - onsets[i - 1], onsets[i + 1] - onsets[i]
    assert coupling < 0.75 * rr and after == pytest.approx(rr, rel=0.06)  # no compensatory pause


# --- Morphology ---------------------------------------------------------------------------------------------------


def test_normal_r_wave_progression():
  for seed in range(5):
    record = _clean(EcgSpec(), seed)
    onset, qrs = _conducted_beat(record), record.extra["ground_truth"]["qrs_ms"]
    r = {lead: _window(record, lead, onset, 0, qrs).max() for lead in ("V1", "V4", "V5")}
    s = {lead: -_window(record, lead, onset, 0, qrs).min() for lead in ("V1", "V5")}
    assert s["V1"] > r["V1"] and r["V5"] > s["V5"]  # rS in V1, Rs in V5
    assert r["V1"] < 0.7 * min(r["V4"], r["V5"])  # R grows across the transition


def test_right_bundle_branch_block_rsr_prime_in_v1_and_wide_s_in_i_v6():
  for seed in range(3):
    record = _clean(EcgSpec(findings=("right_bundle_branch_block",)), seed)
    onset, qrs = _conducted_beat(record), record.extra["ground_truth"]["qrs_ms"]
    assert qrs >= 120
    v1 = _window(record, "V1", onset, 0, qrs)
    late = len(v1) * 6 // 10
    assert v1[late:].max() > 0.3 and v1[:late].min() < -0.1  # S then a tall terminal R'
    for lead in ("I", "V6"):
      assert _window(record, lead, onset, 0.6 * qrs, qrs).min() < -0.1  # late, broad S


def test_left_bundle_branch_block_qs_in_v1_and_broad_r_without_q_in_v6():
  for seed in range(3):
    record = _clean(EcgSpec(findings=("left_bundle_branch_block",)), seed)
    onset, qrs = _conducted_beat(record), record.extra["ground_truth"]["qrs_ms"]
    assert qrs >= 120
    v1, v6 = _window(record, "V1", onset, 0, qrs), _window(record, "V6", onset, 0, qrs)
    assert v1.min() < -0.8 and v1.max() < 0.25
    assert v6.max() > 0.6 and _window(record, "V6", onset, 0, 30).min() > -0.05  # no septal q
    assert np.count_nonzero(v6 > 0.5 * v6.max()) / record.fs > 0.04  # broad


@pytest.mark.parametrize("territory", synth.TERRITORIES)
@pytest.mark.parametrize("finding, sign", [("st_elevation", 1), ("st_depression", -1)])
def test_st_deviation_shows_in_the_territory(finding, sign, territory):
  for seed in range(2):
    record = _clean(EcgSpec(findings=(finding,), territory=territory), seed)
    levels = [sign * _st_level(record, lead) for lead in synth.TERRITORY_LEADS[territory]]
    assert min(levels) > 0.05 and sorted(levels)[-2] >= 0.1  # >= 1 mm in two contiguous leads
    assert abs(_st_level(_clean(EcgSpec(), seed), synth.TERRITORY_LEADS[territory][0])) < 0.05


@pytest.mark.parametrize("territory", synth.TERRITORIES)
def test_old_infarct_gives_q_waves_in_the_territory(territory):
  record = _clean(EcgSpec(findings=("myocardial_infarction",), territory=territory), seed=0)
  onset = _conducted_beat(record)
  depths = [-_window(record, lead, onset, 0, 40).min() for lead in synth.TERRITORY_LEADS[territory]]
  assert sorted(depths)[-2] > 0.15


def test_left_ventricular_hypertrophy_meets_sokolow_lyon():
  def sokolow(record):
    onset, qrs = _conducted_beat(record), record.extra["ground_truth"]["qrs_ms"]
    return (-_window(record, "V1", onset, 0, qrs).min()
            + max(_window(record, lead, onset, 0, qrs).max() for lead in ("V5", "V6")))
  for seed in range(3):
    assert sokolow(_clean(EcgSpec(findings=("left_ventricular_hypertrophy",)), seed)) > 3.5
    assert sokolow(_clean(EcgSpec(), seed)) < 3.5


# --- Corpora in the real layouts -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
  """Each layout written once: {layout: (root, records as synthesized)}."""
  written = {}
  for layout in corpus.LAYOUTS:
    root = tmp_path_factory.mktemp(layout)
    written[layout] = (root, corpus.write_corpus(layout, root, N_PER_LAYOUT, seed=7))
  return written


def _spec(record) -> EcgSpec:
  return EcgSpec(**record.extra["spec"])


def _read_back(written, read):
  """Pairs each synthesized record with the one read back, by record id."""
  by_id = {record.record_id: record for record in read}
  assert sorted(by_id) == sorted(record.record_id for record in written)
  return [(record, by_id[record.record_id]) for record in written]


def test_ptbxl_layout_round_trip(corpora):
  root, written = corpora["ptbxl"]
  database = pd.read_csv(root / "ptbxl_database.csv", index_col="ecg_id")
  assert database.shape == (N_PER_LAYOUT, 27) and database.index.name == "ecg_id"  # 28 columns with the index
  assert (database.groupby("patient_id")["strat_fold"].nunique() == 1).all()
  assert database["patient_id"].value_counts().max() > 1  # some patients have several records
  assert set(database["strat_fold"]) <= set(range(1, 11))
  statements = pd.read_csv(root / "scp_statements.csv", index_col=0)
  assert list(statements.columns) == ["description", "diagnostic", "form", "rhythm", "diagnostic_class",
                                      "diagnostic_subclass", "Statement Category", "SCP-ECG Statement Description",
                                      "AHA code", "aECG REFID", "CDISC Code", "DICOM Code"]
  for codes in database["scp_codes"]:
    assert set(ast.literal_eval(codes)) <= set(statements.index)
  header = (root / "records500" / "00000" / "00001_hr.hea").read_text().splitlines()
  assert header[0] == "00001_hr 12 500 5000" and header[4].endswith(" AVR")
  assert " 16 1000.0(0)/mV 16 0 " in header[1]

  pairs = _read_back(written, readers.read_ptbxl(root))
  for synthesized, read in pairs:
    spec = _spec(synthesized)
    superclasses = {PTBXL_SUPERCLASS[c] for c in corpus.ptbxl_scp_codes(spec) if c in PTBXL_SUPERCLASS}
    assert set(read.labels) == superclasses
    assert ("NORM" in read.labels) == (not set(spec.findings) - {"premature_ventricular_complexes",
                                                                "premature_atrial_complexes"}
                                      and spec.rhythm != "atrial_fibrillation")
    np.testing.assert_allclose(read.signal, synthesized.signal, atol=5.1e-4)  # 1 uV steps
    assert read.report == synthesized.report and read.age == synthesized.age and read.sex == synthesized.sex
  low = {r.record_id: r for r in readers.read_ptbxl(root, sampling_rate=100)}
  assert all(r.fs == 100 and r.signal.shape == (12, 1000) for r in low.values())
  for synthesized, _ in pairs:  # the 500 Hz record, anti-aliased and decimated
    np.testing.assert_allclose(low[synthesized.record_id].signal,
                               scipy.signal.resample_poly(synthesized.signal, 1, 5, axis=1), atol=5.1e-4)


def test_mimic_layout_round_trip(corpora):
  root, written = corpora["mimic"]
  records = pd.read_csv(root / "record_list.csv")
  assert list(records.columns) == ["subject_id", "study_id", "file_name", "ecg_time", "path"]
  measurements = pd.read_csv(root / "machine_measurements.csv")
  assert [f"report_{k}" for k in range(18)] == [c for c in measurements.columns if c.startswith("report_")]
  assert set(readers.MIMIC_MEASUREMENTS) <= set(measurements.columns)
  subject, study, path = records.iloc[0][["subject_id", "study_id", "path"]]
  assert path == f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
  header = (root / f"{path}.hea").read_text().splitlines()
  assert re.fullmatch(rf"{study} 12 500 5000 \d\d:\d\d:\d\d \d\d/\d\d/2\d\d\d", header[0])
  assert header[1].startswith(f"{study}.dat 16 200.0(0)/mV 16 0 ") and header[13] == f"# <subject_id>: {subject}"
  assert [line.split()[-1] for line in header[1:13]] == ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3",
                                                         "V4", "V5", "V6"]

  for synthesized, read in _read_back(written, readers.read_mimic(root)):
    spec, truth = _spec(synthesized), synthesized.extra["ground_truth"]
    assert read.report == " ".join(synth.statements(spec))
    np.testing.assert_allclose(read.signal, synthesized.signal, atol=2.6e-3)  # 5 uV steps, aVF/aVL swapped back
    assert read.extra["qrs_end"] - read.extra["qrs_onset"] == pytest.approx(truth["qrs_ms"], abs=0.5)
    assert (read.extra["p_onset"] is None) == (spec.rhythm == "atrial_fibrillation")


def test_code15_layout_round_trip(corpora):
  root, written = corpora["code15"]
  exams = pd.read_csv(root / "exams.csv")
  assert list(exams.columns) == ["exam_id", "age", "is_male", "nn_predicted_age", "1dAVb", "RBBB", "LBBB", "SB",
                                 "ST", "AF", "patient_id", "death", "timey", "normal_ecg", "trace_file"]
  with h5py.File(root / "exams_part0.hdf5") as part:
    tracings, exam_ids = part["tracings"][:], part["exam_id"][:]
  assert tracings.shape == (N_PER_LAYOUT + 1, 4096, 12) and tracings.dtype == np.float32
  assert exam_ids[-1] == 0 and not tracings[-1].any() and list(exam_ids[:-1]) == list(exams["exam_id"])
  for tracing in tracings[:-1]:  # 7 s or 10 s, centred
    recorded = np.flatnonzero(tracing.any(axis=1))
    length = recorded[-1] + 1 - recorded[0]
    assert length in (2800, 4000) and recorded[0] == (4096 - length) // 2

  for synthesized, read in _read_back(written, readers.read_code15(root)):
    spec = _spec(synthesized)
    assert read.labels == corpus.code15_labels(spec) and read.extra["normal_ecg"] == spec.is_normal
    assert read.fs == 400 and set(spec.findings) <= {"first_degree_av_block", "right_bundle_branch_block",
                                                     "left_bundle_branch_block"}
    np.testing.assert_array_equal(read.signal, synthesized.signal)


def test_challenge_layout_round_trip(corpora):
  root, written = corpora["challenge"]
  folder = root / "training" / "cpsc_2018" / "g1"
  header = (folder / "A0001.hea").read_text().splitlines()
  assert header[0].startswith("A0001 12 500 ") and header[0].endswith(" 05-Feb-2020 11:39:16")
  assert header[1].startswith("A0001.mat 16+24 1000/mV 16 0 ") and header[1].endswith(" 0 I")
  assert header[13].startswith("#Age: ") and header[14] in ("#Sex: Male", "#Sex: Female")
  assert header[15].startswith("#Dx: ")
  val = scipy.io.loadmat(folder / "A0001.mat")["val"]
  assert val.dtype == np.int16 and val.shape == (12, int(header[0].split()[3]))
  assert [int(line.split()[5]) for line in header[1:13]] == list(val[:, 0])
  data = (folder / "A0001.mat").read_bytes()
  assert np.array_equal(np.frombuffer(data[24:], "<i2").reshape(-1, 12).T, val)  # the `16+24` promise

  for synthesized, read in _read_back(written, readers.read_challenge(root, source="cpsc")):
    labels = corpus.cpsc_labels(_spec(synthesized))
    assert read.labels == labels and set(labels) <= set(snomed.CPSC_LABELS)
    np.testing.assert_allclose(read.signal, synthesized.signal, atol=5.1e-4)
    assert 10 <= read.duration_s <= 15


def test_corpora_are_deterministic(tmp_path):
  first = corpus.write_corpus("code15", tmp_path / "a", 4, seed=1)
  second = corpus.write_corpus("code15", tmp_path / "b", 4, seed=1)
  assert [r.record_id for r in first] == [r.record_id for r in second]
  assert (tmp_path / "a" / "exams.csv").read_text() == (tmp_path / "b" / "exams.csv").read_text()


def test_progress_bar_advances_as_records_are_written(tmp_path, monkeypatch):
  """The bar hands out each record just before it is synthesized and written, not all of them up front."""
  handed_out, handed_out_at_synthesis = [], []

  class RecordingBar(tqdm.tqdm):
    def __iter__(self):
      for draw in super().__iter__():
        handed_out.append(draw)
        yield draw

  synthesize = corpus._record
  monkeypatch.setattr(corpus, "tqdm", RecordingBar)
  monkeypatch.setattr(corpus, "_record", lambda *args, **kwargs: (handed_out_at_synthesis.append(len(handed_out)),
                                                                  synthesize(*args, **kwargs))[1])
  corpus.write_corpus("challenge", tmp_path, 3, progress=True)
  assert handed_out_at_synthesis == [1, 2, 3]


def test_synth_command(tmp_path, capsys):
  assert cli.main(["synth", "--layout", "challenge", "--n", "3", "--out", str(tmp_path), "--seed", "2"]) == 0
  assert "wrote 3 challenge records" in capsys.readouterr().out
  assert len(list((tmp_path / "training" / "cpsc_2018" / "g1").glob("A*.hea"))) == 3
  assert cli.main(["synth", "--layout", "ptbxl", "--n", "0", "--out", str(tmp_path / "empty")]) == 1
  with pytest.raises(SystemExit):
    cli.main(["synth", "--layout", "csn", "--n", "3", "--out", str(tmp_path)])
