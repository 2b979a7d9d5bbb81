"""Fixtures: a small ECG-report corpus and a SentencePiece tokenizer trained on it once per session.

A pytest plugin: test modules declare `pytest_plugins = ["tests.text_fixtures"]` (and do not import this module,
which would keep pytest from rewriting it), so the model is trained once however many modules use it.
"""

import itertools
import pathlib

import pytest

from pulse_jax.data.tokenizer import Tokenizer, train_tokenizer

_STATEMENTS = (
    "Sinus rhythm.",
    "Normal sinus rhythm with normal axis.",
    "Sinus bradycardia, otherwise normal ECG.",
    "Sinus tachycardia with nonspecific ST-T changes.",
    "Atrial fibrillation with rapid ventricular response.",
    "Atrial fibrillation with controlled ventricular rate.",
    "Atrial flutter with 2:1 atrioventricular conduction.",
    "First degree AV block.",
    "Second degree AV block, Mobitz type I (Wenckebach).",
    "Complete heart block with a junctional escape rhythm.",
    "Right bundle branch block.",
    "Left bundle branch block; ST changes are secondary to the conduction defect.",
    "Incomplete right bundle branch block, a common normal variant.",
    "Left anterior fascicular block with left axis deviation.",
    "Left ventricular hypertrophy by voltage criteria with repolarisation abnormality.",
    "Right ventricular hypertrophy is suggested by a dominant R wave in V1.",
    "Inferior myocardial infarction, age undetermined.",
    "Anterior ST elevation consistent with acute myocardial infarction.",
    "Anteroseptal infarct, probably old.",
    "Lateral T wave inversion, consider ischaemia.",
    "Nonspecific intraventricular conduction delay.",
    "Low QRS voltage in the limb leads.",
    "Premature ventricular complexes, occasional.",
    "Premature atrial complexes in a bigeminal pattern.",
    "Prolonged QT interval for the heart rate.",
    "Short PR interval without a delta wave.",
    "Ventricular pre-excitation (WPW pattern).",
    "Paced rhythm with 100% ventricular capture.",
    "Borderline ECG: poor R wave progression in the precordial leads.",
    "Abnormal ECG; compared with the previous tracing, the T wave changes are new.",
    "No significant change since the last recording.",
    "Baseline wander and muscle artefact limit the interpretation.",
    "Lead reversal is suspected (limb leads).",
    "The P waves are upright in leads I and II and inverted in aVR.",
    "ST depression of 1 mm is seen in leads V4 to V6.",
    "Q waves are present in leads II, III and aVF.",
    "The QRS axis is normal, between -30 and +90 degrees.",
    "Right axis deviation; consider left posterior fascicular block.",
    "Peaked T waves raise the suspicion of hyperkalaemia.",
    "Diffuse ST elevation with PR depression suggests pericarditis.",
    "Early repolarisation pattern in the inferior leads.",
    "Sinus arrhythmia with a normal conduction sequence.",
    "Junctional rhythm at a rate of 48 bpm.",
    "Multifocal atrial tachycardia.",
    "Supraventricular tachycardia, narrow complex, regular.",
    "Ventricular tachycardia cannot be excluded.",
    "Trigeminy: every third beat is a premature ventricular complex.",
    "Biphasic T waves in V2 and V3 (Wellens pattern).",
    "Brugada type 1 morphology in V1 and V2.",
    "Digitalis effect: scooped ST segments.",
)

_QUESTIONS = (
    "What is the rhythm in this ECG?",
    "Describe the main features of this ECG image.",
    "Is there evidence of a conduction abnormality?",
    "Which leads show ST elevation?",
    "What can be inferred about the cardiac axis on this ECG?",
    "Time for a multiple-choice challenge! Share your thought process, then lock in your final answer.",
    "Identify all fitting options from the provided list and enumerate them using semicolon.",
    "Only answer based on the given options without any explanation.",
    "Directly output one of the following options: A. Normal B. Bradycardia C. Tachycardia D. Flutter",
    "Please write a report for this ECG, as a cardiologist would.",
)

_ANSWERS = (
    "We can conclude that the answer is C. Left axis deviation.",
    "Based on this, we select B. Sinus bradycardia.",
    "D) Bradycardia",
    "RBBB(right bundle branch block); 1dAVb(1st degree av block)",
    "lead aVF/lead V3",
    "The ECG shows sinus rhythm with a normal axis and no acute ST changes.",
    "There is a first degree AV block, the PR interval measures 240 ms.",
    "Yes, a left bundle branch block is present, with a QRS duration of 148 ms.",
)

# Non-ASCII text the byte-fallback round trip is tested on elsewhere; a few such lines in the corpus as well.
_OTHER_SCRIPTS = (
    "Rythme sinusal, axe normal — aucun signe d'ischémie.",
    "Sinusrhythmus, Lagetyp: Linkstyp, QTc 440 ms (grenzwertig).",
    "心电图：窦性心律，正常心电图。",
    "Ritmo sinusal con bloqueo de rama derecha ✓",
)


@pytest.fixture(scope="session")
def report_lines() -> list[str]:
  """About 180 varied lines: statements, measurement lines, questions and answers, a few other scripts."""
  grid = itertools.product((48, 62, 75, 91, 118, 142), (120, 168, 212), (84, 102, 136, 158), (360, 410))
  measurements = [f"Ventricular rate {rate} bpm, PR {pr} ms, QRS {qrs} ms, QT/QTc {qt}/{qt + 20 + rate // 4} ms."
                  for rate, pr, qrs, qt in itertools.islice(grid, 0, None, 2)]
  axes = [f"P-R-T axes {p} {r} {t}; heart rate {rate}/min." for p, r, t, rate in zip(
      (45, 60, 72, -10, 80, 30), (-45, 12, 88, 110, 0, -30), (30, 50, 160, 20, 70, 40), (55, 66, 77, 88, 99, 44))]
  return [*_STATEMENTS, *measurements, *axes, *_QUESTIONS, *_ANSWERS, *_OTHER_SCRIPTS,
          *(f"{q} {a}" for q, a in zip(_QUESTIONS, _ANSWERS)),
          *(f"{s} {t}" for s, t in zip(_STATEMENTS[::2], _STATEMENTS[1::2]))]


@pytest.fixture(scope="session")
def tokenizer_model(report_lines, tmp_path_factory) -> pathlib.Path:
  """Path of a 512-piece LLaMA-style BPE model trained on `report_lines`."""
  return train_tokenizer(report_lines, tmp_path_factory.mktemp("tokenizer") / "ecg", vocab_size=512)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_model) -> Tokenizer:
  return Tokenizer(tokenizer_model)
