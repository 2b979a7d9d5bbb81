"""What the ECGInstruct and ECGBench TFDS builders (data_builders/) share: configs, generation, Beam.

Each builder has three BuilderConfigs:
  released   the files PULSE published, from manual_dir (pulse_jax.data.released);
  from_raw   rebuilt from the raw collections in manual_dir/<collection> (pulse_jax.data.raw_sources);
  synthetic  the from_raw path over a small synthetic corpus the builder writes itself into its download folder,
             so a build works with nothing on disk (the tests' data); `synthetic_<N>` is the same with N records
             per collection instead of 24 (the demo's `synthetic_400`), built by `pulse-jax build-data`.

Data are written as array_record, without TensorFlow: `pulse-jax build-data`, or in Python
  Builder(config="synthetic", data_dir=..., file_format="array_record").download_and_prepare()
`tfds build data_builders/ecg_instruct --config synthetic --file_format array_record` runs the same builder where
TensorFlow is installed (TFDS 4.9's command line imports it; the builders never do).

from_raw (and synthetic) also run as Apache Beam pipelines: when TFDS is given a Beam runner or pipeline options
(DownloadConfig(beam_options=...), `pulse-jax build-data --beam-pipeline-options`), every split becomes
`Create(shards) | Reshuffle | FlatMap(examples)` over shards of about `records_per_shard` records; without, the
same collections are generated in this process. Skipped records are counted per reason and printed at the end of
each split (Beam: as pipeline counters, printed when the pipeline finishes).
"""

import dataclasses
import pathlib
import re
from collections.abc import Iterable, Iterator, Mapping

import tensorflow_datasets as tfds

from pulse_jax.data import examples, raw_sources
from pulse_jax.ecg.skips import SkipCounter
from pulse_jax.errors import DataError

Example = tuple[str, dict]
SKIP_COUNTER_NAMESPACE = "pulse_jax.skipped"


@dataclasses.dataclass
class EcgBuilderConfig(tfds.core.BuilderConfig):
  """One way of building a dataset.

  Attributes:
    origin: 'released', 'from_raw' or 'synthetic' (see the module docstring).
    dpi: from_raw / synthetic: page resolution of the rendered sheets.
    seed: from_raw / synthetic: rendering and task seed; synthetic: also the corpus seed.
    synthetic_records: synthetic: records written per collection.
    records_per_shard: from_raw / synthetic under Beam: records one worker reads as a unit.
    validation_fraction, code15_test_fraction: patient shares held out (pulse_jax.data.raw_sources.RawSettings).
    tasks_per_record: mean instruction tasks per image.
  """
  origin: str = "released"
  dpi: float = 200.0
  seed: int = 0
  synthetic_records: int = 24
  records_per_shard: int = 1000
  validation_fraction: float = 0.02
  code15_test_fraction: float = 0.02
  tasks_per_record: float = 1.75

  def raw_settings(self) -> raw_sources.RawSettings:
    return raw_sources.RawSettings(dpi=self.dpi, seed=self.seed, validation_fraction=self.validation_fraction,
                                   code15_test_fraction=self.code15_test_fraction,
                                   tasks_per_record=self.tasks_per_record)


def standard_configs() -> list[EcgBuilderConfig]:
  """The three configs every builder offers. synthetic renders at 100 dpi and holds out more patients, so that its
  24 records per collection still leave items in every test and validation split."""
  return [
      EcgBuilderConfig(name="released", origin="released",
                       description="The files PULSE published (HF PULSE-ECG), read from manual_dir."),
      EcgBuilderConfig(name="from_raw", origin="from_raw",
                       description="Rebuilt from the raw ECG collections in manual_dir/<collection>."),
      EcgBuilderConfig(name="synthetic", origin="synthetic", dpi=100.0, validation_fraction=0.15,
                       code15_test_fraction=0.25,
                       description="Rebuilt from a synthetic corpus in the raw layouts, written by the builder."),
  ]


_SIZED_SYNTHETIC = re.compile(r"synthetic_(\d+)")


def resolve_config(name: str) -> str | EcgBuilderConfig:
  """A config name as DatasetBuilder(config=...) takes it: 'synthetic_<N>' becomes the synthetic config with N
  records per collection (and that name, so builds of different sizes live in different folders)."""
  sized = _SIZED_SYNTHETIC.fullmatch(name)
  if not sized:
    return name
  synthetic = next(c for c in standard_configs() if c.name == "synthetic")
  return dataclasses.replace(synthetic, name=name, synthetic_records=int(sized.group(1)),
                             description=f"{synthetic.description} {sized.group(1)} records per collection.")


@dataclasses.dataclass(frozen=True)
class RawSplit:
  """A from_raw split: the collections it reads and what each record becomes (an ExampleMaker)."""
  sources: tuple[str, ...]
  make: raw_sources.ExampleMaker


class EcgDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the ECGInstruct and ECGBench builders; subclasses name their splits (raw_splits, released_splits)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: released, from_raw and synthetic configs."}
  BUILDER_CONFIGS = standard_configs()
  DESCRIPTION = ""
  HOMEPAGE = "https://github.com/AIMedLab/PULSE"
  CITATION = """@article{liu2024teach,
  title={Teach Multimodal LLMs to Comprehend Electrocardiographic Images},
  author={Liu, Ruoqi and Bai, Yuelin and Yue, Xiang and Zhang, Ping},
  journal={arXiv preprint arXiv:2410.19008},
  year={2024}
}"""

  def raw_splits(self, settings: raw_sources.RawSettings) -> dict[str, RawSplit]:
    raise NotImplementedError

  def released_splits(self, manual_dir: pathlib.Path) -> dict[str, Iterable[Example]]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION, features=examples.features(),
                                 homepage=self.HOMEPAGE, citation=self.CITATION)

  def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
    # Whether the caller gave TFDS a Beam runner or options decides between the Beam and the in-process path.
    self._beam = download_config.beam_runner is not None or download_config.beam_options is not None
    return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    if config.origin == "released":
      return self.released_splits(pathlib.Path(dl_manager.manual_dir))
    settings = config.raw_settings()
    splits = self.raw_splits(settings)
    sources = tuple(dict.fromkeys(source for split in splits.values() for source in split.sources))
    if config.origin == "synthetic":
      roots = raw_sources.write_synthetic_collections(pathlib.Path(dl_manager.download_dir), sources,
                                                      config.synthetic_records, config.seed)
    else:
      roots = raw_sources.collection_roots(dl_manager.manual_dir, sources)
    return {name: self._raw_split(name, split, roots) for name, split in splits.items()}

  def _raw_split(self, name: str, split: RawSplit, roots: Mapping[str, pathlib.Path]):
    """The examples of one from_raw split: a Beam PTransform when building with Beam, else a generator."""
    if not getattr(self, "_beam", False):
      shards = [raw_sources.whole_collection(source, roots[source]) for source in split.sources]
      return self._generate_examples(name, shards, split.make)
    beam = tfds.core.lazy_imports.apache_beam
    shards = [shard for source in split.sources
              for shard in raw_sources.plan_shards(source, roots[source], self.builder_config.records_per_shard)]
    return (beam.Create(shards) | beam.Reshuffle()
            | beam.FlatMap(_beam_shard_examples, make=split.make, counter_prefix=f"{self.name}/{name}"))

  def _generate_examples(self, split: str, shards: list[raw_sources.Shard],
                         make: raw_sources.ExampleMaker) -> Iterator[Example]:
    skipped = SkipCounter()
    generated = (example for shard in shards for example in raw_sources.shard_examples(shard, make, skipped))
    return self.counted(split, generated, skipped)

  def counted(self, split: str, generated: Iterable[Example], skipped: SkipCounter) -> Iterator[Example]:
    """`generated` (whose skips count into `skipped`), then the skip summary printed; DataError if it was empty
    (TFDS cannot write an empty split)."""
    produced = 0
    for produced, example in enumerate(generated, start=1):
      yield example
    print(f"{self.name}/{self.builder_config.name} {split}: {produced} examples, {skipped.summary()}", flush=True)
    if not produced:
      raise DataError(f"{self.name}/{self.builder_config.name}: split {split} has no examples ({skipped.summary()}); "
                      "a synthetic build needs synthetic_records >= 10 (PTB-XL's ten folds)")

  def _process_pipeline_result(self, pipeline_result) -> None:
    beam = tfds.core.lazy_imports.apache_beam
    query = beam.metrics.MetricsFilter().with_namespace(SKIP_COUNTER_NAMESPACE)
    counters = pipeline_result.metrics().query(query)["counters"]
    for counter in sorted(counters, key=lambda c: c.key.metric.name):
      print(f"skipped {counter.committed}: {counter.key.metric.name}", flush=True)


def _beam_shard_examples(shard: raw_sources.Shard, make: raw_sources.ExampleMaker,
                         counter_prefix: str) -> Iterator[Example]:
  """The examples of one shard on a Beam worker; its skips become pipeline counters '<builder>/<split>: <reason>'."""
  beam = tfds.core.lazy_imports.apache_beam
  skipped = SkipCounter()
  yield from raw_sources.shard_examples(shard, make, skipped)
  for reason, count in skipped.counts.items():
    beam.metrics.Metrics.counter(SKIP_COUNTER_NAMESPACE, f"{counter_prefix}: {reason}").inc(count)
