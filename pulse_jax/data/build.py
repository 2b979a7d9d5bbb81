"""`pulse-jax build-data`: build the TFDS datasets an experiment config names, as array_record.

  pulse-jax build-data --config configs/tiny.py                  # ecg_instruct/synthetic + ecg_bench/synthetic
  pulse-jax build-data --config configs/tiny.py --dataset ecg_bench/synthetic_400   # 400 records per collection
  pulse-jax build-data --config configs/pulse_7b.py --manual-dir /data/pulse   # the released files
  pulse-jax build-data --config configs/pulse_7b.py --dataset ecg_instruct/from_raw --manual-dir /data/raw \\
      --beam-pipeline-options "runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp,setup_file=./setup.py"

Datasets default to the config's data.builder and data.bench_builder ("<builder>/<config>"), written under
data.data_dir (TFDS' default folder when empty); --manual-dir defaults to data.manual_dir. Without Beam options the
build runs in this process; with them, from_raw / synthetic splits run as Apache Beam pipelines (`pip install
apache-beam`). The builders are the ones in data_builders/, which is what `tfds build data_builders/<name>` runs.
"""

import argparse
import importlib
import pathlib
import sys

import tensorflow_datasets as tfds

from pulse_jax.config import load_config
from pulse_jax.data.builder import resolve_config
from pulse_jax.errors import ConfigError

BUILDERS_DIR = pathlib.Path(__file__).resolve().parents[2] / "data_builders"


def builder_class(name: str) -> type[tfds.core.DatasetBuilder]:
  """The builder class of dataset `name` ('ecg_instruct', 'ecg_bench'), imported from data_builders/."""
  if not (BUILDERS_DIR / name / f"{name}_dataset_builder.py").is_file():
    raise ConfigError(f"no TFDS builder {name!r} in {BUILDERS_DIR}")
  root = str(BUILDERS_DIR.parent)
  if root not in sys.path:
    sys.path.insert(0, root)
  return importlib.import_module(f"data_builders.{name}.{name}_dataset_builder").Builder


def build(dataset: str, *, data_dir: str | None, manual_dir: str | None,
          beam_pipeline_options: str | None = None) -> tfds.core.DatasetBuilder:
  """Builds `dataset` ('<builder>/<config>') as array_record in data_dir and returns its builder."""
  name, _, config = dataset.partition("/")
  builder = builder_class(name)(config=resolve_config(config) if config else None, data_dir=data_dir,
                                file_format="array_record")
  beam_options = None
  if beam_pipeline_options:
    beam = tfds.core.lazy_imports.apache_beam
    beam_options = beam.options.pipeline_options.PipelineOptions(flags=[
        f"--{option}" for option in beam_pipeline_options.split(",")])
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, beam_options=beam_options))
  return builder


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", required=True, metavar="FILE.py[:ARG]", help="experiment config (its data section)")
  parser.add_argument("--dataset", action="append", metavar="BUILDER/CONFIG",
                      help="dataset to build, repeatable (default: data.builder and data.bench_builder)")
  parser.add_argument("--data-dir", help="TFDS data_dir to write (default: data.data_dir)")
  parser.add_argument("--manual-dir", help="released files or raw collections (default: data.manual_dir)")
  parser.add_argument("--beam-pipeline-options", metavar="K=V,...",
                      help="run from_raw / synthetic splits on Apache Beam with these pipeline options")


def run(args: argparse.Namespace) -> int:
  data = load_config(args.config).data
  datasets = args.dataset or [data.builder, data.bench_builder]
  data_dir = args.data_dir or data.data_dir or None
  manual_dir = args.manual_dir or data.manual_dir or None
  tfds.disable_progress_bar()
  for dataset in datasets:
    builder = build(dataset, data_dir=data_dir, manual_dir=manual_dir,
                    beam_pipeline_options=args.beam_pipeline_options)
    sizes = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
    print(f"{dataset}: {sizes} -> {builder.data_dir}")
  return 0
