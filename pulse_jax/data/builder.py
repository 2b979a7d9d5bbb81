"""What the ECGInstruct and ECGBench TFDS builders (data_builders/) share: configs, generation, Beam.

Each builder has three BuilderConfigs:
  released   the files PULSE published, from manual_dir (pulse_jax.data.released);
  from_raw   rebuilt from the raw collections in manual_dir/<collection> (pulse_jax.data.raw_sources);
  synthetic  the from_raw path over a small synthetic corpus the builder writes itself into its download folder,
             so a build works with nothing on disk (the tests' data); `synthetic_<N>` is the same with N records
             per collection instead of 24, built by `pulse-jax build-data`; `synthetic_<N>_detection` (the
             demo's) also holds DETECTION_SCALE x N CODE-15% records, each sheet asked the abnormality-detection
             label-list question (resolve_config).

Data are written as array_record, without TensorFlow: `pulse-jax build-data`, or in Python
  Builder(config="synthetic", data_dir=..., file_format="array_record").download_and_prepare()
`tfds build data_builders/ecg_instruct --config synthetic --file_format array_record` runs the same builder where
TensorFlow is installed (TFDS 4.9's command line imports it; the builders never do). Every build also saves, beside
the data, the positions of each split's labelled examples (pulse_jax.data.label_index), which `"<split>:labelled"`
mixture keys train on.

from_raw (and synthetic) also run as Apache Beam pipelines: when TFDS is given a Beam runner or pipeline options
(DownloadConfig(beam_options=...), `pulse-jax build-data --beam-pipeline-options`), every split becomes
`Create(shards) | Reshuffle | FlatMap(examples)` over shards of about `records_per_shard` records; without, the
same collections are generated here in shards of LOCAL_RECORDS_PER_SHARD records, spread over this machine's cores
(pulse_jax.processes) when a split has more than one shard. Skipped records are counted per reason and
printed at the end of each split (Beam: as pipeline counters, printed when the pipeline finishes).
"""

import dataclasses
import pathlib
import re
from collections.abc import Iterable, Iterator, Mapping

import tensorflow_datasets as tfds

from pulse_jax import processes
from pulse_jax.data import examples, label_index, raw_sources
from pulse_jax.ecg.skips import SkipCounter
from pulse_jax.errors import DataError

Example = tuple[str, dict]
SKIP_COUNTER_NAMESPACE = "pulse_jax.skipped"
# Records per unit of work without Beam: a record takes ~0.1 s (two sheets rendered at 100 dpi), so a few seconds.
LOCAL_RECORDS_PER_SHARD = 50


@dataclasses.dataclass
class EcgBuilderConfig(tfds.core.BuilderConfig):
  """One way of building a dataset.

  Attributes:
    origin: 'released', 'from_raw' or 'synthetic' (see the module docstring).
    dpi: from_raw / synthetic: page resolution of the rendered sheets.
    seed: from_raw / synthetic: rendering and task seed; synthetic: also the corpus seed.
    synthetic_records: synthetic: records written per collection.
    collection_records: synthetic: (collection, records) pairs for collections of another size.
    records_per_shard: from_raw / synthetic under Beam: records one worker reads as a unit.
    validation_fraction, code15_test_fraction: patient shares held out (pulse_jax.data.raw_sources.RawSettings).
    tasks_per_record: mean instruction tasks per image.
    label_list_collections: collections whose sheets are asked every task cell once, each close-ended question
      a label-list one (raw_sources.RawSettings).
  """
  origin: str = "released"
  dpi: float = 200.0
  seed: int = 0
  synthetic_records: int = 24
  records_per_shard: int = 1000
  validation_fraction: float = 0.02
  code15_test_fraction: float = 0.02
  tasks_per_record: float = 1.75
  collection_records: tuple[tuple[str, int], ...] = ()
  label_list_collections: tuple[str, ...] = ()

  def raw_settings(self) -> raw_sources.RawSettings:
    return raw_sources.RawSettings(dpi=self.dpi, seed=self.seed, validation_fraction=self.validation_fraction,
                                   code15_test_fraction=self.code15_test_fraction,
                                   tasks_per_record=self.tasks_per_record,
                                   label_list_collections=self.label_list_collections)

  def records_of(self, collection: str) -> int:
    """Synthetic records written for `collection`."""
    return dict(self.collection_records).get(collection, self.synthetic_records)


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


_SIZED_SYNTHETIC = re.compile(r"synthetic_(\d+)(_detection)?")
# CODE-15% records of a `_detection` build per record of the other collections. CODE-15% is also by far the
# largest real collection (345k exams against PTB-XL's 22k).
DETECTION_SCALE = 3


def resolve_config(name: str) -> str | EcgBuilderConfig:
  """A config name as DatasetBuilder(config=...) takes it (other names are returned as they are):

    synthetic_<N>            the synthetic config with N records per collection;
    synthetic_<N>_detection  the same, with DETECTION_SCALE x N CODE-15% records and each CODE-15% sheet asked
                             its three task cells, the close-ended diagnosis one as the abnormality-detection label
                             list (code15-test's format): about one label-list example per sheet instead of 0.3,
                             which a model trained from scratch needs to learn that answer from the image.

  The config keeps the name, so builds of different sizes live in different folders; build ECGInstruct and
  ECGBench with the same name so that their CODE-15% patients are split between them without overlap.
  """
  sized = _SIZED_SYNTHETIC.fullmatch(name)
  if not sized:
    return name
  synthetic = next(c for c in standard_configs() if c.name == "synthetic")
  records = int(sized.group(1))
  config = dataclasses.replace(synthetic, name=name, synthetic_records=records,
                               description=f"{synthetic.description} {records} records per collection.")
  if not sized.group(2):
    return config
  return dataclasses.replace(
      config, collection_records=(("code15", DETECTION_SCALE * records),), label_list_collections=("code15",),
      description=f"{config.description[:-1]}, {DETECTION_SCALE * records} CODE-15% records, each sheet asked "
                  "the abnormality-detection label list.")


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

  def download_and_prepare(self, **kwargs) -> None:
    """TFDS' build (a no-op when the dataset is there), then the index of each split's labelled examples
    (pulse_jax.data.label_index) where it is missing."""
    super().download_and_prepare(**kwargs)
    label_index.write(self)

  def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
    # Whether the caller gave TFDS a Beam runner or options decides between the Beam and the in-process path.
    self._beam = download_config.beam_runner is not None or download_config.beam_options is not None
    with processes.Workers() as self._workers:  # the in-process path's, shared by its splits
      return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    if config.origin == "released":
      return self.released_splits(pathlib.Path(dl_manager.manual_dir))
    settings = config.raw_settings()
    splits = self.raw_splits(settings)
    sources = tuple(dict.fromkeys(source for split in splits.values() for source in split.sources))
    if config.origin == "synthetic":
      roots = raw_sources.write_synthetic_collections(pathlib.Path(dl_manager.download_dir),
                                                      {source: config.records_of(source) for source in sources},
                                                      config.seed)
    else:
      roots = raw_sources.collection_roots(dl_manager.manual_dir, sources)
    return {name: self._raw_split(name, split, roots) for name, split in splits.items()}

  def _raw_split(self, name: str, split: RawSplit, roots: Mapping[str, pathlib.Path]):
    """The examples of one from_raw split: a Beam PTransform when building with Beam, else a generator."""
    beam_build = getattr(self, "_beam", False)
    records_per_shard = self.builder_config.records_per_shard if beam_build else LOCAL_RECORDS_PER_SHARD
    shards = [shard for source in split.sources
              for shard in raw_sources.plan_shards(source, roots[source], records_per_shard)]
    if not beam_build:
      return self._generate_examples(name, shards, split.make)
    beam = tfds.core.lazy_imports.apache_beam
    return (beam.Create(shards) | beam.Reshuffle()
            | beam.FlatMap(_beam_shard_examples, make=split.make, counter_prefix=f"{self.name}/{name}"))

  def _generate_examples(self, split: str, shards: list[raw_sources.Shard],
                         make: raw_sources.ExampleMaker) -> Iterator[Example]:
    """The examples of `shards` in order, made in the worker processes when there are several shards and cores."""
    skipped = SkipCounter()

    def generated() -> Iterator[Example]:
      for examples, shard_skipped in self._workers.map(_shard_examples, [(shard, make) for shard in shards]):
        skipped.merge(shard_skipped)
        yield from examples
    return self.counted(split, generated(), skipped)

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


def _shard_examples(shard: raw_sources.Shard, make: raw_sources.ExampleMaker
                    ) -> tuple[list[Example], SkipCounter]:
  """The examples of one shard and what it skipped (in a worker process of the in-process path)."""
  skipped = SkipCounter()
  return list(raw_sources.shard_examples(shard, make, skipped)), skipped


def _beam_shard_examples(shard: raw_sources.Shard, make: raw_sources.ExampleMaker,
                         counter_prefix: str) -> Iterator[Example]:
  """The examples of one shard on a Beam worker; its skips become pipeline counters '<builder>/<split>: <reason>'."""
  beam = tfds.core.lazy_imports.apache_beam
  skipped = SkipCounter()
  yield from raw_sources.shard_examples(shard, make, skipped)
  for reason, count in skipped.counts.items():
    beam.metrics.Metrics.counter(SKIP_COUNTER_NAMESPACE, f"{counter_prefix}: {reason}").inc(count)
