"""ECGInstruct / ECGBench TFDS builders: released, from_raw and synthetic configs (and Beam, when installed)."""

import collections
import contextlib
import dataclasses
import io
import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_builders.ecg_bench.ecg_bench_dataset_builder import Builder as BenchBuilder
from data_builders.ecg_instruct.ecg_instruct_dataset_builder import Builder as InstructBuilder
from pulse_jax import cli, metrics
from pulse_jax.data import raw_sources, released, tasks
from pulse_jax.data import builder as builder_module
from pulse_jax.data.builder import EcgBuilderConfig, resolve_config
from pulse_jax.data.conversation import render_prompt
from pulse_jax.data.examples import conversations_of, decode_text
from pulse_jax.data.image_processor import load_image
from pulse_jax.ecg import readers, render
from pulse_jax.ecg.snomed import CPSC_LABELS

tfds.disable_progress_bar()

# Small and fast: 12 records per collection (PTB-XL's ten folds each get a patient), 40 dpi sheets (440 x 340 px).
RAW = dict(dpi=40.0, synthetic_records=12, validation_fraction=0.15, code15_test_fraction=0.25, records_per_shard=5)
SYNTHETIC = EcgBuilderConfig(name="synthetic_test", origin="synthetic", **RAW)
FROM_RAW = EcgBuilderConfig(name="from_raw_test", origin="from_raw", **RAW)
RELEASED = "released"
PNG, JPEG = b"\x89PNG", b"\xff\xd8\xff"


def build(builder_cls, config, data_dir, manual_dir=None, beam=False):
  """(builder, printed output) after building `config` as array_record."""
  builder = builder_cls(config=config, data_dir=str(data_dir), file_format="array_record")
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir and str(manual_dir))
  if beam:
    apache_beam = pytest.importorskip("apache_beam")
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir), beam_options=apache_beam.options.pipeline_options.PipelineOptions(
            flags=["--runner=DirectRunner"]))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    builder.download_and_prepare(download_config=download_config)
  return builder, printed.getvalue()


def read_all(builder) -> dict[str, list[dict]]:
  """{split: examples} of a built dataset, read back TensorFlow-free."""
  return {split: [source[i] for i in range(len(source))]
          for split, source in builder.as_data_source().items()}


def by_id(examples: list[dict]) -> dict[str, dict]:
  return {decode_text(e["id"]): e for e in examples}


def text(example, *path):
  value = example
  for key in path:
    value = value[key]
  return decode_text(value)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def synthetic(data_dir):
  instruct, _ = build(InstructBuilder, SYNTHETIC, data_dir)
  bench, _ = build(BenchBuilder, SYNTHETIC, data_dir)
  corpus_dir = data_dir / "downloads" / "synthetic-n12-seed0"
  return read_all(instruct), read_all(bench), corpus_dir


@pytest.fixture(scope="module")
def raw_manual_dir(synthetic, tmp_path_factory):
  """The synthetic corpus copied as a from_raw manual_dir, with PTB-XL record 3's signal file truncated."""
  manual = tmp_path_factory.mktemp("raw") / "manual"
  shutil.copytree(synthetic[2], manual)
  signal = manual / "ptbxl" / "records500" / "00000" / "00003_hr.dat"
  signal.write_bytes(signal.read_bytes()[:1000])
  return manual


@pytest.fixture(scope="module")
def from_raw(raw_manual_dir, data_dir):
  """Built in shards of 5 records, so over worker processes (the synthetic build it is compared with: 1 shard)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(builder_module, "LOCAL_RECORDS_PER_SHARD", 5)
    instruct, instruct_out = build(InstructBuilder, FROM_RAW, data_dir, raw_manual_dir)
    bench, bench_out = build(BenchBuilder, FROM_RAW, data_dir, raw_manual_dir)
  return read_all(instruct), read_all(bench), instruct_out + bench_out


def test_synthetic_splits_and_features(synthetic):
  instruct, bench, _ = synthetic
  assert set(instruct) == {"ptbxl", "mimic", "code15", "validation"}
  assert set(bench) == set(raw_sources.BENCHMARK_SOURCES)
  for split, examples in {**instruct, **bench}.items():
    ids = [decode_text(e["id"]) for e in examples]
    assert examples and len(ids) == len(set(ids)), split
    for example in examples:
      conversations = conversations_of(example)
      assert conversations[0]["from"] == "human" and conversations[0]["value"].startswith("<image>\n")
      render_prompt(conversations, record_id=ids[0])  # raises DataError on malformed turns
      assert text(example, "metadata", "task_type") in tasks.TASK_TYPES
      assert text(example, "metadata", "category") in tasks.CATEGORIES
      variant = int(example["provenance"]["variant"])
      assert example["image"].startswith(PNG if variant == raw_sources.STANDARD else JPEG)
      image = load_image(example["image"])
      if variant == raw_sources.STANDARD:
        assert image.size == (440, 340)
  for split in ("ptbxl", "mimic", "code15"):
    assert {text(e, "metadata", "source") for e in instruct[split]} == {split}
    suffixes = {decode_text(e["id"])[-5:] for e in instruct[split]}
    assert suffixes == {"-img0", "-img1"}  # both sheets of every record, 1:1
  assert {text(e, "metadata", "task_type") for e in instruct["code15"]} == {"close-ended"}
  assert {text(e, "metadata", "task_type") for e in instruct["ptbxl"] + instruct["mimic"]} >= {
      "close-ended", "multiple-choice"}


def test_provenance_maps_each_image_back_to_its_signal(synthetic):
  instruct, _, corpus_dir = synthetic
  for example in instruct["ptbxl"][:4]:
    path = text(example, "provenance", "path")
    record = readers.read_wfdb(corpus_dir / "ptbxl" / path, record_id=text(example, "provenance", "record_id"))
    variant = int(example["provenance"]["variant"])
    assert path.endswith(f"{int(record.record_id):05d}_hr.dat")
    if variant == raw_sources.STANDARD:
      page = render.render_page(record, seed=render.variant_seed(record.record_id, variant), dpi=RAW["dpi"])
      assert render.encode(page.image, "png") == example["image"]


def test_benchmark_gold_labels(synthetic):
  _, bench, corpus_dir = synthetic
  ptbxl = {r.record_id: r for r in readers.read_ptbxl(corpus_dir / "ptbxl")}
  for example in bench["ptb-test"]:
    labels = [decode_text(label) for label in example["labels"]]
    answer = conversations_of(example)[-1]["value"]
    assert labels == metrics.gold_labels(answer, metrics.BENCH_SETS["ptb-test"], strict=True)
    record = ptbxl[text(example, "provenance", "record_id")]
    assert set(labels) == set(record.labels) and record.extra["strat_fold"] == 10
  for example in bench["cpsc-test"]:
    labels = [decode_text(label) for label in example["labels"]]
    assert labels and set(labels) <= set(CPSC_LABELS)
  for split in ("csn-test-no-cot", "g12-test-no-cot"):
    for example in bench[split]:
      assert conversations_of(example)[-1]["value"] in tuple("ABCDEFGH")
      assert len(example["labels"]) == 1


def test_no_patient_in_two_splits(synthetic):
  instruct, bench, _ = synthetic

  def patients(examples):
    return {(text(e, "provenance", "source"), text(e, "provenance", "patient_id") or text(e, "provenance", "record_id"))
            for e in examples}

  train = patients(e for split in ("ptbxl", "mimic", "code15") for e in instruct[split])
  validation = patients(instruct["validation"])
  test = patients(e for examples in bench.values() for e in examples)
  assert train and validation and test
  assert not train & validation and not train & test and not validation & test


def test_detection_builds_ask_every_code15_sheet_the_label_list(synthetic, data_dir):
  """3x the CODE-15% records, each sheet with a code15-test label-list question; the other collections as before."""
  config = dataclasses.replace(SYNTHETIC, name="synthetic_detection_test", collection_records=(("code15", 36),),
                               label_list_collections=("code15",))
  instruct, _ = build(InstructBuilder, config, data_dir)
  instruct = read_all(instruct)
  standard = synthetic[0]
  assert sorted(text(e, "id") for e in instruct["ptbxl"]) == sorted(text(e, "id") for e in standard["ptbxl"])
  assert (data_dir / "downloads" / "synthetic-n36-seed0" / "code15" / "exams.csv").is_file()
  sheets = {(text(e, "provenance", "record_id"), int(e["provenance"]["variant"])) for e in instruct["code15"]}
  listed = collections.Counter((text(e, "provenance", "record_id"), int(e["provenance"]["variant"]))
                               for e in instruct["code15"] if len(e["labels"]))
  assert len(sheets) > 2 * len({text(e, "provenance", "record_id") for e in standard["code15"]})
  assert set(listed) == sheets and set(listed.values()) == {1}
  question = next(conversations_of(e)[0]["value"] for e in instruct["code15"] if len(e["labels"]))
  assert "1dAVb(1st degree av block)" in question


def test_from_raw_matches_synthetic_and_counts_skips(synthetic, from_raw):
  instruct, bench, printed = from_raw
  assert "unreadable signal file 1 (e.g. 3)" in printed
  for split, examples in {**instruct, **bench}.items():
    reference = by_id((synthetic[0] | synthetic[1])[split])
    expected = {i for i, e in reference.items()
                if not (text(e, "provenance", "source") == "ptbxl" and text(e, "provenance", "record_id") == "3")}
    assert set(by_id(examples)) == expected, split
    for example_id, example in by_id(examples).items():
      assert example["image"] == reference[example_id]["image"]
      assert conversations_of(example) == conversations_of(reference[example_id])


def test_from_raw_under_beam_matches(from_raw, raw_manual_dir, tmp_path):
  instruct, _, _ = from_raw
  builder, printed = build(InstructBuilder, FROM_RAW, tmp_path, raw_manual_dir, beam=True)
  assert "unreadable signal file" in printed
  beam_instruct = read_all(builder)
  for split, examples in instruct.items():
    assert {i: e["image"] for i, e in by_id(beam_instruct[split]).items()} == {
        i: e["image"] for i, e in by_id(examples).items()}


def test_from_raw_names_missing_collection_folders(tmp_path):
  (tmp_path / "manual" / "ptbxl").mkdir(parents=True)
  with pytest.raises(Exception, match=r"mimic.*code15|code15.*mimic"):
    build(InstructBuilder, FROM_RAW, tmp_path / "data", tmp_path / "manual")


# --- released -----------------------------------------------------------------------------------------------------


def write_image(path: pathlib.Path, fmt: str = "PNG", seed: int = 0) -> bytes:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path, fmt)
  return path.read_bytes()


def turns(question: str, answer):
  return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def released_tree(tmp_path_factory):
  """Published-layout files with good records and one of each bad kind, and the bytes of the good images."""
  root = tmp_path_factory.mktemp("released")
  manual = root / "manual"
  write_image(root / "outside.png")
  images = {
      "ptb-xl/00000/00001_hr-0.png": write_image(manual / "ptb-xl/00000/00001_hr-0.png", seed=1),
      "mimic/p1000/p10000032/s40689238/40689238-0.png": write_image(
          manual / "mimic/p1000/p10000032/s40689238/40689238-0.png", "JPEG", seed=2),
      "code15_v4/123456-1.jpg": write_image(manual / "code15_v4/123456-1.jpg", "JPEG", seed=3),
      "ecgqa/0001.png": write_image(manual / "ecgqa/0001.png", seed=4),
  }
  (manual / "mimic" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
  (manual / "ptb-xl" / "escape.png").symlink_to(root / "outside.png")
  good = [
      {"id": "ptbxl-1", "image": "ptb-xl/00000/00001_hr-0.png", "conversations": turns("Rate?", "72 bpm."),
       "metadata": {"subtask": "Basic Waveform Understanding", "type": "close-ended", "source": "PTB-XL"}},
      {"id": "mimic-40689238", "image": "mimic/p1000/p10000032/s40689238/40689238-0.png",
       "conversations": turns("Rhythm?", "Sinus rhythm."),
       "metadata": {"subtask": "Rhythm Analysis", "type": "open-ended", "source": "MIMIC-IV-ECG"}},
      {"id": "code15-123456", "image": "code15_v4/123456-1.jpg", "conversations": turns("Labels?", "RBBB"),
       "metadata": {"subtask": "", "type": "close-ended", "source": "CODE-15%"}},
      {"id": "ecgqa-1", "image": "ecgqa/0001.png", "conversations": turns("Leads?", "lead I"),
       "metadata": {"subtask": "", "type": "close-ended", "source": "ECG-QA"}},
  ]
  bad = [
      {"id": "bad-missing", "image": "ptb-xl/00000/00099_hr-0.png", "conversations": turns("q", "a"),
       "metadata": {"source": "PTB-XL"}},
      {"id": "bad-undecodable", "image": "mimic/broken.png", "conversations": turns("q", "a"),
       "metadata": {"source": "MIMIC-IV-ECG"}},
      {"id": "bad-absolute", "image": str(root / "outside.png"), "conversations": turns("q", "a"),
       "metadata": {"source": "PTB-XL"}},
      {"id": "bad-dotdot", "image": "../outside.png", "conversations": turns("q", "a"),
       "metadata": {"source": "PTB-XL"}},
      {"id": "bad-symlink", "image": "ptb-xl/escape.png", "conversations": turns("q", "a"),
       "metadata": {"source": "PTB-XL"}},
  ]
  (manual / released.INSTRUCT_FILE).write_text(json.dumps(good[:2] + bad + good[2:]))
  bench_images = {name: write_image(manual / "images" / name, seed=10 + i) for i, name in enumerate(
      ("ptb-xl/00002_hr-0.png", "cpsc/A0001-0.png", "csn/JS00001-0.png", "ecgqa/7.png", "ecg-arena/1.jpg"))}
  bench_files = {
      "ptb-test": [
          {"id": "ptb-0", "image": "ptb-xl/00002_hr-0.png",
           "conversations": turns("Classes?", "NORM(normal ECG); MI(myocardial infarction)")},
          {"id": "ptb-missing", "image": "ptb-xl/00003_hr-0.png", "conversations": turns("Classes?", "CD")}],
      "cpsc-test": [{"id": "cpsc-0", "image": "cpsc/A0001-0.png", "conversations": turns("Dx?", "AF; RBBB")}],
      "csn-test-no-cot": [{"id": "csn-0", "image": "csn/JS00001-0.png", "conversations": turns("A. x\nB. y", "B")}],
      "ecgqa-test": [{"id": "qa-0", "image": "ecgqa/7.png",
                      "conversations": turns("Options: lead I, lead V2, none", ["lead I", "lead V2"])}],
      "arena": [{"id": "arena-0", "image": "ecg-arena/1.jpg",
                 "conversations": [{"question": "What rhythm?", "answer": "Sinus."},
                                   {"question": "Why?", "answer": "P before QRS."}]}],
  }
  for name, records in bench_files.items():
    (manual / f"{name}.json").write_text(json.dumps(records))
  return manual, images, bench_images


@pytest.fixture(scope="module")
def released_builds(released_tree, data_dir):
  manual, _, _ = released_tree
  instruct, instruct_out = build(InstructBuilder, RELEASED, data_dir / "released", manual)
  bench, bench_out = build(BenchBuilder, RELEASED, data_dir / "released", manual)
  return read_all(instruct), instruct_out, read_all(bench), bench_out


def test_released_instruct_keeps_good_records(released_tree, released_builds):
  _, images, _ = released_tree
  instruct, _, _, _ = released_builds
  assert {split: [decode_text(e["id"]) for e in examples] for split, examples in instruct.items()} == {
      "ptbxl": ["ptbxl-1"], "mimic": ["mimic-40689238"], "code15": ["code15-123456"], "ecgqa": ["ecgqa-1"]}
  ptbxl, mimic = instruct["ptbxl"][0], instruct["mimic"][0]
  assert ptbxl["image"] == images["ptb-xl/00000/00001_hr-0.png"]
  assert conversations_of(ptbxl) == turns("Rate?", "72 bpm.")
  assert {k: decode_text(v) for k, v in ptbxl["metadata"].items()} == {
      "source": "ptbxl", "task_type": "close-ended", "category": "", "subtask": "Basic Waveform Understanding"}
  assert text(ptbxl, "provenance", "path") == "records500/00000/00001_hr"
  assert text(ptbxl, "provenance", "record_id") == "1" and int(ptbxl["provenance"]["variant"]) == 0
  assert text(mimic, "provenance", "path") == "files/p1000/p10000032/s40689238/40689238"
  assert text(mimic, "provenance", "image_path") == "mimic/p1000/p10000032/s40689238/40689238-0.png"


def test_released_skips_and_counts_bad_records(released_builds):
  _, instruct_out, _, bench_out = released_builds
  assert "ecg_instruct/released ptbxl: 1 examples, skipped 4: unsafe image path 3" in instruct_out
  assert "missing image 1 (e.g. bad-missing)" in instruct_out
  assert "undecodable image 1 (e.g. bad-undecodable)" in instruct_out
  for bad in ("bad-absolute", "bad-dotdot", "bad-symlink"):
    assert bad in instruct_out
  assert "ecg_bench/released ptb-test: 1 examples, skipped 1: missing image 1 (e.g. ptb-missing)" in bench_out


def test_released_bench_sets_and_labels(released_tree, released_builds):
  _, _, bench_images = released_tree
  _, _, bench, _ = released_builds
  assert set(bench) == {"ptb-test", "cpsc-test", "csn-test-no-cot", "ecgqa-test", "arena"}
  labels = {split: [decode_text(label) for label in examples[0]["labels"]] for split, examples in bench.items()}
  assert labels == {"ptb-test": ["NORM", "MI"], "cpsc-test": ["AF", "RBBB"], "csn-test-no-cot": ["B"],
                    "ecgqa-test": ["lead I", "lead V2"], "arena": []}
  assert bench["ptb-test"][0]["image"] == bench_images["ptb-xl/00002_hr-0.png"]
  assert conversations_of(bench["ecgqa-test"][0])[-1]["value"] == "lead I, lead V2"
  assert conversations_of(bench["arena"][0]) == [
      {"from": "human", "value": "<image>\nWhat rhythm?"}, {"from": "gpt", "value": "Sinus."},
      {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "P before QRS."}]
  assert text(bench["cpsc-test"][0], "metadata", "source") == "cpsc"
  assert text(bench["cpsc-test"][0], "provenance", "record_id") == "A0001"


def test_build_data_command(released_tree, tmp_path, capsys):
  manual, _, _ = released_tree
  assert cli.main(["build-data", "--config", "configs/tiny.py", "--dataset", "ecg_bench/released",
                   "--data-dir", str(tmp_path), "--manual-dir", str(manual)]) == 0
  assert "ecg_bench/released: ptb-test 1, ecgqa-test 1, cpsc-test 1, csn-test-no-cot 1, arena 1" in (
      capsys.readouterr().out)
  assert len(tfds.data_source("ecg_bench/released", split="arena", data_dir=str(tmp_path))) == 1
  assert cli.main(["build-data", "--config", "configs/tiny.py", "--dataset", "ecg_nope/synthetic"]) == 1


def test_sized_synthetic_configs(tmp_path, capsys):
  """'synthetic_<N>': the synthetic config with N records per collection, in its own folder, readable by name."""
  sized = resolve_config("synthetic_12")
  assert (sized.name, sized.origin, sized.synthetic_records, sized.dpi) == ("synthetic_12", "synthetic", 12, 100.0)
  assert resolve_config("synthetic") == "synthetic" and resolve_config("synthetic_x") == "synthetic_x"
  detection = resolve_config("synthetic_12_detection")
  assert (detection.name, detection.synthetic_records, detection.label_list_collections) == (
      "synthetic_12_detection", 12, ("code15",))
  assert (detection.records_of("code15"), detection.records_of("ptbxl")) == (36, 12)
  assert cli.main(["build-data", "--config", "configs/tiny.py", "--dataset", "ecg_bench/synthetic_12",
                   "--data-dir", str(tmp_path)]) == 0
  assert "ecg_bench/synthetic_12: ptb-test" in capsys.readouterr().out
  assert len(tfds.data_source("ecg_bench/synthetic_12", split="cpsc-test", data_dir=str(tmp_path))) == 12
