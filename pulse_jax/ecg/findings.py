"""ECG findings and how each label taxonomy states them: the one table behind synthetic labels, tasks and answers.

`FINDINGS` links each finding (its key is the synthetic generator's label name where pulse_jax.ecg.synth draws
it) to its CODE-15% code, its Challenge / CPSC 2018 classes (pulse_jax.ecg.snomed abbreviations), its PTB-XL
diagnostic superclass, a human-readable name and a one-sentence explanation, and to what questions about it
need (ECGInstruct category and sub-task, report phrases, the measurements that suggest it). `SCP_STATEMENTS`
maps PTB-XL's SCP-ECG statements to findings and walls. pulse_jax.ecg.corpus labels synthetic records through
these tables, pulse_jax.data.tasks reads every source's labels back through them, so the two cannot disagree.
"""

import dataclasses
from collections.abc import Callable

from pulse_jax.ecg.measure import Measurements


@dataclasses.dataclass(frozen=True)
class Finding:
  """One ECG finding and how each taxonomy states it.

  Attributes:
    key: identifier; for findings the synthetic generator draws, its label name (synth.RHYTHMS, synth.FINDINGS).
    name: how questions and answers name it.
    category: the ECGInstruct category of questions about it: 'feature', 'rhythm' or 'morphology'.
    subtask: the ECGInstruct sub-task of questions about it.
    explanation: what it looks like on the tracing, in one sentence.
    phrases: regular expressions (matched case-insensitively) that find it in English report statements.
    code15: its CODE-15% code, if it is one of the six.
    snomed: Challenge classes (pulse_jax.ecg.snomed abbreviations) that state it or cannot be told apart from it;
      the first is the class a synthetic record with it is labelled with.
    ptbxl_superclass: the PTB-XL diagnostic superclass of the SCP statements that state it.
    is_rhythm: it names the rhythm (a record has one).
    suggested: whether the measurements alone are compatible with it (with a margin); such a finding is never
      offered as a wrong option or called absent. None: the measurements cannot tell.
  """
  key: str
  name: str
  category: str
  subtask: str
  explanation: str
  phrases: tuple[str, ...]
  code15: str | None = None
  snomed: tuple[str, ...] = ()
  ptbxl_superclass: str | None = None
  is_rhythm: bool = False
  suggested: Callable[[Measurements], bool] | None = None


def _wide_qrs(m: Measurements) -> bool:
  return m.qrs_ms >= 105


def _left_axis(m: Measurements) -> bool:
  return m.qrs_axis_deg < -20


def _premature(m: Measurements) -> bool:
  return bool(m.premature_beats)


FINDINGS: tuple[Finding, ...] = (
    # Rhythms, the more specific first: a record's rhythm is the first of these it states.
    Finding("sinus_bradycardia", "sinus bradycardia", "rhythm", "Rhythm Classification",
            "The rhythm starts in the sinus node, with an upright P wave before every QRS complex, but the rate is "
            "below 60 bpm.", (r"sinus bradycardia",), code15="SB", snomed=("SB", "Brady"), is_rhythm=True,
            suggested=lambda m: m.heart_rate_bpm < 62),
    Finding("sinus_tachycardia", "sinus tachycardia", "rhythm", "Rhythm Classification",
            "The rhythm starts in the sinus node, with an upright P wave before every QRS complex, but the rate is "
            "above 100 bpm.", (r"sinus tachycardia",), code15="ST", snomed=("STach",), is_rhythm=True,
            suggested=lambda m: m.heart_rate_bpm > 97),
    Finding("atrial_fibrillation", "atrial fibrillation", "rhythm", "Arrhythmia Identification",
            "There are no distinct P waves: a fibrillating baseline replaces them and the RR intervals are "
            "irregularly irregular.", (r"atrial fibrillation", r"\ba-?fib\b"), code15="AF", snomed=("AF",),
            is_rhythm=True, suggested=lambda m: m.irregular),
    Finding("atrial_flutter", "atrial flutter", "rhythm", "Arrhythmia Identification",
            "Regular saw-tooth flutter waves replace the P waves; they are best seen in the inferior leads and V1.",
            (r"atrial flutter",), snomed=("AFL",), is_rhythm=True),
    Finding("sinus_arrhythmia", "sinus arrhythmia", "rhythm", "Rhythm Analysis",
            "Every QRS complex follows a normal P wave, but the RR interval varies from beat to beat, usually in step "
            "with breathing.", (r"sinus arrhythmia",), snomed=("SA",), is_rhythm=True,
            suggested=lambda m: m.irregular or m.rr_cv > 0.06),
    Finding("paced_rhythm", "paced rhythm", "rhythm", "Rhythm Analysis",
            "Pacemaker spikes precede the paced complexes.", (r"pac(?:ed|ing) rhythm", r"pacemaker"),
            snomed=("PR",), is_rhythm=True),
    Finding("sinus_rhythm", "sinus rhythm", "rhythm", "Rhythm Classification",
            "An upright P wave in lead II precedes every QRS complex at a regular rate of 60 to 100 bpm.",
            (r"sinus rhythm",), snomed=("NORM",), is_rhythm=True,
            suggested=lambda m: 57 <= m.heart_rate_bpm <= 103 and not m.irregular),
    # Conduction.
    Finding("first_degree_av_block", "first degree AV block", "rhythm", "Conduction Abnormality Detection",
            "Every P wave is conducted to the ventricles, but the PR interval is prolonged beyond 200 ms.",
            (r"(?:1st|first)[ -]degree a-?v block", r"prolonged pr\b", r"\b1avb\b"), code15="1dAVb",
            snomed=("I-AVB", "LPR", "AVB"), ptbxl_superclass="CD",
            suggested=lambda m: m.pr_ms is not None and m.pr_ms > 190),
    Finding("right_bundle_branch_block", "right bundle branch block", "morphology",
            "Pathological Conduction Identification",
            "The QRS complex is 120 ms or wider, with an rSR' pattern in V1 and a broad, slurred S wave in leads I "
            "and V6.", (r"(?<!incomplete )right bundle branch block", r"(?<!incomplete )\brbbb\b"), code15="RBBB",
            snomed=("RBBB",), ptbxl_superclass="CD", suggested=_wide_qrs),
    Finding("left_bundle_branch_block", "left bundle branch block", "morphology",
            "Pathological Conduction Identification",
            "The QRS complex is 120 ms or wider, with broad notched R waves in I, aVL, V5 and V6, a deep QS or rS "
            "complex in V1 and ST-T changes opposite to the QRS.",
            (r"(?<!incomplete )left bundle branch block", r"(?<!incomplete )\blbbb\b"), code15="LBBB",
            snomed=("LBBB",), ptbxl_superclass="CD", suggested=_wide_qrs),
    Finding("incomplete_right_bundle_branch_block", "incomplete right bundle branch block", "morphology",
            "Pathological Conduction Identification",
            "V1 shows an rSR' pattern while the QRS complex stays between 110 and 120 ms.",
            (r"incomplete right bundle branch block", r"incomplete rbbb", r"\birbbb\b"), snomed=("IRBBB",),
            ptbxl_superclass="CD", suggested=lambda m: m.qrs_ms >= 100),
    Finding("intraventricular_conduction_delay", "nonspecific intraventricular conduction delay", "morphology",
            "Pathological Conduction Identification",
            "The QRS complex is prolonged without the typical pattern of a right or left bundle branch block.",
            (r"intraventricular conduction (?:delay|disturbance|defect|disorder)", r"\bivcd\b"),
            snomed=("NSIVCB", "BBB"), ptbxl_superclass="CD", suggested=_wide_qrs),
    Finding("left_anterior_fascicular_block", "left anterior fascicular block", "morphology",
            "Pathological Conduction Identification",
            "The frontal QRS axis is deviated to the left, beyond -45 degrees, with a qR complex in aVL and rS "
            "complexes in the inferior leads.", (r"left anterior fascicular block", r"left anterior hemiblock",
                                                   r"\blafb\b"), snomed=("LAnFB",), ptbxl_superclass="CD",
            suggested=_left_axis),
    Finding("wolff_parkinson_white", "Wolff-Parkinson-White pattern", "morphology",
            "Pathological Conduction Identification",
            "A short PR interval runs into a slurred delta wave at the start of a widened QRS complex (ventricular "
            "pre-excitation).", (r"wolff-?parkinson-?white", r"\bwpw\b", r"pre-?excitation"), ptbxl_superclass="CD",
            suggested=lambda m: m.pr_ms is not None and m.pr_ms < 130),
    # Axis.
    Finding("left_axis_deviation", "left axis deviation", "feature", "Axis and Rhythm Determination",
            "The frontal QRS axis lies beyond -30 degrees: the QRS is positive in lead I and negative in leads II and "
            "aVF.", (r"left axis deviation", r"leftward axis"), snomed=("LAD",), suggested=_left_axis),
    Finding("right_axis_deviation", "right axis deviation", "feature", "Axis and Rhythm Determination",
            "The frontal QRS axis lies beyond +90 degrees: the QRS is negative in lead I and positive in aVF.",
            (r"right axis deviation", r"rightward axis"), snomed=("RAD",),
            suggested=lambda m: m.qrs_axis_deg > 80 or m.qrs_axis_deg < -150),
    # Waveforms and intervals.
    Finding("left_ventricular_hypertrophy", "left ventricular hypertrophy", "morphology", "Wave Morphology Analysis",
            "The QRS voltages are increased, with deep S waves in the right chest leads and tall R waves in V5 and "
            "V6.", (r"left ventricular hypertrophy", r"\blvh\b"), snomed=("LVH", "LVHV"), ptbxl_superclass="HYP"),
    Finding("right_ventricular_hypertrophy", "right ventricular hypertrophy", "morphology",
            "Wave Morphology Analysis",
            "A dominant R wave in V1 and right axis deviation point to a thickened right ventricle.",
            (r"right ventricular hypertrophy", r"\brvh\b"), snomed=("RVH",), ptbxl_superclass="HYP"),
    Finding("left_atrial_enlargement", "left atrial enlargement", "morphology", "Wave Morphology Analysis",
            "The P wave is broad and notched in lead II, with a deep terminal negative part in V1.",
            (r"left atrial (?:enlargement|abnormality|overload)",), snomed=("LAE",), ptbxl_superclass="HYP"),
    Finding("myocardial_infarction", "myocardial infarction", "morphology", "Interpretation of Ischemia or Infarction",
            "Pathological Q waves with loss of R-wave height appear in the leads facing the infarcted wall.",
            (r"infarct",), snomed=("MI", "QAb"), ptbxl_superclass="MI"),
    Finding("st_elevation", "ST elevation", "morphology", "Interpretation of Ischemia or Infarction",
            "The ST segment is raised above the baseline in the leads facing the injured wall.",
            (r"\bst[ -](?:segment )?elevation", r"\bstemi\b"), snomed=("STE",), ptbxl_superclass="MI"),
    Finding("st_depression", "ST depression", "morphology", "Interpretation of Ischemia or Infarction",
            "The ST segment lies below the baseline in the leads facing the ischemic wall.",
            (r"\bst[ -](?:segment )?depression",), snomed=("STD",), ptbxl_superclass="STTC"),
    Finding("myocardial_ischemia", "myocardial ischemia", "morphology", "Interpretation of Ischemia or Infarction",
            "ST depression or T-wave inversion confined to one coronary territory points to ischemia of that wall.",
            (r"isch(?:a)?emi",), snomed=("AnMIs", "IIs", "LIs"), ptbxl_superclass="STTC"),
    Finding("st_t_changes", "nonspecific ST-T changes", "morphology", "Wave Morphology Analysis",
            "The ST segments or T waves deviate from normal without a pattern specific to one diagnosis.",
            (r"\bst-t (?:wave )?(?:change|abnormalit)", r"non-?specific st\b", r"non-?specific t[ -]wave",
             r"\bt[ -]wave (?:inversion|abnormalit|change|flattening)", r"repolari[sz]ation abnormalit"),
            snomed=("NSSTTA", "STC", "STIAb", "TAb", "TInv"), ptbxl_superclass="STTC"),
    Finding("prolonged_qt", "QT prolongation", "feature", "Basic Waveform Understanding",
            "The QT interval corrected for heart rate (QTc) exceeds its upper limit of about 460 ms.",
            (r"(?:prolonged|long) qtc?\b", r"\bqtc? prolongation"), snomed=("LQT",), ptbxl_superclass="STTC",
            suggested=lambda m: m.qtc_ms is not None and m.qtc_ms > 440),
    Finding("low_qrs_voltage", "low QRS voltage", "morphology", "Wave Morphology Analysis",
            "The QRS amplitudes are small: under 0.5 mV in all limb leads or under 1 mV in all chest leads.",
            (r"low (?:qrs )?voltage",), snomed=("LQRSV",)),
    # Ectopy.
    Finding("premature_ventricular_complexes", "premature ventricular complexes", "rhythm",
            "Arrhythmia Identification",
            "Early, wide and bizarre QRS complexes without a preceding P wave are followed by a compensatory pause.",
            (r"premature ventricular (?:complex|contraction|beat)", r"ventricular premature (?:complex|beat)",
             r"\bpvcs?\b", r"(?<!supra)ventricular ectop"), snomed=("PVC",), suggested=_premature),
    Finding("premature_atrial_complexes", "premature atrial complexes", "rhythm", "Arrhythmia Identification",
            "Early beats are preceded by an abnormal P wave and keep a normal, narrow QRS complex.",
            (r"premature atrial (?:complex|contraction|beat)", r"atrial premature (?:complex|beat)", r"\bpacs?\b",
             r"supraventricular (?:premature|ectop|extrasystole)"), snomed=("PAC",), suggested=_premature),
)
FINDING_BY_KEY: dict[str, Finding] = {f.key: f for f in FINDINGS}

# PTB-XL's 71 SCP-ECG statements (scp_statements.csv) by kind: code -> (English description, finding key,
# territory). Diagnostic statements come first, so a finding's first statement is its diagnostic one.
_SCP_DIAGNOSTIC: dict[str, tuple[str, str | None, str | None]] = {
    "NORM": ("normal ECG", None, None),
    "IMI": ("inferior myocardial infarction", "myocardial_infarction", "inferior"),
    "ASMI": ("anteroseptal myocardial infarction", "myocardial_infarction", "anteroseptal"),
    "AMI": ("anterior myocardial infarction", "myocardial_infarction", "anterior"),
    "ALMI": ("anterolateral myocardial infarction", "myocardial_infarction", "anterolateral"),
    "LMI": ("lateral myocardial infarction", "myocardial_infarction", "lateral"),
    "ILMI": ("inferolateral myocardial infarction", "myocardial_infarction", "inferolateral"),
    "IPLMI": ("inferoposterolateral myocardial infarction", "myocardial_infarction", "inferoposterolateral"),
    "IPMI": ("inferoposterior myocardial infarction", "myocardial_infarction", "inferoposterior"),
    "PMI": ("posterior myocardial infarction", "myocardial_infarction", "posterior"),
    "INJAS": ("subendocardial injury in the anteroseptal leads", None, None),
    "INJAL": ("subendocardial injury in the anterolateral leads", None, None),
    "INJIN": ("subendocardial injury in the inferior leads", None, None),
    "INJLA": ("subendocardial injury in the lateral leads", None, None),
    "INJIL": ("subendocardial injury in the inferolateral leads", None, None),
    "NDT": ("non-diagnostic T-wave abnormalities", "st_t_changes", None),
    "NST_": ("nonspecific ST changes", "st_t_changes", None),
    "DIG": ("digitalis effect", None, None),
    "LNGQT": ("long QT interval", "prolonged_qt", None),
    "ISC_": ("nonspecific ischemic changes", "myocardial_ischemia", None),
    "ISCAL": ("ischemic changes in the anterolateral leads", "myocardial_ischemia", "anterolateral"),
    "ISCIN": ("ischemic changes in the inferior leads", "myocardial_ischemia", "inferior"),
    "ISCIL": ("ischemic changes in the inferolateral leads", "myocardial_ischemia", "inferolateral"),
    "ISCAS": ("ischemic changes in the anteroseptal leads", "myocardial_ischemia", "anteroseptal"),
    "ISCLA": ("ischemic changes in the lateral leads", "myocardial_ischemia", "lateral"),
    "ISCAN": ("ischemic changes in the anterior leads", "myocardial_ischemia", "anterior"),
    "ANEUR": ("ST-T changes compatible with ventricular aneurysm", None, None),
    "EL": ("electrolyte disturbance or drug effect", None, None),
    "LVH": ("left ventricular hypertrophy", "left_ventricular_hypertrophy", None),
    "RVH": ("right ventricular hypertrophy", "right_ventricular_hypertrophy", None),
    "LAO/LAE": ("left atrial overload or enlargement", "left_atrial_enlargement", None),
    "RAO/RAE": ("right atrial overload or enlargement", None, None),
    "SEHYP": ("septal hypertrophy", None, None),
    "LAFB": ("left anterior fascicular block", "left_anterior_fascicular_block", None),
    "LPFB": ("left posterior fascicular block", None, None),
    "IRBBB": ("incomplete right bundle branch block", "incomplete_right_bundle_branch_block", None),
    "ILBBB": ("incomplete left bundle branch block", None, None),
    "CRBBB": ("complete right bundle branch block", "right_bundle_branch_block", None),
    "CLBBB": ("complete left bundle branch block", "left_bundle_branch_block", None),
    "IVCD": ("nonspecific intraventricular conduction disturbance", "intraventricular_conduction_delay", None),
    "1AVB": ("first degree AV block", "first_degree_av_block", None),
    "2AVB": ("second degree AV block", None, None),
    "3AVB": ("third degree AV block", None, None),
    "WPW": ("Wolff-Parkinson-White syndrome", "wolff_parkinson_white", None),
}
_SCP_FORM: dict[str, tuple[str, str | None, str | None]] = {
    "ABQRS": ("abnormal QRS complexes", None, None),
    "PVC": ("ventricular premature complexes", "premature_ventricular_complexes", None),
    "PAC": ("atrial premature complexes", "premature_atrial_complexes", None),
    "PRC(S)": ("premature complexes", None, None),
    "STD_": ("nonspecific ST depression", "st_depression", None),
    "STE_": ("nonspecific ST elevation", "st_elevation", None),
    "VCLVH": ("voltage criteria for left ventricular hypertrophy", "left_ventricular_hypertrophy", None),
    "HVOLT": ("high QRS voltage", None, None),
    "LVOLT": ("low QRS voltage in the frontal and horizontal leads", "low_qrs_voltage", None),
    "QWAVE": ("Q waves present", None, None),
    "LOWT": ("low-amplitude T waves", "st_t_changes", None),
    "NT_": ("nonspecific T-wave changes", "st_t_changes", None),
    "INVT": ("inverted T waves", "st_t_changes", None),
    "TAB_": ("T-wave abnormality", "st_t_changes", None),
    "LPR": ("prolonged PR interval", "first_degree_av_block", None),
}
_SCP_RHYTHM: dict[str, tuple[str, str | None, str | None]] = {
    "SR": ("sinus rhythm", "sinus_rhythm", None),
    "SBRAD": ("sinus bradycardia", "sinus_bradycardia", None),
    "STACH": ("sinus tachycardia", "sinus_tachycardia", None),
    "SARRH": ("sinus arrhythmia", "sinus_arrhythmia", None),
    "AFIB": ("atrial fibrillation", "atrial_fibrillation", None),
    "AFLT": ("atrial flutter", "atrial_flutter", None),
    "PACE": ("normally functioning artificial pacemaker", "paced_rhythm", None),
    "SVARR": ("supraventricular arrhythmia", None, None),
    "SVTAC": ("supraventricular tachycardia", None, None),
    "PSVT": ("paroxysmal supraventricular tachycardia", None, None),
    "BIGU": ("bigeminal pattern of unknown origin", None, None),
    "TRIGU": ("trigeminal pattern of unknown origin", None, None),
}
SCP_STATEMENTS: dict[str, tuple[str, str | None, str | None]] = _SCP_DIAGNOSTIC | _SCP_FORM | _SCP_RHYTHM
# Diagnostic statements carry a likelihood in ptbxl_database.csv's scp_codes; form and rhythm statements 0.
SCP_DIAGNOSTIC: frozenset[str] = frozenset(_SCP_DIAGNOSTIC)
# (finding key, territory) -> the first statement of SCP_STATEMENTS that states it (read backwards: the first wins).
_SCP_CODE: dict[tuple[str, str | None], str] = {
    (key, territory): code for code, (_, key, territory) in reversed(SCP_STATEMENTS.items()) if key is not None}


def scp_code(key: str, territory: str | None = None) -> str:
  """The SCP-ECG statement PTB-XL writes for finding `key` (in `territory`'s leads, for a wall-specific one).

  The first statement of SCP_STATEMENTS that states it: the diagnostic one where there are several
  ('first_degree_av_block' -> 1AVB, not the form statement LPR; 'myocardial_infarction', 'inferior' -> IMI).
  KeyError when no statement states it.
  """
  return _SCP_CODE[key, territory]
