"""SNOMED CT diagnosis codes of the PhysioNet/CinC Challenge 2020/21 collections (CPSC 2018, G12EC, CSN).

Challenge headers carry `#Dx:` lines of comma-separated SNOMED CT codes. This is the one table that turns them
into class abbreviations (the labels of an EcgRecord) and full names (for prompts and multiple-choice options).

Contents: every class scored by the Challenge 2021 (`dx_mapping_scored.csv` of
physionetchallenges/evaluation-2021, with its four equivalence pairs merged into one class each), plus the
unscored classes that occur in CPSC 2018 or in at least 100 records of G12EC or of Chapman-Shaoxing + Ningbo
(CSN) (`dx_mapping_unscored.csv`). The nine CPSC 2018 classes come first and use the abbreviations of PULSE's
ECGBench (NORM, AF, I-AVB, LBBB, RBBB, PAC, PVC, STD, STE) rather than the Challenge's (NSR, IAVB, ...), so
that CPSC labels read the way the benchmark scores them. Codes outside the table are the caller's to keep.
"""

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class SnomedClass:
  """One diagnostic class: its label, its full name, and the SNOMED CT codes scored as the same diagnosis."""
  abbreviation: str
  name: str
  codes: tuple[str, ...]


SNOMED_CLASSES: tuple[SnomedClass, ...] = (
    # CPSC 2018, in ECGBench's order.
    SnomedClass("NORM", "sinus rhythm", ("426783006",)),
    SnomedClass("AF", "atrial fibrillation", ("164889003",)),
    SnomedClass("I-AVB", "1st degree AV block", ("270492004",)),
    SnomedClass("LBBB", "left bundle branch block", ("164909002", "733534002")),
    SnomedClass("RBBB", "right bundle branch block", ("59118001", "713427006")),
    SnomedClass("PAC", "premature atrial contraction", ("284470004", "63593006")),
    SnomedClass("PVC", "premature ventricular contraction", ("164884008", "427172004", "17338001")),
    SnomedClass("STD", "ST depression", ("429622005",)),
    SnomedClass("STE", "ST elevation", ("164931005",)),
    # The rest of the Challenge 2021 scored classes.
    SnomedClass("AFL", "atrial flutter", ("164890007",)),
    SnomedClass("BBB", "bundle branch block", ("6374002",)),
    SnomedClass("Brady", "bradycardia", ("426627000",)),
    SnomedClass("IRBBB", "incomplete right bundle branch block", ("713426002",)),
    SnomedClass("LAD", "left axis deviation", ("39732003",)),
    SnomedClass("LAnFB", "left anterior fascicular block", ("445118002",)),
    SnomedClass("LQRSV", "low QRS voltages", ("251146004",)),
    SnomedClass("NSIVCB", "nonspecific intraventricular conduction disorder", ("698252002",)),
    SnomedClass("PR", "pacing rhythm", ("10370003",)),
    SnomedClass("PRWP", "poor R wave progression", ("365413008",)),
    SnomedClass("LPR", "prolonged PR interval", ("164947007",)),
    SnomedClass("LQT", "prolonged QT interval", ("111975006",)),
    SnomedClass("QAb", "Q wave abnormal", ("164917005",)),
    SnomedClass("RAD", "right axis deviation", ("47665007",)),
    SnomedClass("SA", "sinus arrhythmia", ("427393009",)),
    SnomedClass("SB", "sinus bradycardia", ("426177001",)),
    SnomedClass("STach", "sinus tachycardia", ("427084000",)),
    SnomedClass("TAb", "T wave abnormal", ("164934002",)),
    SnomedClass("TInv", "T wave inversion", ("59931005",)),
    # Unscored classes common in G12EC or CSN.
    SnomedClass("AnMIs", "anterior ischemia", ("426434006",)),
    SnomedClass("ARH", "atrial rhythm", ("106068003",)),
    SnomedClass("ATach", "atrial tachycardia", ("713422000",)),
    SnomedClass("AVB", "AV block", ("233917008",)),
    SnomedClass("AVJR", "atrioventricular junctional rhythm", ("29320008",)),
    SnomedClass("CCR", "counterclockwise rotation", ("251199005",)),
    SnomedClass("CVCL/CCVCL", "clockwise or counterclockwise vectorcardiographic loop", ("61721007",)),
    SnomedClass("ERe", "early repolarization", ("428417006",)),
    SnomedClass("FB", "fusion beats", ("13640000",)),
    SnomedClass("IIs", "inferior ischemia", ("425419005",)),
    SnomedClass("LAE", "left atrial enlargement", ("67741000119109",)),
    SnomedClass("LIs", "lateral ischemia", ("425623009",)),
    SnomedClass("LVH", "left ventricular hypertrophy", ("164873001",)),
    SnomedClass("LVHV", "left ventricular high voltage", ("55827005",)),
    SnomedClass("MI", "myocardial infarction", ("164865005",)),
    SnomedClass("NSSTTA", "nonspecific ST-T abnormality", ("428750005",)),
    SnomedClass("PPW", "prolonged P wave", ("251205003",)),
    SnomedClass("PVT", "paroxysmal ventricular tachycardia", ("425856008",)),
    SnomedClass("PWC", "P wave change", ("164912004",)),
    SnomedClass("RVH", "right ventricular hypertrophy", ("89792004",)),
    SnomedClass("STC", "ST changes", ("55930002",)),
    SnomedClass("STIAb", "ST interval abnormal", ("164930006",)),
    SnomedClass("SVT", "supraventricular tachycardia", ("426761007",)),
    SnomedClass("TPW", "tall P wave", ("251223006",)),
    SnomedClass("UAb", "U wave abnormal", ("164937009",)),
)

# The CPSC 2018 label space, as ECGBench scores it.
CPSC_LABELS: tuple[str, ...] = tuple(c.abbreviation for c in SNOMED_CLASSES[:9])

_BY_CODE: dict[str, SnomedClass] = {code: c for c in SNOMED_CLASSES for code in c.codes}
_BY_ABBREVIATION: dict[str, SnomedClass] = {c.abbreviation: c for c in SNOMED_CLASSES}
_ORDER: dict[str, int] = {c.abbreviation: i for i, c in enumerate(SNOMED_CLASSES)}


def lookup(code: str) -> SnomedClass | None:
  """The class of one SNOMED CT code ('164889003' -> AF), or None for a code outside the table."""
  return _BY_CODE.get(code.strip())


def full_name(abbreviation: str) -> str:
  """'AF' -> 'atrial fibrillation'; KeyError for an abbreviation outside the table."""
  return _BY_ABBREVIATION[abbreviation].name


def map_codes(codes: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """Splits Dx codes into (class abbreviations, codes outside the table).

  Abbreviations are de-duplicated (equivalent codes give one label) and ordered as in SNOMED_CLASSES, so equal
  diagnoses give equal tuples; unknown codes keep their first-seen order, without duplicates.
  """
  labels, unknown = set(), []
  for code in codes:
    found = lookup(code)
    if found is not None:
      labels.add(found.abbreviation)
    elif code.strip() not in unknown:
      unknown.append(code.strip())
  return tuple(sorted(labels, key=_ORDER.__getitem__)), tuple(unknown)
