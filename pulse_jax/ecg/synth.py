"""Synthetic 12-lead ECGs with a controllable rhythm and findings, and known ground truth.

Model. The heart is a time-varying dipole H(t) = (X left, Y inferior, Z posterior) in mV, built per beat from
asymmetric raised-cosine waves (P as right + left atrial components, QRS as septal / main / terminal forces,
ST and T), each with a 3-D direction. Raised cosines have compact support, so every interval of the ground
truth (PR, QRS, QT) is exact by construction rather than a threshold on a Gaussian tail. Leads are linear
projections of H: I and II on the ideal Einthoven triangle (the frontal plane), V1..V6 with the precordial rows
of Dower's transform (mostly the horizontal plane, which gives the R-wave progression V1 -> V6), and III, aVR,
aVL, aVF from Einthoven's and Goldberger's identities. Noise is generated per electrode (RA, LA, LL, C1..C6)
and referenced the way an electrocardiograph does, so those identities hold exactly for the noisy signal too.

Findings change the beat model where a cardiologist would look: rate and RR pattern (sinus bradycardia,
tachycardia, atrial fibrillation with f-waves and no P), PR (1st-degree AV block), late right-anterior forces
(RBBB: rSR' in V1, broad S in I/V6), reversed septal activation with two notched left forces (LBBB), an ST
vector towards (elevation) or away from (depression) a lead territory, initial forces away from an infarct
territory (Q waves), high voltage (LVH), and ectopic beats (PVC: early, wide, no P, compensatory pause; PAC:
early abnormal P, normal QRS, sinus reset).
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import signal as sps

from pulse_jax.ecg.leads import STANDARD_LEADS
from pulse_jax.ecg.record import EcgRecord, Provenance, validate_signal
from pulse_jax.errors import ConfigError

RHYTHMS: tuple[str, ...] = ("sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia", "atrial_fibrillation")
FINDINGS: tuple[str, ...] = (
    "first_degree_av_block", "right_bundle_branch_block", "left_bundle_branch_block", "st_elevation",
    "st_depression", "myocardial_infarction", "left_ventricular_hypertrophy", "premature_ventricular_complexes",
    "premature_atrial_complexes")
# Leads facing each wall of the left ventricle; ST changes and infarct Q waves appear there.
TERRITORY_LEADS: dict[str, tuple[str, ...]] = {
    "inferior": ("II", "III", "aVF"),
    "anterior": ("V1", "V2", "V3", "V4"),
    "lateral": ("I", "aVL", "V5", "V6"),
}
TERRITORIES: tuple[str, ...] = tuple(TERRITORY_LEADS)
TERRITORIAL_FINDINGS = frozenset({"st_elevation", "st_depression", "myocardial_infarction"})

# Pairs that cannot coexist: no P waves in AF; one bundle branch; one ST direction per territory.
_CONFLICTS = frozenset(frozenset(pair) for pair in (
    ("atrial_fibrillation", "first_degree_av_block"), ("atrial_fibrillation", "premature_atrial_complexes"),
    ("right_bundle_branch_block", "left_bundle_branch_block"), ("st_elevation", "st_depression")))
# Pairs sample_spec does not draw together because one hides the other: LBBB distorts ST segments and the
# initial forces by itself, and at sinus-tachycardia rates a long PR buries the P wave in the preceding T.
_HIDDEN_PAIRS = frozenset(frozenset(pair) for pair in (
    *(("left_bundle_branch_block", f) for f in ("st_elevation", "st_depression", "myocardial_infarction",
                                               "left_ventricular_hypertrophy")),
    ("sinus_tachycardia", "first_degree_av_block")))

# Heart rate (bpm) allowed per rhythm, and the narrower range drawn when a spec leaves the rate open (kept
# away from the 60/100 bpm borders so that labels stay unambiguous after measurement error).
_RATE_LIMITS = {"sinus_rhythm": (60.0, 100.0), "sinus_bradycardia": (30.0, 60.0),
                "sinus_tachycardia": (100.0, 180.0), "atrial_fibrillation": (40.0, 180.0)}
_RATE_DRAWN = {"sinus_rhythm": (62.0, 95.0), "sinus_bradycardia": (40.0, 56.0),
               "sinus_tachycardia": (106.0, 145.0), "atrial_fibrillation": (70.0, 130.0)}


@dataclasses.dataclass(frozen=True)
class EcgSpec:
  """What a synthetic ECG shows.

  Attributes:
    rhythm: one of RHYTHMS.
    findings: names from FINDINGS (any order on input; stored in FINDINGS order, without duplicates).
    territory: one of TERRITORIES, where ST changes and infarct Q waves are placed.
    heart_rate: mean ventricular rate in bpm, inside the rhythm's range; None draws one at synthesis.

  Raises:
    ConfigError: for unknown names, a rate outside the rhythm's range, or findings that cannot coexist.
  """
  rhythm: str = "sinus_rhythm"
  findings: tuple[str, ...] = ()
  territory: str = "inferior"
  heart_rate: float | None = None

  def __post_init__(self):
    if self.rhythm not in RHYTHMS:
      raise ConfigError(f"unknown rhythm {self.rhythm!r}; expected one of {', '.join(RHYTHMS)}")
    unknown = set(self.findings) - set(FINDINGS)
    if unknown:
      raise ConfigError(f"unknown finding(s) {', '.join(sorted(unknown))}; expected names from {FINDINGS}")
    if self.territory not in TERRITORIES:
      raise ConfigError(f"unknown territory {self.territory!r}; expected one of {', '.join(TERRITORIES)}")
    object.__setattr__(self, "findings", tuple(f for f in FINDINGS if f in self.findings))
    present = {self.rhythm, *self.findings}
    for pair in _CONFLICTS:
      if pair <= present:
        raise ConfigError(f"findings cannot coexist: {' and '.join(sorted(pair))}")
    if self.heart_rate is not None:
      low, high = _RATE_LIMITS[self.rhythm]
      if not low <= self.heart_rate <= high:
        raise ConfigError(f"heart rate {self.heart_rate} bpm is outside [{low:g}, {high:g}] for {self.rhythm}")

  @property
  def labels(self) -> tuple[str, ...]:
    """The rhythm followed by the findings: the labels of the synthesized EcgRecord."""
    return (self.rhythm, *self.findings)

  @property
  def is_normal(self) -> bool:
    """A normal ECG: sinus rhythm between 60 and 100 bpm and nothing else."""
    return self.rhythm == "sinus_rhythm" and not self.findings

  def has(self, finding: str) -> bool:
    """Whether `finding` (a FINDINGS name) is among the findings."""
    return finding in self.findings


def sample_spec(rng: np.random.Generator, *, rhythms: Sequence[str] = RHYTHMS,
                findings: Sequence[str] = FINDINGS, normal_fraction: float = 0.35) -> EcgSpec:
  """Draws a spec from a clinic-like mix: `normal_fraction` normal ECGs, the rest abnormal.

  Abnormal draws pick a rhythm (sinus 50 %, bradycardia 15 %, tachycardia 15 %, AF 20 %, renormalised over
  `rhythms`) and 0-2 compatible findings from `findings` (at least one when the rhythm is plain sinus, so the
  record is abnormal), ST changes and infarcts in a random territory; never two findings of which one would hide
  the other. Restricting `rhythms`/`findings` keeps the labels inside a collection's taxonomy (CODE-15% has no
  ST classes, CPSC no bradycardia). The rate is drawn at synthesis.
  """
  if "sinus_rhythm" in rhythms and rng.random() < normal_fraction:
    return EcgSpec()
  weights = np.array([{"sinus_rhythm": 0.5, "atrial_fibrillation": 0.2}.get(r, 0.15) for r in rhythms])
  rhythm = str(rhythms[rng.choice(len(rhythms), p=weights / weights.sum())])
  count = int(rng.choice(3, p=[0.0, 0.7, 0.3] if rhythm == "sinus_rhythm" else [0.45, 0.4, 0.15]))
  excluded = _CONFLICTS | _HIDDEN_PAIRS
  chosen: list[str] = []
  for _ in range(count):
    present = {rhythm, *chosen}
    options = [f for f in findings if f not in present and not any(frozenset((f, p)) in excluded for p in present)]
    if not options:
      break
    chosen.append(str(options[rng.integers(len(options))]))
  territory = str(TERRITORIES[rng.integers(len(TERRITORIES))]) if TERRITORIAL_FINDINGS & set(chosen) else "inferior"
  return EcgSpec(rhythm=rhythm, findings=tuple(chosen), territory=territory)


def synthesize(spec: EcgSpec, *, fs: float = 500.0, seconds: float = 10.0, seed: int | Sequence[int] = 0,
               age: float | None = None, sex: str | None = None, noise: bool = True,
               record_id: str | None = None) -> EcgRecord:
  """Generates one 12-lead ECG showing `spec`, deterministic in `seed`.

  Args:
    spec: rhythm and findings.
    fs: sampling rate in Hz (waves are evaluated analytically, so any rate works: 100, 400, 500, 1000...).
    seconds: duration.
    seed: an int or a sequence of ints (e.g. (corpus seed, record index)) for numpy's default_rng.
    age, sex: demographics ('M' or 'F'); drawn when None. Women get a ~10 ms longer QTc, voltage falls with age.
    noise: add EMG-like broadband noise, baseline wander and (sometimes) mains hum; False gives a clean trace.
    record_id: the provenance id; defaults to 'synthetic-<seed>'.

  Returns:
    EcgRecord with signal float32[12, round(seconds*fs)] in mV, labels = spec.labels, provenance source
    'synthetic', a one-paragraph English report, and extra['ground_truth'] = {heart_rate_bpm, rr_mean_ms, pr_ms
    (None in AF), p_ms, qrs_ms, qt_ms, qtc_ms (Bazett), qrs_axis_deg, p_axis_deg, t_axis_deg, rhythm, findings,
    territory, normal, beat_onsets_s, beat_kinds ('N' conducted, 'V' PVC, 'A' PAC)} measured on the dominant
    conducted beat. The beats are those whose QRS midpoint lies inside the record (so the first onset may be
    slightly negative). extra['spec'] holds the spec's fields with the rate actually used.
  """
  seed_key = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
  rng = np.random.default_rng(seed_key)
  if age is None:
    age = float(rng.integers(18, 91))
  if sex is None:
    sex = "M" if rng.random() < 0.5 else "F"
  if sex not in ("M", "F"):
    raise ConfigError(f"sex must be 'M' or 'F', got {sex!r}")
  n_samples = int(round(seconds * fs))
  heart_rate = spec.heart_rate if spec.heart_rate is not None else float(rng.uniform(*_RATE_DRAWN[spec.rhythm]))
  rr_s = 60.0 / heart_rate
  beat = _beat_morphology(spec, rng, rr_s=rr_s, age=age, sex=sex)
  onsets, kinds = _beat_schedule(spec, rng, rr_s=rr_s, seconds=seconds, qt_s=beat.qt_s)

  dipole = np.zeros((3, n_samples))
  resp_hz, resp_phase = rng.uniform(0.15, 0.35), rng.uniform(0, 2 * np.pi)
  for onset, kind in zip(onsets, kinds):
    # Breathing moves the heart: QRS/T amplitude varies by a few per cent from beat to beat.
    scale = 1.0 + 0.05 * math.sin(2 * np.pi * resp_hz * onset + resp_phase)
    for wave in beat.waves_for(kind):
      _add_wave(dipole, fs, wave, onset, scale)
  if spec.rhythm == "atrial_fibrillation":
    dipole += _fibrillatory_waves(rng, n_samples, fs)
  independent = _DIPOLE_TO_INDEPENDENT @ dipole
  if noise:
    independent += _ELECTRODES_TO_INDEPENDENT @ _electrode_noise(rng, n_samples, fs, resp_hz)
  record_id = record_id or "synthetic-" + "-".join(map(str, seed_key))
  signal = validate_signal(_INDEPENDENT_TO_LEADS @ independent, fs, record_id)

  truth = _ground_truth(spec, beat, onsets, kinds, seconds)
  return EcgRecord(
      signal=signal, fs=float(fs), labels=spec.labels,
      provenance=Provenance(source="synthetic", record_id=record_id, path=""),
      report=_report_text(spec, truth), age=age, sex=sex,
      extra={"ground_truth": truth, "spec": dataclasses.asdict(dataclasses.replace(spec, heart_rate=heart_rate))})


# --- Report text ----------------------------------------------------------------------------------------------

_RHYTHM_STATEMENTS = {"sinus_rhythm": "Sinus rhythm", "sinus_bradycardia": "Sinus bradycardia",
                      "sinus_tachycardia": "Sinus tachycardia", "atrial_fibrillation": "Atrial fibrillation"}


def statements(spec: EcgSpec) -> tuple[str, ...]:
  """Machine-style English statements: the rhythm, one per finding, then 'Normal ECG' or 'Abnormal ECG'."""
  leads = ", ".join(TERRITORY_LEADS[spec.territory])
  wall = spec.territory
  text = {
      "first_degree_av_block": "First degree AV block",
      "right_bundle_branch_block": "Right bundle branch block",
      "left_bundle_branch_block": "Left bundle branch block",
      "st_elevation": f"ST elevation in the {wall} leads ({leads}), consistent with acute injury",
      "st_depression": f"ST depression in the {wall} leads ({leads}), consistent with ischemia",
      "myocardial_infarction": f"Q waves in the {wall} leads ({leads}), consistent with an old {wall} infarct",
      "left_ventricular_hypertrophy": "Left ventricular hypertrophy by voltage criteria",
      "premature_ventricular_complexes": "Premature ventricular complexes",
      "premature_atrial_complexes": "Premature atrial complexes",
  }
  verdict = "Normal ECG" if spec.is_normal else "Abnormal ECG"
  return (_RHYTHM_STATEMENTS[spec.rhythm], *(text[f] for f in spec.findings), verdict)


def _report_text(spec: EcgSpec, truth: dict) -> str:
  """A short English report: the statements, then rate, intervals and axis from the ground truth."""
  pr = f"PR {truth['pr_ms']:.0f} ms, " if truth["pr_ms"] is not None else ""
  numbers = (f"Heart rate {truth['heart_rate_bpm']:.0f} bpm, {pr}QRS {truth['qrs_ms']:.0f} ms, "
             f"QT/QTc {truth['qt_ms']:.0f}/{truth['qtc_ms']:.0f} ms, QRS axis {truth['qrs_axis_deg']:+.0f} degrees.")
  return ". ".join(statements(spec)) + ". " + numbers


# --- Lead projection ------------------------------------------------------------------------------------------

# Frontal-plane gain of the limb leads, chosen so limb and chest amplitudes keep realistic proportions with
# Dower's chest coefficients (his lead I row has a gain of about 0.65, lead II about 1.1).
_LIMB_GAIN = 0.8
# Dower's transform, precordial rows: V = row . (X, Y, Z).
_DOWER_PRECORDIAL = np.array([
    [-0.515, 0.157, -0.917], [0.044, 0.164, -1.387], [0.882, 0.098, -1.277],
    [1.213, 0.127, -0.601], [1.125, 0.127, -0.086], [0.831, 0.076, 0.230]])
# Independent leads (I, II, V1..V6) from the dipole: I at 0 deg and II at +60 deg of the Einthoven triangle.
_DIPOLE_TO_INDEPENDENT = np.vstack([
    _LIMB_GAIN * np.array([[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0]]), _DOWER_PRECORDIAL])
# All 12 leads from (I, II, V1..V6): III = II - I, aVR = -(I + II)/2, aVL = I - II/2, aVF = II - I/2.
_INDEPENDENT_TO_LEADS = np.zeros((12, 8))
_INDEPENDENT_TO_LEADS[:6, :2] = [[1, 0], [0, 1], [-1, 1], [-0.5, -0.5], [1, -0.5], [-0.5, 1]]
_INDEPENDENT_TO_LEADS[6:, 2:] = np.eye(6)
# Independent leads from electrode potentials (RA, LA, LL, C1..C6): I = LA - RA, II = LL - RA, and each chest
# lead against Wilson's central terminal (RA + LA + LL)/3.
_ELECTRODES_TO_INDEPENDENT = np.zeros((8, 9))
_ELECTRODES_TO_INDEPENDENT[0, :3] = [-1, 1, 0]
_ELECTRODES_TO_INDEPENDENT[1, :3] = [-1, 0, 1]
_ELECTRODES_TO_INDEPENDENT[2:, :3] = -1 / 3
_ELECTRODES_TO_INDEPENDENT[2:, 3:] = np.eye(6)
# Unit dipoles facing each territory (X left, Y inferior, Z posterior).
_TERRITORY_DIRECTION = {name: v / np.linalg.norm(v) for name, v in {
    "inferior": np.array([0.0, 1.0, 0.0]),
    "anterior": np.array([0.15, 0.0, -1.0]),
    "lateral": np.array([1.0, -0.35, 0.15]),
}.items()}


def _lead_projection(vector: np.ndarray, leads: Sequence[str]) -> np.ndarray:
  """mV seen in `leads` for a constant dipole `vector`."""
  all_leads = _INDEPENDENT_TO_LEADS @ _DIPOLE_TO_INDEPENDENT @ vector
  return np.array([all_leads[STANDARD_LEADS.index(name)] for name in leads])


def _lead_magnitude(vector: np.ndarray) -> float:
  """Root sum of squares (mV) of what the 12 leads see of a constant dipole `vector`."""
  return float(np.linalg.norm(_INDEPENDENT_TO_LEADS @ _DIPOLE_TO_INDEPENDENT @ vector))


# --- Beat model -----------------------------------------------------------------------------------------------


class _Wave(NamedTuple):
  """An asymmetric raised cosine: 0 at `start`, peak `vector` (mV dipole) at `peak`, 0 again at `end`.

  Times are seconds from the beat's QRS onset (negative for P waves).
  """
  start: float
  peak: float
  end: float
  vector: np.ndarray


def _add_wave(dipole: np.ndarray, fs: float, wave: _Wave, onset: float, scale: float) -> None:
  """Adds `scale` x `wave`, shifted to QRS onset `onset` (s), into dipole[3, T] in place."""
  start, peak, end = onset + wave.start, onset + wave.peak, onset + wave.end
  i0, i1 = max(math.ceil(start * fs), 0), min(math.floor(end * fs) + 1, dipole.shape[1])
  if i0 >= i1:
    return
  t = np.arange(i0, i1) / fs
  phase = np.where(t < peak, (peak - t) / (peak - start), (t - peak) / (end - peak))
  dipole[:, i0:i1] += np.outer(scale * wave.vector, 0.5 * (1.0 + np.cos(np.pi * phase)))


def _sokolow_lyon(force: np.ndarray) -> float:
  """S in V1 plus R in V5 (mV) produced by one QRS force."""
  v1, v5 = _lead_projection(force, ("V1", "V5"))
  return max(-v1, 0.0) + max(v5, 0.0)


def _frontal(angle_deg: float, magnitude: float, z: float) -> np.ndarray:
  """A dipole of `magnitude` at a frontal-plane angle (0 = leftward, +90 = inferior) with posterior part z."""
  a = math.radians(angle_deg)
  return np.array([magnitude * math.cos(a), magnitude * math.sin(a), z])


def _area_axis(waves: Sequence[_Wave]) -> float:
  """Frontal axis (deg) of the net area of `waves`, i.e. atan2 of the aVF and lead I areas (scale-corrected).

  A raised cosine's area is (end - start)/2 times its peak, so the axis follows from the wave table exactly.
  """
  area = sum(w.vector * (w.end - w.start) / 2 for w in waves)
  return math.degrees(math.atan2(area[1], area[0]))


@dataclasses.dataclass(frozen=True)
class _BeatMorphology:
  """The per-record beat templates (times relative to QRS onset) and the intervals they imply (s)."""
  sinus_p: tuple[_Wave, ...]
  conducted: tuple[_Wave, ...]
  ectopic_p: tuple[_Wave, ...]
  ventricular_ectopic: tuple[_Wave, ...]
  qrs_waves: tuple[_Wave, ...]
  t_waves: tuple[_Wave, ...]
  pr_s: float
  p_s: float
  qrs_s: float
  qt_s: float

  def waves_for(self, kind: str) -> tuple[_Wave, ...]:
    """Waves of one beat: 'N' conducted (with the sinus P unless AF), 'A' ectopic P + QRST, 'V' PVC."""
    return {"N": self.sinus_p + self.conducted, "A": self.ectopic_p + self.conducted,
            "V": self.ventricular_ectopic}[kind]


def _beat_morphology(spec: EcgSpec, rng: np.random.Generator, *, rr_s: float, age: float,
                     sex: str) -> _BeatMorphology:
  """Draws one patient's beat: P, QRS, ST, T and the ectopic beats, shaped by the spec's findings."""
  voltage = rng.uniform(0.85, 1.15) * (1.1 - 0.004 * (age - 50))
  axis = float(np.clip(rng.normal(50, 20), -20, 75))
  qrs_s, qrs_waves = _depolarisation(spec, rng, voltage=voltage, axis=axis)
  # QT from a Bazett-constant QTc, lengthened by QRS widening.
  qtc = rng.uniform(0.385, 0.435) + (0.010 if sex == "F" else 0.0)
  qt_s = qtc * math.sqrt(rr_s) + 0.6 * max(qrs_s - 0.1, 0.0)
  st_waves, t_wave = _repolarisation(spec, rng, qrs_waves, voltage=voltage, axis=axis, qrs_s=qrs_s, qt_s=qt_s)
  pr_s, p_s, sinus_p, ectopic_p = _atrial_waves(spec, rng, rr_s=rr_s)
  return _BeatMorphology(
      sinus_p=sinus_p, conducted=qrs_waves + st_waves + (t_wave,), ectopic_p=ectopic_p,
      ventricular_ectopic=_ventricular_ectopic(rng, qrs_waves), qrs_waves=qrs_waves, t_waves=(t_wave,),
      pr_s=pr_s, p_s=p_s, qrs_s=qrs_s, qt_s=qt_s)


def _depolarisation(spec: EcgSpec, rng: np.random.Generator, *, voltage: float,
                    axis: float) -> tuple[float, tuple[_Wave, ...]]:
  """QRS duration (s) and waves, placed as fractions of it: the first starts at 0, the last ends at the offset."""
  u = rng.uniform
  qrs = u(0.080, 0.102)
  # The main force points along the frontal axis and, in the horizontal plane, leftward and posterior: rS in
  # V1-V2, transition around V3-V4, tallest R in V4-V5. Its Sokolow-Lyon voltage (S in V1 + R in V5) stays
  # under 2.8 mV, well clear of the LVH criterion (3.5 mV).
  main_force = _frontal(axis, voltage * u(1.4, 2.0), 0.0)
  main_force[2] = main_force[0] * u(0.2, 0.45) + 0.15 * np.linalg.norm(main_force)
  main_force *= min(1.0, 2.8 / _sokolow_lyon(main_force))
  if spec.has("left_ventricular_hypertrophy"):
    # A thicker left ventricle: a larger, more leftward-posterior main force with a Sokolow-Lyon voltage of
    # 4-5 mV, and a slightly wider QRS.
    qrs += u(0.008, 0.016)
    main_force = _frontal(max(axis - 15, -25), 1.0, 0.0)
    main_force[2] = main_force[0] * u(0.45, 0.7)
    main_force *= u(4.0, 5.0) / _sokolow_lyon(main_force)
  septal = np.array([-0.25, 0.08, -0.2]) * voltage * u(0.5, 0.9)  # rightward, anterior: r in V1, q in I/V6
  terminal = np.array([-0.35, -0.45, 0.45]) * voltage * u(0.4, 0.9)

  if spec.has("right_bundle_branch_block"):
    d = qrs = u(0.125, 0.155)
    return qrs, (_Wave(0, 0.1 * d, 0.2 * d, septal), _Wave(0.05 * d, 0.3 * d, 0.5 * d, 0.9 * main_force),
                 _Wave(0.4 * d, 0.5 * d, 0.62 * d, 0.5 * terminal),
                 # Late, slow right-ventricular activation: rightward and anterior -> R' in V1, S in I and V6.
                 _Wave(0.45 * d, 0.75 * d, d, np.array([-0.6, -0.05, -0.6]) * voltage * u(1.1, 1.5)))
  if spec.has("left_bundle_branch_block"):
    d = qrs = u(0.130, 0.165)
    left = float(np.clip(rng.normal(-5, 20), -45, 40))
    # No septal q: two broad leftward-posterior forces whose overlap leaves a notch (M shape in I, aVL, V5-V6,
    # broad QS in V1).
    k = voltage * u(1.2, 1.6)
    return qrs, (_Wave(0, 0.32 * d, 0.62 * d, _frontal(left + 15, 0.6 * k, 0.55 * k)),
                 _Wave(0.35 * d, 0.72 * d, d, _frontal(left - 5, 0.85 * k, 0.7 * k)))
  if spec.has("myocardial_infarction"):
    # Necrosis removes the forces of the infarcted wall: the first 40+ ms point away from it (Q waves) and the
    # main force loses most of its component towards it (small r after the Q).
    d = qrs = max(qrs, u(0.095, 0.110))
    territory = _TERRITORY_DIRECTION[spec.territory]
    main_force = main_force - 0.7 * territory * max(float(main_force @ territory), 0.0)
    initial = (_Wave(0, 0.22 * d, 0.45 * d, -territory * voltage * u(0.9, 1.3)),
               _Wave(0.25 * d, 0.52 * d, 0.78 * d, main_force))
  else:
    d = qrs
    initial = (_Wave(0, 0.14 * d, 0.28 * d, septal), _Wave(0.1 * d, 0.45 * d, 0.75 * d, main_force))
  return qrs, initial + (_Wave(0.55 * d, 0.8 * d, d, terminal),)


def _repolarisation(spec: EcgSpec, rng: np.random.Generator, qrs_waves: tuple[_Wave, ...], *, voltage: float,
                    axis: float, qrs_s: float, qt_s: float) -> tuple[tuple[_Wave, ...], _Wave]:
  """ST waves and the T wave: slow ascent, steeper descent, T peak to T end 80-110 ms whatever the rate."""
  u = rng.uniform
  jt = qt_s - qrs_s
  t_start, t_peak = qrs_s + 0.2 * jt, qt_s - min(u(0.08, 0.11), 0.4 * jt)
  mean_qrs = sum(w.vector * (w.end - w.start) for w in qrs_waves)
  mean_dir = mean_qrs / np.linalg.norm(mean_qrs)
  t_amp = voltage * u(0.3, 0.5)
  t_vector = _frontal(axis + rng.normal(0, 12), t_amp, -t_amp * u(0.3, 0.8))
  st_waves = []
  territory = _TERRITORY_DIRECTION[spec.territory]
  if spec.has("right_bundle_branch_block"):
    t_vector = 0.5 * t_vector + np.array([0.1, 0.05, 0.3]) * voltage * u(0.5, 0.7)  # T inverted in V1-V3
  if spec.has("left_bundle_branch_block"):
    # Secondary repolarisation changes: ST and T opposite to the QRS (discordant).
    t_vector = -mean_dir * voltage * u(0.3, 0.45)
    st_waves.append(_Wave(qrs_s - 0.01, qrs_s + 0.03, qt_s - 0.04, -mean_dir * voltage * u(0.1, 0.16)))
  if spec.has("myocardial_infarction"):
    t_vector = t_vector - territory * voltage * u(0.35, 0.5)  # T inverted over the scar
  # ST vector towards the territory (injury: convex elevation merging into a hyperacute T) or away from it
  # (ischaemia: depression with a flattened or inverted T), scaled so that the most affected territory lead
  # deviates by the drawn level (mV) just after the J point, still ~90 % of it 60 ms later.
  peak_mv = np.abs(_lead_projection(territory, TERRITORY_LEADS[spec.territory])).max()
  for finding, sign, level_mv, t_share in (("st_elevation", 1.0, (0.2, 0.4), 0.6),
                                           ("st_depression", -1.0, (0.15, 0.3), 1.2)):
    if spec.has(finding):
      st_vector = sign * territory * u(*level_mv) / peak_mv
      st_waves.append(_Wave(qrs_s - 0.015, qrs_s + 0.015, qt_s - 0.02, st_vector))
      t_vector = t_vector + t_share * st_vector
  return tuple(st_waves), _Wave(t_start, t_peak, qt_s, t_vector)


def _atrial_waves(spec: EcgSpec, rng: np.random.Generator, *,
                  rr_s: float) -> tuple[float, float, tuple[_Wave, ...], tuple[_Wave, ...]]:
  """PR and P duration (s), the sinus P (right then left atrium; none in AF) and a PAC's ectopic P."""
  u = rng.uniform
  p = u(0.085, 0.110)
  pr_range = {"sinus_tachycardia": (0.115, 0.160), "sinus_bradycardia": (0.140, 0.190)}.get(
      spec.rhythm, (0.125, 0.185))
  # 1st-degree AV block only lengthens the PR, which must still leave the P clear of the preceding T, so it
  # shortens at fast rates.
  pr = u(0.220, max(0.230, min(0.320, 0.5 * rr_s))) if spec.has("first_degree_av_block") else u(*pr_range)
  k = u(1.0, 1.5)
  turn = math.radians(float(np.clip(rng.normal(0, 12), -25, 25)))  # the P axis varies around +50 degrees
  frontal_turn = np.array([[math.cos(turn), -math.sin(turn), 0], [math.sin(turn), math.cos(turn), 0], [0, 0, 1]])
  sinus_p = () if spec.rhythm == "atrial_fibrillation" else (
      _Wave(-pr, -pr + 0.35 * p, -pr + 0.65 * p, frontal_turn @ np.array([0.05, 0.14, -0.07]) * k),
      _Wave(-pr + 0.3 * p, -pr + 0.62 * p, -pr + p, frontal_turn @ np.array([0.12, 0.07, 0.07]) * k))
  # PAC: an ectopic atrial focus, either low (P inverted in II, III, aVF) or high with a peaked P.
  pac_pr = pr + u(0.0, 0.03)
  pac_p = u(0.07, 0.09)
  pac_vector = np.array([0.08, -0.16, 0.03]) if rng.random() < 0.5 else np.array([-0.04, 0.22, -0.1])
  ectopic_p = (_Wave(-pac_pr, -pac_pr + 0.5 * pac_p, -pac_pr + pac_p, pac_vector * k),)
  return pr, p, sinus_p, ectopic_p


def _ventricular_ectopic(rng: np.random.Generator, qrs_waves: tuple[_Wave, ...]) -> tuple[_Wave, ...]:
  """A PVC: wide, monophasic complex from a left-ventricular (RBBB-like) or outflow-tract (LBBB-like, inferior
  axis) focus, taller across the 12 leads than the conducted QRS, with discordant repolarisation and no P."""
  width = rng.uniform(0.135, 0.170)
  focus = np.array([-0.5, 0.6, -0.9]) if rng.random() < 0.5 else np.array([0.35, 0.9, 0.6])
  focus *= rng.uniform(1.3, 1.8) * max(_lead_magnitude(w.vector) for w in qrs_waves) / _lead_magnitude(focus)
  return (_Wave(0, 0.4 * width, 0.7 * width, focus), _Wave(0.45 * width, 0.75 * width, width, 0.6 * focus),
          _Wave(width + 0.02, width + 0.17, width + 0.32, -0.25 * focus))


# --- Rhythm -----------------------------------------------------------------------------------------------------


def _beat_schedule(spec: EcgSpec, rng: np.random.Generator, *, rr_s: float, seconds: float,
                   qt_s: float) -> tuple[np.ndarray, list[str]]:
  """QRS onset times (s) and beat kinds, starting before 0 so the record opens mid-cycle.

  Sinus rhythm carries a small respiratory sinus arrhythmia; AF draws independent RR intervals from a gamma
  law (irregularly irregular, CV 0.18-0.32) above a 0.3 s refractory floor. Premature beats (1-3) are placed in
  the record's interior, coupled at 50-68 % (PVC) or 55-72 % (PAC) of the mean RR but after the preceding T. A
  PVC leaves the sinus schedule untouched (full compensatory pause); a PAC resets the sinus node, so the later
  beats move earlier by as much as it came early.
  """
  count = int((seconds + 2.0) / rr_s * 1.6) + 4
  if spec.rhythm == "atrial_fibrillation":
    cv = rng.uniform(0.18, 0.32)
    intervals = np.maximum(rng.gamma(1 / cv**2, rr_s * cv**2, count), 0.3)
  else:
    rsa = rng.uniform(0.01, 0.04) * min(1.0, rr_s)  # weaker at fast rates
    breaths_per_beat = rr_s * rng.uniform(0.15, 0.3)
    intervals = rr_s * (1 + rsa * np.sin(2 * np.pi * breaths_per_beat * np.arange(count) + rng.uniform(0, 2 * np.pi)))
  onsets = -rng.uniform(0.3, 0.3 + rr_s) + np.cumsum(np.concatenate([[0.0], intervals]))
  onsets = onsets[onsets < seconds + 0.5]
  kinds = ["N"] * len(onsets)

  ectopics = [kind for finding, kind in (("premature_ventricular_complexes", "V"),
                                         ("premature_atrial_complexes", "A")) if spec.has(finding)]
  if ectopics:
    interior = [i for i in range(1, len(onsets) - 1) if 0.8 <= onsets[i] <= seconds - 1.2]
    rng.shuffle(interior)
    n_ectopic = max(len(ectopics), int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])))
    wanted = [ectopics[j % len(ectopics)] for j in range(n_ectopic)]
    chosen: list[int] = []
    for i in interior:
      if len(chosen) == len(wanted):
        break
      if all(abs(i - j) > 2 for j in chosen):
        chosen.append(i)
    for i, kind in sorted(zip(chosen, wanted)):
      low, high = (0.5, 0.68) if kind == "V" else (0.55, 0.72)
      # Coupled to the mean cycle, and never before the preceding T has ended.
      early = onsets[i - 1] + max(rng.uniform(low, high) * rr_s, qt_s + 0.02)
      if kind == "A" or early >= onsets[i]:  # (in AF the replaced cycle may have been shorter still)
        onsets[i + 1:] += early - onsets[i]
      onsets[i] = early
      kinds[i] = kind
  return onsets, kinds


def _fibrillatory_waves(rng: np.random.Generator, n_samples: int, fs: float) -> np.ndarray:
  """AF's atrial activity: dipole[3, T] of 4-9 Hz f-waves with wandering rate and amplitude.

  Two orthogonal atrial dipoles with independent phases make the f-waves differ between leads; they are
  largest in V1 and the inferior leads, as in coarse AF.
  """
  slow = sps.butter(2, 0.5, fs=fs, output="sos")

  def smooth() -> np.ndarray:  # unit-scale random fluctuation below 0.5 Hz
    x = sps.sosfiltfilt(slow, rng.standard_normal(n_samples))
    return x / x.std()
  directions = (np.array([0.25, 0.45, -0.85]), np.array([0.6, -0.3, 0.2]))
  waves = np.zeros((3, n_samples))
  for direction, weight in zip(directions, (1.0, 0.5)):
    rate = rng.uniform(5.0, 8.0) + 0.7 * smooth()
    phase = 2 * np.pi * np.cumsum(rate) / fs + rng.uniform(0, 2 * np.pi)
    amplitude = rng.uniform(0.07, 0.14) * weight * np.clip(1 + 0.3 * smooth(), 0.3, 1.7)
    waves += np.outer(direction / np.linalg.norm(direction), amplitude * (np.sin(phase) + 0.3 * np.sin(2 * phase)))
  return waves


# --- Noise --------------------------------------------------------------------------------------------------------


def _electrode_noise(rng: np.random.Generator, n_samples: int, fs: float, resp_hz: float) -> np.ndarray:
  """Potentials[9, T] (mV) at RA, LA, LL, C1..C6: EMG, baseline wander and, in a quarter of records, mains hum.

  EMG is band-limited (20 Hz to 0.45 fs, at most 150 Hz) white noise; wander is a breathing-rate sinusoid plus a
  slower drift, different per electrode; hum is 50 or 60 Hz with an electrode-dependent imbalance.
  """
  t = np.arange(n_samples) / fs
  high = min(150.0, 0.45 * fs)
  emg = rng.standard_normal((9, n_samples))
  if high > 25.0:
    emg = sps.sosfiltfilt(sps.butter(2, [20.0, high], btype="bandpass", fs=fs, output="sos"), emg, axis=1)
  emg *= rng.uniform(0.005, 0.025) * rng.uniform(0.5, 1.5, (9, 1)) / emg.std(axis=1, keepdims=True)
  wander_mv = rng.uniform(0.02, 0.25)
  wander = sum(wander_mv * rng.uniform(0, 1, (9, 1)) * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi, (9, 1)))
               for hz in (resp_hz, rng.uniform(0.03, 0.12)))
  noise = emg + wander
  if rng.random() < 0.25 and fs > 2 * 60:
    mains = 50.0 if rng.random() < 0.5 else 60.0
    noise += rng.uniform(0.005, 0.03, (9, 1)) * np.sin(2 * np.pi * mains * t + rng.uniform(0, 2 * np.pi))
  return noise


# --- Ground truth -------------------------------------------------------------------------------------------------


def _ground_truth(spec: EcgSpec, beat: _BeatMorphology, onsets: np.ndarray, kinds: list[str],
                  seconds: float) -> dict:
  """Rate from the beats whose QRS midpoint lies inside the record; intervals and axes from the dominant
  conducted beat (ms, deg)."""
  middle = onsets + beat.qrs_s / 2
  inside = (middle >= 0) & (middle < seconds)
  visible = onsets[inside]
  rr_mean = float(np.diff(visible).mean())
  ms = lambda s: round(1000.0 * s, 1)
  return {
      "heart_rate_bpm": round(60.0 / rr_mean, 1),
      "rr_mean_ms": ms(rr_mean),
      "pr_ms": None if spec.rhythm == "atrial_fibrillation" else ms(beat.pr_s),
      "p_ms": None if spec.rhythm == "atrial_fibrillation" else ms(beat.p_s),
      "qrs_ms": ms(beat.qrs_s),
      "qt_ms": ms(beat.qt_s),
      "qtc_ms": ms(beat.qt_s / math.sqrt(rr_mean)),
      "qrs_axis_deg": round(_area_axis(beat.qrs_waves), 1),
      "p_axis_deg": None if not beat.sinus_p else round(_area_axis(beat.sinus_p), 1),
      "t_axis_deg": round(_area_axis(beat.t_waves), 1),
      "rhythm": spec.rhythm,
      "findings": list(spec.findings),
      "territory": spec.territory if set(spec.findings) & TERRITORIAL_FINDINGS else None,
      "normal": spec.is_normal,
      "beat_onsets_s": [round(float(t), 4) for t in visible],
      "beat_kinds": [k for k, keep in zip(kinds, inside) if keep],
  }
