"""The example format of the ECGInstruct and ECGBench TFDS datasets, shared by both builders and all their configs.

One example is one image with one conversation about it (LLaVA's record, plus where it came from):

  id             text      the example id (ECGInstruct / ECGBench id for the released files)
  image          bytes     the encoded PNG or JPEG file, as rendered or as published; decode with
                           pulse_jax.data.image_processor.load_image (which handles palette and 16-bit images that
                           a plain numpy decode gets wrong)
  conversations  sequence  LLaVA turns {"from": "human" | "gpt", "value"}; the gpt turn of a benchmark item is its
                           gold answer
  metadata       dict      source (collection), task_type, category, subtask ("" where unknown)
  provenance     dict      source, record_id, patient_id, path (the signal file, relative to the collection's
                           folder), image_path (the published image, relative to manual_dir; "" for rendered ones),
                           variant (0 standard, 1 augmented sheet; for published files the "-k" suffix of the
                           image name, -1 when it has none)
  labels         sequence  gold labels of sets scored by labels (label codes, or the correct option letter); empty
                           otherwise

Read back with tfds.data_source (TensorFlow-free): text fields come back as bytes, sequences of dicts as dicts of
lists.
"""

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

METADATA_FIELDS: tuple[str, ...] = ("source", "task_type", "category", "subtask")
PROVENANCE_TEXT_FIELDS: tuple[str, ...] = ("source", "record_id", "patient_id", "path", "image_path")


def features() -> tfds.features.FeaturesDict:
  """The FeaturesDict of both datasets (see the module docstring)."""
  text = tfds.features.Text
  return tfds.features.FeaturesDict({
      "id": text(),
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),
      "conversations": tfds.features.Sequence({"from": text(), "value": text()}),
      "metadata": {name: text() for name in METADATA_FIELDS},
      "provenance": {**{name: text() for name in PROVENANCE_TEXT_FIELDS},
                     "variant": tfds.features.Tensor(shape=(), dtype=np.int32)},
      "labels": tfds.features.Sequence(text()),
  })


def make_example(*, example_id: str, image: bytes, conversations: Iterable[Mapping[str, str]],
                 metadata: Mapping[str, Any], provenance: Mapping[str, Any], labels: Iterable[str]) -> dict:
  """An example dict for `features()`; metadata and provenance fields that are absent become "" (variant -1)."""
  return {
      "id": example_id,
      "image": image,
      "conversations": [{"from": turn["from"], "value": turn["value"]} for turn in conversations],
      "metadata": {name: str(metadata.get(name) or "") for name in METADATA_FIELDS},
      "provenance": {**{name: str(provenance.get(name) or "") for name in PROVENANCE_TEXT_FIELDS},
                     "variant": int(provenance.get("variant", -1))},
      "labels": [str(label) for label in labels],
  }


def decode_text(value: bytes | str) -> str:
  """A text field as read back from the data source (bytes) or as written (str)."""
  return value.decode("utf-8") if isinstance(value, bytes) else value


def conversations_of(example: Mapping[str, Any]) -> list[dict[str, str]]:
  """The LLaVA turns of an example read back from the data source (a dict of lists of bytes)."""
  turns = example["conversations"]
  return [{"from": decode_text(role), "value": decode_text(value)}
          for role, value in zip(turns["from"], turns["value"])]
