"""ECGInstruct (PULSE, Liu et al. 2024): ECG images with instruction-following conversations, for fine-tuning.

Splits are collections, so that a training mixture weighs them (pulse_jax.data.pipeline, `data.mixture`):
  released            one split per metadata source of ECGInstruct.json: ptbxl, ecgqa, mimic, code15
  from_raw, synthetic ptbxl, mimic, code15 (their training patients), and validation (held-out patients of all
                      three; never in ECGBench)

  pulse-jax build-data --config configs/tiny.py --dataset ecg_instruct/synthetic
  tfds build data_builders/ecg_instruct --config synthetic --file_format array_record   # where TensorFlow is installed
"""

import pathlib
from collections.abc import Iterable

from pulse_jax.data import released, raw_sources
from pulse_jax.data.builder import EcgDatasetBuilder, RawSplit
from pulse_jax.ecg.skips import SkipCounter


class Builder(EcgDatasetBuilder):
  """ECGInstruct in three configs: released, from_raw, synthetic (pulse_jax.data.builder)."""

  DESCRIPTION = __doc__
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  released: put ECGInstruct.json (huggingface.co/datasets/PULSE-ECG/ECGInstruct) in manual_dir and extract the
    image shards there (`parallel -j 4 tar -xzf ::: shard_*.tar.gz`), so that manual_dir/<image> is each image.
  from_raw: one folder per raw collection in manual_dir, in its distributed layout:
    {', '.join(f'{source}/' for source in raw_sources.INSTRUCTION_SOURCES)} (see pulse_jax/data/raw_sources.py).
  synthetic: nothing.
  """

  def raw_splits(self, settings: raw_sources.RawSettings) -> dict[str, RawSplit]:
    splits = {source: RawSplit((source,), raw_sources.InstructionExamples("train", settings))
              for source in raw_sources.INSTRUCTION_SOURCES}
    splits["validation"] = RawSplit(raw_sources.INSTRUCTION_SOURCES,
                                    raw_sources.InstructionExamples("validation", settings))
    return splits

  def released_splits(self, manual_dir: pathlib.Path) -> dict[str, Iterable[released.Example]]:
    by_source: dict[str, list] = {}
    for index, record in enumerate(released.read_records(manual_dir / released.INSTRUCT_FILE)):
      by_source.setdefault(released.instruct_source(record), []).append((index, record))
    make = lambda index, record: released.instruct_example(index, record, manual_dir)
    splits = {}
    for source, records in sorted(by_source.items()):
      skipped = SkipCounter()
      splits[source] = self.counted(source, released.examples(records, make, skipped), skipped)
    return splits
