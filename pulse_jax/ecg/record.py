"""EcgRecord: one validated 12-lead recording with its labels and provenance.

Every reader yields EcgRecords and every downstream step (renderer, task generation, TFDS builders) consumes
them, so an image can always be traced back to the signal file it was drawn from.
"""

import dataclasses
from typing import Any

import numpy as np

from pulse_jax.ecg.leads import STANDARD_LEADS
from pulse_jax.errors import RecordError

# Bounds outside which a recording is not a plausible surface ECG; they catch unit errors (V or uV read as mV),
# corrupt files and flat-lined channels, not pathology.
MIN_FS, MAX_FS = 50.0, 10_000.0
MAX_ABS_MV = 30.0
MIN_SECONDS = 1.0
FLAT_LEAD_STD_MV = 1e-4


@dataclasses.dataclass(frozen=True)
class Provenance:
  """Where a record came from: collection name ('ptbxl', 'mimic', 'code15', 'cpsc', 'g12ec', 'csn', 'synthetic'...),
  the record id inside it, and the file the samples were read from."""
  source: str
  record_id: str
  path: str


@dataclasses.dataclass(frozen=True)
class EcgRecord:
  """A 12-lead ECG.

  Attributes:
    signal: float32[12, T] in mV, rows in STANDARD_LEADS order.
    fs: sampling rate in Hz.
    labels: labels in the source's own taxonomy (PTB-XL superclasses, CODE-15% codes, CPSC class names...).
    provenance: source, record id and file path.
    patient_id: for leakage-free splits; None where the source has none.
    report: free-text report, where the source has one.
    age, sex: demographics where known; sex is 'M' or 'F'.
    extra: source-specific fields (PTB-XL strat_fold, SCP codes, machine measurements...).
  """
  signal: np.ndarray
  fs: float
  labels: tuple[str, ...]
  provenance: Provenance
  patient_id: str | None = None
  report: str | None = None
  age: float | None = None
  sex: str | None = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def record_id(self) -> str:
    return self.provenance.record_id

  @property
  def duration_s(self) -> float:
    return self.signal.shape[1] / self.fs

  def lead(self, name: str) -> np.ndarray:
    """float32[T] samples of one lead by its standard name."""
    return self.signal[STANDARD_LEADS.index(name)]


def validate_signal(signal: np.ndarray, fs: float, record: str) -> np.ndarray:
  """Checks a [12, T] mV signal and returns it as contiguous float32; raises RecordError naming `record`.

  Rejects: wrong shape, absurd sampling rate, recordings shorter than MIN_SECONDS, NaN/inf samples, flat leads
  (standard deviation below FLAT_LEAD_STD_MV) and amplitudes beyond MAX_ABS_MV (a unit error, not a heart).
  """
  signal = np.asarray(signal)
  if signal.ndim != 2 or signal.shape[0] != len(STANDARD_LEADS):
    raise RecordError(f"{record}: expected a [12, T] signal, got shape {signal.shape}", reason="wrong shape")
  if not np.isfinite(fs) or not MIN_FS <= fs <= MAX_FS:
    raise RecordError(f"{record}: sampling rate {fs} Hz is outside [{MIN_FS:g}, {MAX_FS:g}]",
                      reason="absurd sampling rate")
  if signal.shape[1] < MIN_SECONDS * fs:
    raise RecordError(f"{record}: only {signal.shape[1]} samples ({signal.shape[1] / fs:.2f} s) at {fs:g} Hz",
                      reason="too short")
  finite = np.isfinite(signal)
  if not finite.all():
    bad = [STANDARD_LEADS[i] for i in np.flatnonzero(~finite.all(axis=1))]
    raise RecordError(f"{record}: NaN or infinite samples in lead(s) {', '.join(bad)}",
                      reason="NaN or infinite samples")
  flat = [STANDARD_LEADS[i] for i in np.flatnonzero(signal.std(axis=1) < FLAT_LEAD_STD_MV)]
  if flat:
    raise RecordError(f"{record}: flat lead(s) {', '.join(flat)}", reason="flat lead")
  peak = float(np.abs(signal).max())
  if peak > MAX_ABS_MV:
    raise RecordError(f"{record}: amplitude {peak:.1f} mV exceeds {MAX_ABS_MV:g} mV (wrong units?)",
                      reason="absurd amplitude")
  return np.ascontiguousarray(signal, dtype=np.float32)
