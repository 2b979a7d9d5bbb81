"""`pulse-jax demo`: the path from raw signals to model logits, on the embedded synthetic corpus, on CPU.

  1. synthesise a miniature corpus in each real layout (PTB-XL, MIMIC-IV-ECG, CODE-15%, CPSC 2018);
  2. read it back with the collection readers, skipping and counting bad records;
  3. measure every record and render it twice (PULSE's standard : augmented = 1 : 1);
  4. train a small tokenizer on the reports and encode one llava_v1 conversation per image;
  5. preprocess the images (anyres tiles) and run the tiny PulseModel (configs/tiny.py) over a batch, jitted.

Each stage prints what it did and how long it took. The later stages of the full pipeline (TFDS builders,
training, evaluation, export) join this command as they land.
"""

import argparse
import io
import pathlib
import tempfile
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from pulse_jax.ecg import corpus, readers, render
from pulse_jax.ecg.measure import measure
from pulse_jax.ecg.skips import SkipCounter, map_skipping

_TINY_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "tiny.py"
_READERS = {
    "ptbxl": lambda root, skipped: readers.read_ptbxl(root, sampling_rate=500, skipped=skipped),
    "mimic": lambda root, skipped: readers.read_mimic(root, skipped=skipped),
    "code15": lambda root, skipped: readers.read_code15(root, skipped=skipped),
    "challenge": lambda root, skipped: readers.read_challenge(root, source="cpsc", skipped=skipped),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", default=None, help="where to write the corpus and images (default: a temp dir)")
  parser.add_argument("--n", type=int, default=24, help="records per collection")
  parser.add_argument("--seed", type=int, default=0)


class _Stage:
  """Prints a stage banner and its wall time."""

  def __init__(self, title: str):
    self.title = title

  def __enter__(self):
    print(f"\n== {self.title}", flush=True)
    self.start = time.perf_counter()
    return self

  def __exit__(self, *exc):
    if exc[0] is None:
      print(f"   ({time.perf_counter() - self.start:.1f} s)", flush=True)


def run(args: argparse.Namespace) -> int:
  with tempfile.TemporaryDirectory() as scratch:
    workdir = pathlib.Path(args.workdir or scratch)
    return _run(workdir, args.n, args.seed)


def _run(workdir: pathlib.Path, n: int, seed: int) -> int:
  with _Stage(f"1. synthesise {n} records per collection under {workdir}"):
    for layout in _READERS:
      corpus.write_corpus(layout, workdir / "raw" / layout, n, seed=seed, progress=True)

  with _Stage("2. read the collections back"):
    records, skipped = [], SkipCounter()
    for layout, read in _READERS.items():
      found = list(read(workdir / "raw" / layout, skipped))
      labels = sorted({label for r in found for label in r.labels})
      print(f"   {layout:9s} {len(found):4d} records; labels: {', '.join(labels) or '(report text only)'}")
      records += found
    print(f"   {skipped.summary() if skipped.total else 'no record skipped'}")

  with _Stage("3. measure and render (standard + augmented per record)"):
    images_dir = workdir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rendered, render_skips, sizes = [], SkipCounter(), []

    def render_record(record):
      header = render.printout_header(record, measure(record))
      standard, augmented = render.render_variants(record, base_seed=seed, header=header)
      return record, [render.encode(standard.image, "png"), render.encode(augmented.image, "jpeg")]

    start = time.perf_counter()
    bar = tqdm(records, desc="render", unit="record")
    for record, encoded in map_skipping(render_record, bar, item_id=lambda r: r.record_id, skipped=render_skips):
      for variant, data in enumerate(encoded):
        path = images_dir / f"{record.provenance.source}-{record.record_id}-{variant}.{'png' if variant == 0 else 'jpg'}"
        path.write_bytes(data)
        sizes.append(len(data))
      rendered.append((record, encoded))
    seconds = time.perf_counter() - start
    print(f"   {2 * len(rendered)} images in {images_dir} ({2 * len(rendered) / seconds:.1f} images/s incl. "
          f"measurement, mean {np.mean(sizes) / 1024:.0f} KB); "
          f"{render_skips.summary() if render_skips.total else 'none skipped'}")

  with _Stage("4. tokenizer and llava_v1 conversations"):
    from pulse_jax.config import load_config, model_config
    from pulse_jax.data.conversation import encode_conversation
    from pulse_jax.data.tokenizer import Tokenizer, train_tokenizer
    from pulse_jax.models import num_image_tokens

    config = model_config(load_config(str(_TINY_CONFIG)).model)
    reports = [r.report for r, _ in rendered if r.report]
    prefix = train_tokenizer(reports * 4, workdir / "tokenizer" / "ecg", vocab_size=config.image_token_id)
    tokenizer = Tokenizer(prefix)
    if tokenizer.image_token_id != config.image_token_id:
      config = config.replace(image_token_id=tokenizer.image_token_id)
    print(f"   tokenizer: {tokenizer.image_token_id} pieces + <image> (model vocab {config.text.vocab_size})")

  with _Stage("5. anyres preprocessing and a jitted PulseModel forward (configs/tiny.py, random weights)"):
    import jax
    from flax import nnx
    from pulse_jax.data import image_processor as ip
    from pulse_jax.models import PulseModel, feature_layout

    proc = ip.ImageProcessorConfig(tile_size=config.vision.image_size, grid_pinpoints=config.grid_pinpoints)
    batch = rendered[:4]
    pixels = np.zeros((len(batch), config.max_views, 3, proc.tile_size, proc.tile_size), np.float32)
    sizes, prompts = [], []
    for row, (record, encoded) in enumerate(batch):
      out = ip.preprocess(Image.open(io.BytesIO(encoded[1])), proc)
      pixels[row, :len(out.pixel_values)] = out.pixel_values
      sizes.append(out.image_size)
      conversation = [{"from": "human", "value": "<image>\nWhat does this ECG show?"},
                      {"from": "gpt", "value": record.report or "A 12-lead ECG."}]
      prompts.append(encode_conversation(conversation, tokenizer, record_id=record.record_id,
                                         num_image_tokens=num_image_tokens(out.image_size, config),
                                         max_length=2048))
    length = max(len(p.input_ids) for p in prompts)
    ids = np.zeros((len(batch), length), np.int32)
    mask = np.zeros((len(batch), length), bool)
    for row, p in enumerate(prompts):
      ids[row, :len(p.input_ids)], mask[row, :len(p.input_ids)] = p.input_ids, True
    model = PulseModel(config, rngs=nnx.Rngs(seed))
    forward = nnx.jit(lambda m, i, p, l, a: m(i, p, attention_mask=a, layout=l))
    layout = feature_layout(np.array(sizes), config)
    start = time.perf_counter()
    logits = jax.block_until_ready(forward(model, ids, pixels, layout, mask))
    compiled = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(forward(model, ids, pixels, layout, mask))
    print(f"   batch {ids.shape} ({', '.join(f'{h}x{w}' for h, w in sizes)} px images, "
          f"{[int(n) for n in (ids == config.image_token_id).sum(1)]} image tokens) -> logits {logits.shape}; "
          f"compile+run {compiled:.1f} s, run {time.perf_counter() - start:.2f} s; finite: "
          f"{bool(np.isfinite(np.asarray(logits)).all())}")

  print(f"\ndemo done: {len(records)} records read, {2 * len(rendered)} images rendered, model forward ok.")
  return 0
