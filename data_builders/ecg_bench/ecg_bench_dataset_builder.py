"""ECGBench (PULSE, Liu et al. 2024): ECG-image test sets, one split per set, named as PULSE names them.

  released            the nine published sets: ptb-test, ptb-test-report, code15-test, ecgqa-test, cpsc-test,
                      csn-test-no-cot, g12-test-no-cot, mmmu-ecg, arena (those whose file is in manual_dir)
  from_raw, synthetic the six sets built from raw signals, on test patients only: ptb-test, ptb-test-report
                      (PTB-XL strat_fold 10), code15-test, cpsc-test, csn-test-no-cot, g12-test-no-cot

The gpt turn of each item is its gold answer; `labels` holds what the set is scored by (pulse_jax.metrics).

  pulse-jax build-data --config configs/tiny.py --dataset ecg_bench/synthetic
  tfds build data_builders/ecg_bench --config synthetic --file_format array_record   # where TensorFlow is installed
"""

import pathlib
from collections.abc import Iterable

from pulse_jax import metrics
from pulse_jax.data import released, raw_sources
from pulse_jax.data.builder import EcgDatasetBuilder, RawSplit
from pulse_jax.ecg.skips import SkipCounter
from pulse_jax.errors import DataError


class Builder(EcgDatasetBuilder):
  """ECGBench in three configs: released, from_raw, synthetic (pulse_jax.data.builder)."""

  DESCRIPTION = __doc__
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  released: put the sets of huggingface.co/datasets/PULSE-ECG/ECGBench in manual_dir as the PULSE README converts
    them: <set>.json ({', '.join(metrics.BENCH_SETS)}) and their images, so that manual_dir/<image> or
    manual_dir/images/<image> is each image.
  from_raw: one folder per raw collection in manual_dir, in its distributed layout:
    {', '.join(f'{source}/' for source in dict.fromkeys(raw_sources.BENCHMARK_SOURCES.values()))}
    (see pulse_jax/data/raw_sources.py).
  synthetic: nothing.
  """

  def raw_splits(self, settings: raw_sources.RawSettings) -> dict[str, RawSplit]:
    return {name: RawSplit((source,), raw_sources.BenchmarkExamples(name, settings))
            for name, source in raw_sources.BENCHMARK_SOURCES.items()}

  def released_splits(self, manual_dir: pathlib.Path) -> dict[str, Iterable[released.Example]]:
    present = [name for name in metrics.BENCH_SETS if (manual_dir / f"{name}.json").is_file()]
    if not present:
      expected = ", ".join(f"{name}.json" for name in metrics.BENCH_SETS)
      raise DataError(f"{manual_dir}: none of the ECGBench files ({expected})")
    splits = {}
    for name in present:
      skipped = SkipCounter()
      records = list(enumerate(released.read_records(manual_dir / f"{name}.json")))
      make = lambda index, record, name=name: released.bench_example(index, record, manual_dir, name)
      splits[name] = self.counted(name, released.examples(records, make, skipped), skipped)
    return splits
