"""Input pipeline throughput: examples per second on one core, from array_record to a device-ready batch.

Ours: pulse_jax.data.pipeline over a synthetic ECGInstruct built at PULSE's image handling (2200 x 1700 px sheets at
200 dpi, half standard PNG, half augmented JPEG; anyres with 336 px tiles and llava-v1.6's pinpoints, so 5 views
and 2,880 image tokens each), llava_v1 tokenisation, padded batches, then pulse_jax.parallel.global_batch onto the
device. The peer does the per-example work the LLaVA / PULSE trainer does, on the same examples held in memory
(no file reading, no batching, no device copy): decode, transformers' LLaVA-NeXT image processor (PIL backend),
the same llava_v1 encoding. The process is pinned to one CPU and timed in process CPU seconds (all threads), best
of --repeats windows after a warm-up. Prints, before the ratio, how many host cores keep a v5p-64 step fed.

  python benchmarks/input_pipeline.py [--records 12] [--batch 8] [--batches 4] [--repeats 3] [--data-dir DIR]
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from PIL import Image  # noqa: E402
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import best_seconds, report  # noqa: E402
from data_builders.ecg_instruct.ecg_instruct_dataset_builder import Builder  # noqa: E402
from pulse_jax import parallel  # noqa: E402
from pulse_jax.data import pipeline  # noqa: E402
from pulse_jax.data.builder import EcgBuilderConfig  # noqa: E402
from pulse_jax.data.conversation import encode_conversation  # noqa: E402
from pulse_jax.data.examples import conversations_of  # noqa: E402
from pulse_jax.data.image_processor import load_image  # noqa: E402
from pulse_jax.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from pulse_jax.models.config import PulseConfig  # noqa: E402
from pulse_jax.models.llava import num_image_tokens  # noqa: E402
from pulse_jax.train import STEP_INPUTS  # noqa: E402

SEQ_LEN, BUCKETS = 4096, (3072, 3584)
SPLITS = ("ptbxl", "mimic", "code15")

# The step a v5p-64 must be fed (issue 4): PULSE-7B at global batch 128, ~4k tokens per example, 6 N FLOPs per
# token (N = 7e9), a v5p chip at 459 TFLOP/s bf16 peak and 40 % MFU. v5p-64 counts TensorCores: 32 chips on 8
# hosts of 4 chips.
GLOBAL_BATCH, TOKENS_PER_EXAMPLE, PARAMS = 128, 4096, 7e9
CHIPS, HOSTS, CHIP_PEAK_FLOPS, MFU = 32, 8, 459e12, 0.40


def build(data_dir: str, records: int) -> tuple[dict, PulseConfig, dict]:
  """(data section, PULSE-7B model config, {split: examples}) of a synthetic ECGInstruct at 200 dpi."""
  config = EcgBuilderConfig(name=f"benchmark_{records}", origin="synthetic", dpi=200.0, synthetic_records=records)
  builder = Builder(config=config, data_dir=data_dir, file_format="array_record")
  with contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare()
  sources = builder.as_data_source()
  examples = {split: [sources[split][i] for i in range(len(sources[split]))] for split in SPLITS}
  texts = [turn["value"] for split in examples.values() for e in split for turn in conversations_of(e)]
  tokenizer = Tokenizer(train_tokenizer(texts, os.path.join(data_dir, "tokenizer"), 2000))
  model = PulseConfig()
  model = model.replace(text=dataclasses.replace(model.text, vocab_size=tokenizer.vocab_size),
                        image_token_id=tokenizer.image_token_id)
  data = dict(builder=f"ecg_instruct/benchmark_{records}", data_dir=data_dir, tokenizer=str(tokenizer.path),
              mixture={split: 1.0 for split in SPLITS}, eval_split="validation", seq_len=SEQ_LEN, buckets=BUCKETS,
              workers=0)
  return data, model, examples


def ours(data: dict, model: PulseConfig, batch: int, batches: int, repeats: int) -> float:
  """Examples per CPU second: array_record -> preprocessed, padded batch -> global jax.Arrays on the device."""
  stream = pipeline.batches(data, model, split="train", batch_size=batch, seed=0, process_index=0, process_count=1)
  mesh = parallel.make_mesh((1, -1, 1), jax.devices()[:1])

  def step():
    for local in itertools.islice(stream.iterator, batches):
      jax.block_until_ready(parallel.global_batch({k: local[k] for k in STEP_INPUTS}, mesh))

  return batch * batches / best_seconds(step, repeats=repeats, clock=time.process_time)


def peer(examples: list[dict], model: PulseConfig, tokenizer_path: str, repeats: int) -> float:
  """Examples per CPU second of LLaVA's per-example work: decode, transformers' LLaVA-NeXT processor, encode."""
  tile = model.vision.image_size
  processor = LlavaNextImageProcessorPil(
      size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, do_center_crop=True,
      resample=Image.Resampling.BICUBIC, image_grid_pinpoints=[list(p) for p in model.grid_pinpoints])
  tokenizer = Tokenizer(tokenizer_path)

  def step():
    for example in examples:
      image = load_image(example["image"]).convert("RGB")
      processed = processor(image, return_tensors="np")
      size = tuple(int(s) for s in processed["image_sizes"][0])
      encode_conversation(conversations_of(example), tokenizer, num_image_tokens=num_image_tokens(size, model),
                          max_length=SEQ_LEN, record_id="peer")

  return len(examples) / best_seconds(step, repeats=repeats, clock=time.process_time)


def print_v5p_arithmetic(examples_per_core_s: float) -> None:
  tokens = GLOBAL_BATCH * TOKENS_PER_EXAMPLE
  flops = 6 * PARAMS * tokens
  step_s = flops / (CHIPS * CHIP_PEAK_FLOPS * MFU)
  needed = GLOBAL_BATCH / step_s
  print(f"v5p-64 step: 6 x {PARAMS:.0e} params x {tokens:,} tokens ({GLOBAL_BATCH} x {TOKENS_PER_EXAMPLE}) = "
        f"{flops:.3e} FLOPs; {CHIPS} chips x {CHIP_PEAK_FLOPS / 1e12:.0f} TFLOP/s x {MFU:.0%} MFU = "
        f"{CHIPS * CHIP_PEAK_FLOPS * MFU:.3e} FLOP/s -> {step_s:.2f} s/step")
  print(f"  needs {needed:.1f} examples/s = {needed / HOSTS:.2f} per host ({HOSTS} hosts); at "
        f"{examples_per_core_s:.1f} examples/s per core: {needed / examples_per_core_s:.1f} cores in all, "
        f"{needed / HOSTS / examples_per_core_s:.2f} per host")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--records", type=int, default=12, help="synthetic records per collection")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--batches", type=int, default=4, help="batches per timed window")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--data-dir", help="where to build the dataset (default: a temporary folder)")
  args = parser.parse_args()
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  tfds.disable_progress_bar()
  with tempfile.TemporaryDirectory() as scratch:
    data, model, examples = build(args.data_dir or scratch, args.records)
    ours_rate = ours(data, model, args.batch, args.batches, args.repeats)
    sample = [e for split in SPLITS for e in examples[split]][:args.batch * args.batches]
    peer_rate = peer(sample, model, data["tokenizer"], args.repeats)
  print(f"input pipeline on one core: {args.records} synthetic records per collection at 2200 x 1700 px (PNG + "
        f"JPEG), 336 px anyres (5 views), llava_v1 ids, batches of {args.batch} (CPU time, best of {args.repeats})")
  print_v5p_arithmetic(ours_rate)
  report("examples per second per core, array_record -> device-ready batch", "ex/s", ours_rate, peer_rate,
         "LLaVA-NeXT (HF)")


if __name__ == "__main__":
  main()
