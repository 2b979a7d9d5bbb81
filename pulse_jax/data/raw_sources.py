"""ECGInstruct / ECGBench examples rebuilt from the raw collections: read, measure, render, write tasks.

This is the `from_raw` (and `synthetic`) path of the TFDS builders in data_builders/. Each raw collection sits
in its own folder of the builder's manual_dir, in the layout the collection is distributed in:

  manual_dir/ptbxl   PTB-XL (ptbxl_database.csv, scp_statements.csv, records500/)
  manual_dir/mimic   MIMIC-IV-ECG (record_list.csv, machine_measurements.csv, files/)
  manual_dir/code15  CODE-15% (exams.csv, exams_part*.hdf5, unzipped)
  manual_dir/cpsc    CPSC 2018 as re-released by the PhysioNet/CinC Challenge 2020/21 (*.hea + *.mat, any depth)
  manual_dir/g12ec   the Challenge's Georgia (G12EC) records (*.hea + *.mat)
  manual_dir/csn     Chapman-Shaoxing-Ningbo (ecg-arrhythmia WFDBRecords/, *.hea + *.mat)

Every record becomes images and tasks as PULSE made them: one standard sheet (PNG) and one augmented sheet (JPEG,
with the printout header) per record, the 1:1 mix; each image gets its own instruction tasks
(pulse_jax.data.tasks). A benchmark item uses one of the two sheets, drawn per record.

Splits are patient-level and shared by both builders, so no patient is in both ECGInstruct and ECGBench:
PTB-XL by strat_fold (10 test: ptb-test; 9 validation; 1-8 train); CODE-15% and MIMIC-IV-ECG by a hash of the
patient id (CODE-15% test patients make code15-test); CPSC, G12EC and CSN are out-of-domain test sets only.

A collection is cut into shards of about `records_per_shard` records that workers (Apache Beam's, or the
builder's own processes without Beam) read on their own (`plan_shards`, `read_shard`): slices of the index tables
for PTB-XL / MIMIC / CODE-15% (their relative file paths made absolute, so the public readers find the files where
they are), one folder of headers for the Challenge-format collections.
"""

import dataclasses
import hashlib
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pandas as pd

from pulse_jax.data import tasks
from pulse_jax.data.examples import make_example
from pulse_jax.ecg import corpus, readers, render
from pulse_jax.ecg.measure import Measurements, measure
from pulse_jax.ecg.record import EcgRecord
from pulse_jax.ecg.skips import SkipCounter
from pulse_jax.errors import ConfigError, PulseError, RecordError

PathLike = str | os.PathLike[str]
Example = tuple[str, dict]
# What one record becomes: (record, its collection's root folder) -> (key, example) pairs.
ExampleMaker = Callable[[EcgRecord, str], list[Example]]

SOURCES: tuple[str, ...] = ("ptbxl", "mimic", "code15", "cpsc", "g12ec", "csn")
INSTRUCTION_SOURCES: tuple[str, ...] = ("ptbxl", "mimic", "code15")
OUT_OF_DOMAIN_SOURCES: tuple[str, ...] = ("cpsc", "g12ec", "csn")
# The ECGBench sets that can be rebuilt from raw signals, and the collection each is drawn from.
BENCHMARK_SOURCES: dict[str, str] = {
    "ptb-test": "ptbxl", "ptb-test-report": "ptbxl", "code15-test": "code15", "cpsc-test": "cpsc",
    "csn-test-no-cot": "csn", "g12-test-no-cot": "g12ec"}

STANDARD, AUGMENTED = 0, 1  # image variants; the augmented one is a JPEG with the printout header
_IMAGE_FORMAT = {STANDARD: "png", AUGMENTED: "jpeg"}

_READERS: dict[str, Callable[[pathlib.Path, SkipCounter], Iterator[EcgRecord]]] = {
    "ptbxl": lambda root, skipped: readers.read_ptbxl(root, sampling_rate=500, skipped=skipped),
    "mimic": lambda root, skipped: readers.read_mimic(root, skipped=skipped),
    "code15": lambda root, skipped: readers.read_code15(root, skipped=skipped),
    "cpsc": lambda root, skipped: readers.read_challenge(root, source="cpsc", skipped=skipped),
    "g12ec": lambda root, skipped: readers.read_challenge(root, source="g12ec", skipped=skipped),
    "csn": lambda root, skipped: readers.read_challenge(root, source="csn", skipped=skipped),
}
# pulse_jax.ecg.corpus layout that stands in for each collection in the synthetic config.
_SYNTHETIC_LAYOUT = {"ptbxl": "ptbxl", "mimic": "mimic", "code15": "code15", "cpsc": "challenge",
                     "g12ec": "challenge", "csn": "challenge"}


@dataclasses.dataclass(frozen=True)
class _IndexTables:
  """How to slice a table-indexed collection: its main index (one row per record, `key` column), the columns
  holding file paths relative to the collection root, tables filtered to the slice's keys, tables copied whole."""
  main: str
  key: str
  path_columns: tuple[str, ...]
  filtered: tuple[str, ...] = ()
  copied: tuple[str, ...] = ()


_INDEX_TABLES = {
    "ptbxl": _IndexTables("ptbxl_database.csv", "ecg_id", ("filename_lr", "filename_hr"),
                          copied=("scp_statements.csv",)),
    "mimic": _IndexTables("record_list.csv", "study_id", ("path",), filtered=("machine_measurements.csv",)),
    "code15": _IndexTables("exams.csv", "exam_id", ("trace_file",)),
}


@dataclasses.dataclass(frozen=True)
class RawSettings:
  """What the from_raw examples depend on besides the records (the builder config's fields).

  Attributes:
    dpi: page resolution of the rendered sheets (200 gives ecg-image-kit's 2200 x 1700 px).
    seed: seeds rendering, task drawing and the choice of benchmark sheet, per record.
    validation_fraction: share of MIMIC-IV-ECG and CODE-15% patients held out for validation (PTB-XL: fold 9).
    code15_test_fraction: share of CODE-15% patients held out for code15-test.
    tasks_per_record: mean instruction tasks per image (pulse_jax.data.tasks.TaskMix).
    label_list_collections: collections whose images are asked every task cell of their source once, each
      close-ended question a label-list one where the record has labels in that category's spaces.
  """
  dpi: float = 200.0
  seed: int = 0
  validation_fraction: float = 0.02
  code15_test_fraction: float = 0.02
  tasks_per_record: float = 1.75
  label_list_collections: tuple[str, ...] = ()

  def task_mix(self, source: str) -> tasks.TaskMix:
    """The instruction task mix of `source`'s records."""
    if source not in self.label_list_collections:
      return tasks.TaskMix(tasks_per_record=self.tasks_per_record)
    return tasks.TaskMix(tasks_per_record=len(tasks.PAPER_MIX[source]), label_list_share=1.0)


@dataclasses.dataclass(frozen=True)
class Shard:
  """A unit of raw reading: a whole collection, a slice of its index tables, or one folder of headers.

  Attributes:
    source: one of SOURCES.
    collection_root: the collection's folder; provenance paths are written relative to it.
    directory: where the reader looks (the collection root, or a folder of Challenge headers).
    tables: (file name, CSV text) index tables of a slice, relative paths made absolute; empty: read `directory`.
  """
  source: str
  collection_root: str
  directory: str
  tables: tuple[tuple[str, str], ...] = ()


def stable_hash(*parts: object) -> int:
  """A 64-bit hash of `parts`, the same on every machine, run and Python version (unlike hash())."""
  digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little")


def unit_hash(*parts: object) -> float:
  """A stable draw in [0, 1) from `parts`."""
  return stable_hash(*parts) / 2.0 ** 64


def patient_split(record: EcgRecord, settings: RawSettings) -> str:
  """'train', 'validation' or 'test' for `record`, decided by its patient so that a patient's records stay together.

  Out-of-domain collections (CPSC, G12EC, CSN) are test only; PTB-XL follows its strat_fold (ptbxl_split); MIMIC-IV-ECG
  and CODE-15% hash the patient id (the record id where there is none).
  """
  source = record.provenance.source
  if source in OUT_OF_DOMAIN_SOURCES:
    return "test"
  if source == "ptbxl":
    return readers.ptbxl_split(int(record.extra["strat_fold"]))
  draw = unit_hash(source, record.patient_id or record.record_id)
  test = settings.code15_test_fraction if source == "code15" else 0.0
  if draw < test:
    return "test"
  return "validation" if draw < test + settings.validation_fraction else "train"


def collection_roots(manual_dir: PathLike, sources: tuple[str, ...]) -> dict[str, pathlib.Path]:
  """{source: manual_dir/source}; ConfigError naming every expected folder that is missing."""
  roots = {source: pathlib.Path(manual_dir) / source for source in sources}
  missing = [str(path) for path in roots.values() if not path.is_dir()]
  if missing:
    raise ConfigError(f"raw collection folder(s) missing: {', '.join(missing)}; manual_dir must hold one folder per "
                      f"collection: {', '.join(sources)} (see pulse_jax/data/raw_sources.py)")
  return roots


def write_synthetic_collections(directory: PathLike, records: Mapping[str, int], seed: int) -> dict[str, pathlib.Path]:
  """Synthetic stand-ins of collections (records: {source: n}, pulse_jax.ecg.corpus), each under
  directory/synthetic-n{n}-seed{seed}/{source}.

  A collection's corpus depends only on (source, n, seed), so two builders asking for the same collection get
  the same patients (and the leakage-free split between them). Folders completed earlier are reused.
  """
  roots = {}
  for source, n in records.items():
    root = roots[source] = pathlib.Path(directory) / f"synthetic-n{n}-seed{seed}" / source
    done = root / ".complete"
    if not done.exists():
      corpus.write_corpus(_SYNTHETIC_LAYOUT[source], root, n, seed=seed * len(SOURCES) + SOURCES.index(source))
      done.touch()
  return roots


def plan_shards(source: str, root: PathLike, records_per_shard: int) -> list[Shard]:
  """Shards of about `records_per_shard` records that workers read independently (see the module docstring).

  Reads only the index tables (or lists the header folders); raises RecordError if they are missing or malformed.
  """
  root = pathlib.Path(root)
  if source not in _INDEX_TABLES:
    folders = sorted({str(header.parent) for header in root.rglob("*.hea")})
    if not folders:
      raise RecordError(f"{root}: no WFDB headers (*.hea) found", reason="missing file")
    return [Shard(source, str(root), folder) for folder in folders]
  index = _INDEX_TABLES[source]
  main = _text_table(root / index.main, (index.key, *index.path_columns))
  for column in index.path_columns:
    main[column] = [str(root / value) if value else value for value in main[column]]
  filtered = {name: _text_table(root / name, (index.key,)) for name in index.filtered}
  copied = tuple((name, (root / name).read_text()) for name in index.copied)
  shards = []
  for start in range(0, len(main), max(1, records_per_shard)):
    rows = main.iloc[start:start + records_per_shard]
    keys = set(rows[index.key])
    tables = [(index.main, rows.to_csv(index=False))]
    tables += [(name, table[table[index.key].isin(keys)].to_csv(index=False)) for name, table in filtered.items()]
    shards.append(Shard(source, str(root), str(root), tuple(tables) + copied))
  return shards


def _text_table(path: pathlib.Path, columns: tuple[str, ...]) -> pd.DataFrame:
  """A CSV table with every cell as written (text, '' when empty), so that a slice re-written reads back the same."""
  try:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
  except FileNotFoundError as e:
    raise RecordError(f"{path}: missing file", reason="missing file") from e
  except (ValueError, OSError) as e:
    raise RecordError(f"{path}: unparsable table ({e})", reason="unparsable table") from e
  absent = [c for c in columns if c not in table.columns]
  if absent:
    raise RecordError(f"{path}: missing column(s) {', '.join(absent)}", reason="unparsable table")
  return table


def read_shard(shard: Shard, skipped: SkipCounter) -> Iterator[EcgRecord]:
  """The valid records of `shard` (invalid ones are counted in `skipped`), with the collection readers."""
  if not shard.tables:
    yield from _READERS[shard.source](pathlib.Path(shard.directory), skipped)
    return
  with tempfile.TemporaryDirectory(prefix=f"pulse-{shard.source}-") as scratch:
    for name, text in shard.tables:
      (pathlib.Path(scratch) / name).write_text(text)
    yield from _READERS[shard.source](pathlib.Path(scratch), skipped)


def shard_examples(shard: Shard, make: ExampleMaker, skipped: SkipCounter) -> Iterator[Example]:
  """Every (key, example) `make` draws from the records of `shard`; records that fail are counted and skipped."""
  for record in read_shard(shard, skipped):
    try:
      yield from make(record, shard.collection_root)
    except PulseError as e:
      skipped.add(f"{record.provenance.source}/{record.record_id}", e)


@dataclasses.dataclass(frozen=True)
class _Sheet:
  """One rendered image of a record: encoded bytes and its variant."""
  image: bytes
  variant: int


def _measurements(record: EcgRecord) -> Measurements | None:
  """The record's measurements, or None when its beats cannot be delineated (fewer tasks then, not a skip)."""
  try:
    return measure(record)
  except RecordError:
    return None


def _sheet(record: EcgRecord, measurements: Measurements | None, variant: int, settings: RawSettings) -> _Sheet:
  """The standard (PNG, no header) or augmented (JPEG, printout header) sheet, seeded as render_variants seeds it."""
  augmented = variant == AUGMENTED
  seed = render.variant_seed(record.record_id, variant, settings.seed)
  header = render.printout_header(record, measurements) if augmented else None
  page = render.render_page(record, augment=augmented, seed=seed, dpi=settings.dpi, header=header)
  return _Sheet(render.encode(page.image, _IMAGE_FORMAT[variant]), variant)


def _rng(settings: RawSettings, record: EcgRecord, purpose: str, variant: int) -> np.random.Generator:
  """The generator of one record's `purpose` ('instruct' or a benchmark) on one sheet."""
  return np.random.default_rng([settings.seed, stable_hash(purpose, record.provenance.source, record.record_id),
                                variant])


def _task_example(key: str, task: tasks.Task, sheet: _Sheet, record: EcgRecord, collection_root: str) -> Example:
  return key, make_example(
      example_id=key, image=sheet.image, conversations=task.conversations, metadata=task.metadata,
      labels=task.labels,
      provenance={"source": record.provenance.source, "record_id": record.record_id,
                  "patient_id": record.patient_id or "",
                  "path": os.path.relpath(record.provenance.path, collection_root), "variant": sheet.variant})


@dataclasses.dataclass(frozen=True)
class InstructionExamples:
  """ECGInstruct examples of the records in `split` ('train' or 'validation'): both sheets, each with its tasks.

  Example ids (and keys) are the task id plus "-img0" (standard sheet) or "-img1" (augmented sheet).
  """
  split: str
  settings: RawSettings

  def __call__(self, record: EcgRecord, collection_root: str) -> list[Example]:
    if patient_split(record, self.settings) != self.split:
      return []
    measurements = _measurements(record)
    mix = self.settings.task_mix(record.provenance.source)
    examples = []
    for variant in (STANDARD, AUGMENTED):
      sheet = _sheet(record, measurements, variant, self.settings)
      for task in tasks.instruction_tasks(record, measurements, rng=_rng(self.settings, record, "instruct", variant),
                                          mix=mix):
        examples.append(_task_example(f"{task.id}-img{variant}", task, sheet, record, collection_root))
    return examples


@dataclasses.dataclass(frozen=True)
class BenchmarkExamples:
  """The `benchmark` item of each test-split record of its collection, on one of its two sheets (drawn per record)."""
  benchmark: str
  settings: RawSettings

  def __call__(self, record: EcgRecord, collection_root: str) -> list[Example]:
    if patient_split(record, self.settings) != "test":
      return []
    measurements = _measurements(record)
    items = tasks.benchmark_tasks(record, measurements, benchmark=self.benchmark,
                                  rng=_rng(self.settings, record, self.benchmark, 0))
    if not items:
      return []
    variant = AUGMENTED if unit_hash(self.settings.seed, "sheet", record.provenance.source,
                                     record.record_id) < 0.5 else STANDARD
    sheet = _sheet(record, measurements, variant, self.settings)
    return [_task_example(task.id, task, sheet, record, collection_root) for task in items]
