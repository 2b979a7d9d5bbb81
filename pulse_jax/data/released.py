"""The `released` path of the TFDS builders: ECGInstruct and ECGBench as PULSE published them.

Expected in manual_dir:
  ECGInstruct: ECGInstruct.json (HF PULSE-ECG/ECGInstruct: a list of {id, image, conversations, metadata:
    {subtask, type, source}}) and the image shards extracted beside it, so that manual_dir/<image> is the file
    (e.g. manual_dir/mimic/p1127/p11273115/s44111511/44111511-0.png).
  ECGBench: <set>.json for each of the nine sets (ptb-test.json, ..., arena.json; {id, image, conversations}, as
    the PULSE README's converter writes them) and their images, at manual_dir/<image> or manual_dir/images/<image>.
    ecgqa-test answers are lists of options and arena dialogues lists of {question, answer} turns; both are
    stored as LLaVA turns, the options joined by ", " (the list itself becomes the labels).

Image paths must stay inside manual_dir: absolute paths and '..' are refused, and so is a path that a symbolic
link carries outside. A refused path, a missing image or one that does not decode is skipped and counted, never
fatal; images are fully decoded once here, so that training never meets a broken one.
"""

import json
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pulse_jax import metrics
from pulse_jax.data.examples import make_example
from pulse_jax.data.image_processor import load_image
from pulse_jax.data.tokenizer import IMAGE_TOKEN
from pulse_jax.ecg.skips import SkipCounter, map_skipping
from pulse_jax.errors import DataError, ImageError

Example = tuple[str, dict]

INSTRUCT_FILE = "ECGInstruct.json"
BENCH_IMAGE_DIRS: tuple[str, ...] = ("", "images")  # where ECGBench image paths are looked up, in order

# Published image folders -> collection. PULSE names images after ecg-image-kit: <record>-<k>.<ext>.
_FOLDER_SOURCES = {"mimic": "mimic", "mimic_v4": "mimic", "ptb-xl": "ptbxl", "ptb_test_v4": "ptbxl",
                   "code15": "code15", "code15_v4": "code15", "cpsc": "cpsc", "csn": "csn", "g12": "g12ec"}
_IMAGE_NAME = re.compile(r"^(?P<record>.+?)(?:-(?P<k>\d+))?$")
# ECGBench set -> (collection, task type) of its items.
_BENCH_METADATA = {
    "ptb-test": ("ptbxl", "close-ended"), "ptb-test-report": ("ptbxl", "report"),
    "code15-test": ("code15", "close-ended"), "ecgqa-test": ("ecgqa", "close-ended"),
    "cpsc-test": ("cpsc", "close-ended"), "csn-test-no-cot": ("csn", "multiple-choice"),
    "g12-test-no-cot": ("g12ec", "multiple-choice"), "mmmu-ecg": ("mmmu", "multiple-choice"),
    "arena": ("arena", "open-ended")}
_CANONICAL_SOURCES = ("ptbxl", "mimic", "code15", "ecgqa")


def read_records(path: pathlib.Path) -> list[dict[str, Any]]:
  """The records of a published JSON file (a list of objects); DataError if the file is missing or not that."""
  try:
    records = json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError as e:
    raise DataError(f"{path}: missing; put the published file in the builder's manual_dir") from e
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{path}: not a JSON file ({e})") from e
  if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
    raise DataError(f"{path}: expected a JSON list of records")
  return records


def canonical_source(text: str) -> str:
  """A collection name usable as a split name: 'PTB-XL' -> 'ptbxl', 'MIMIC-IV-ECG' -> 'mimic', 'CODE-15%' ->
  'code15', 'ECG-QA' -> 'ecgqa'; other names lower-cased without punctuation ('other' when empty)."""
  cleaned = re.sub(r"[^a-z0-9]", "", text.lower())
  return next((known for known in _CANONICAL_SOURCES if cleaned.startswith(known)), cleaned or "other")


def instruct_source(record: Mapping[str, Any]) -> str:
  """The ECGInstruct split of a record: its metadata source, else the collection its image folder names."""
  metadata = record.get("metadata")
  source = metadata.get("source") if isinstance(metadata, Mapping) else None
  if isinstance(source, str) and source.strip():
    return canonical_source(source)
  image = record.get("image")
  return canonical_source(image_provenance(image)["source"]) if isinstance(image, str) else "other"


def image_provenance(image_path: str) -> dict[str, Any]:
  """What a published image name says about its signal: collection, record id, variant and, where the layout is
  known, the record's path inside the raw collection (MIMIC-IV-ECG files/..., PTB-XL records500/...)."""
  parts = pathlib.PurePosixPath(image_path).parts
  source = next((_FOLDER_SOURCES[p] for p in parts if p in _FOLDER_SOURCES), "")
  match = _IMAGE_NAME.match(pathlib.PurePosixPath(image_path).stem)
  record_id, k = match["record"], match["k"]
  path = ""
  if source == "mimic" and len(parts) >= 4:
    path = "/".join(("files", *parts[-4:-1], record_id))
  elif source == "ptbxl" and re.fullmatch(r"\d{5}_hr", record_id):
    number = int(record_id[:5])
    path, record_id = f"records500/{number // 1000 * 1000:05d}/{record_id}", str(number)
  return {"source": source, "record_id": record_id, "path": path, "image_path": image_path,
          "variant": int(k) if k is not None else -1}


def resolve_image(root: pathlib.Path, image: Any, record_id: str, search: Sequence[str] = ("",)) -> pathlib.Path:
  """The file of a published relative image path, strictly inside `root` (tried under each `search` folder).

  Raises:
    DataError: the path is not a relative path inside root ('unsafe image path').
    ImageError: no such file ('missing image').
  """
  if not isinstance(image, str) or not image.strip():
    raise DataError(f"{record_id}: no image path", reason="unsafe image path")
  relative = pathlib.PurePosixPath(image.replace("\\", "/"))
  if relative.is_absolute() or re.match(r"^[A-Za-z]:", image) or ".." in relative.parts:
    raise DataError(f"{record_id}: image path {image!r} leaves the dataset folder", reason="unsafe image path")
  base = root.resolve()
  for folder in search:
    path = (root / folder / relative).resolve()
    if not path.is_relative_to(base):
      raise DataError(f"{record_id}: image path {image!r} links outside the dataset folder", reason="unsafe image path")
    if path.is_file():
      return path
  raise ImageError(f"{record_id}: image {image!r} not found under {root}", reason="missing image")


def image_bytes(path: pathlib.Path, record_id: str) -> bytes:
  """The file's bytes, once they are known to decode; ImageError ('undecodable image') otherwise."""
  data = path.read_bytes()
  try:
    load_image(data)
  except ImageError as e:
    raise ImageError(f"{record_id}: {path}: {e}", reason="undecodable image") from e
  return data


def llava_turns(conversations: Any, record_id: str) -> list[dict[str, str]]:
  """Published turns as LLaVA {from, value} turns: list-valued answers (ecgqa-test) joined by ", ", and arena's
  {question, answer} pairs unrolled (the first question led by "<image>\\n" if it lacks one).

  The turns are not otherwise checked: pulse_jax.data.conversation validates them where they are used.
  """
  if not isinstance(conversations, list) or not conversations:
    raise DataError(f"{record_id}: no conversation", reason="malformed conversation")
  turns = []
  for turn in conversations:
    if isinstance(turn, Mapping) and "question" in turn:
      question, answer = str(turn["question"]), str(turn.get("answer", ""))
      if not turns and IMAGE_TOKEN not in question:
        question = f"{IMAGE_TOKEN}\n{question}"
      turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    elif isinstance(turn, Mapping) and isinstance(turn.get("from"), str):
      value = turn.get("value")
      value = ", ".join(map(str, value)) if isinstance(value, list) else value
      if not isinstance(value, str):
        raise DataError(f"{record_id}: turn {turn!r} has no text value", reason="malformed conversation")
      turns.append({"from": turn["from"], "value": value})
    else:
      raise DataError(f"{record_id}: turn {turn!r} is neither {{from, value}} nor {{question, answer}}",
                      reason="malformed conversation")
  return turns


def _record_id(record: Mapping[str, Any], index: int) -> str:
  return str(record.get("id", f"record {index}"))


def instruct_example(index: int, record: Mapping[str, Any], root: pathlib.Path) -> Example:
  """The ECGInstruct example of record number `index` of ECGInstruct.json (key: its index, ids may repeat)."""
  record_id = _record_id(record, index)
  image = record.get("image")
  data = image_bytes(resolve_image(root, image, record_id), record_id)
  metadata = record.get("metadata") if isinstance(record.get("metadata"), Mapping) else {}
  return f"{index:09d}", make_example(
      example_id=record_id, image=data, conversations=llava_turns(record.get("conversations"), record_id),
      metadata={"source": instruct_source(record), "task_type": metadata.get("type"),
                "category": metadata.get("category"), "subtask": metadata.get("subtask")},
      provenance=image_provenance(image), labels=())


def bench_example(index: int, record: Mapping[str, Any], root: pathlib.Path, bench_set: str) -> Example:
  """The ECGBench example of record `index` of <bench_set>.json; labels are parsed from the gold answer the way
  pulse_jax.metrics scores it (label codes, the option letter, or ecgqa-test's option list)."""
  record_id = _record_id(record, index)
  image = record.get("image", record.get("image_path"))
  data = image_bytes(resolve_image(root, image, record_id, BENCH_IMAGE_DIRS), record_id)
  conversations = record.get("conversations")
  turns = llava_turns(conversations, record_id)
  source, task_type = _BENCH_METADATA[bench_set]
  return f"{index:09d}", make_example(
      example_id=record_id, image=data, conversations=turns,
      metadata={"source": source, "task_type": task_type, "category": "report" if task_type == "report" else ""},
      provenance=image_provenance(image), labels=gold_labels(bench_set, conversations, turns))


def gold_labels(bench_set: str, conversations: list, turns: list[dict[str, str]]) -> list[str]:
  """The labels a set is scored by, from its gold answer (the last gpt turn)."""
  bench = metrics.BENCH_SETS[bench_set]
  answers = [turn["value"] for turn in turns if turn["from"] == "gpt"]
  if bench.kind == "ecgqa":
    raw = [turn.get("value") for turn in conversations if isinstance(turn, Mapping) and turn.get("from") == "gpt"]
    return [str(option) for option in raw[-1]] if raw and isinstance(raw[-1], list) else []
  if not answers or bench.kind not in ("multilabel", "mcq"):
    return []
  if bench.kind == "multilabel":
    return metrics.gold_labels(answers[-1], bench, strict=True)
  answer = answers[-1].strip()
  return [answer[:1]] if bench.gold_is_first_char and answer else [answer]


def examples(records: Sequence[tuple[int, Mapping[str, Any]]], make: Callable[[int, Mapping[str, Any]], Example],
             skipped: SkipCounter) -> Iterator[Example]:
  """make(index, record) for each (index, record), skipping and counting the records it rejects."""
  return map_skipping(lambda item: make(*item), records, item_id=lambda item: _record_id(item[1], item[0]),
                      skipped=skipped)
