"""The language model's SentencePiece tokenizer (LLaMA / Vicuna layout), and training a small one from text.

PULSE uses Vicuna-7B's `tokenizer.model`: a SentencePiece BPE model with <unk>=0, <s>=1, </s>=2, the 256 byte
pieces <0x00>..<0xFF> at 3..258 (byte fallback: any UTF-8 text round-trips) and merges after them, 32,000 pieces
in all. LLaVA-NeXT appends one token, "<image>", at id 32000 = the base vocabulary size; the prompt holds one copy
of it per image feature and the model swaps those positions for the projected vision features (`image_token_id`
in pulse_jax.models.PulseConfig). `Tokenizer` reports that id and counts it in `vocab_size`.

Encoding is SentencePiece's own: every call prepends the dummy-prefix space ("Hello" -> "▁Hello") and never turns
text such as "</s>" or "<image>" into control ids. That is what the legacy slow LlamaTokenizer PULSE trained with
(transformers 4.37, `use_fast=False`) does for each run of text between special tokens, which is why
pulse_jax.data.conversation can build a prompt piece by piece and get the ids of the whole prompt.

`train_tokenizer` (and `pulse-jax train-tokenizer`) trains a LLaMA-style model of any size on a corpus, for tiny
from-scratch demo models and tests.
"""

import argparse
import json
import logging
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

from pulse_jax.errors import ConfigError, DataError

IMAGE_TOKEN = "<image>"
MODEL_FILE_NAME = "tokenizer.model"  # the file name inside a Hugging Face / LLaVA checkpoint folder

# SentencePiece keeps every sentence it is given in memory; beyond this many it trains on a random sample.
MAX_TRAINING_SENTENCES = 2_000_000

_logger = logging.getLogger(__name__)


class Tokenizer:
  """A LLaMA SentencePiece model plus LLaVA's "<image>" placeholder.

  Ids: [0, image_token_id) are SentencePiece pieces; image_token_id = the base model's piece count (32000 for
  Vicuna); vocab_size = image_token_id + 1. pad_id is the unk id, as LLaVA sets `pad_token = unk_token`: padding
  is masked out of attention and loss, so it only needs to be a valid embedding row, and LLaVA's keeps batches
  identical to the original's.
  """

  def __init__(self, model_path: str | os.PathLike):
    """Loads `model_path`: a SentencePiece .model file or a checkpoint folder holding tokenizer.model."""
    path = pathlib.Path(model_path)
    if path.is_dir():
      path = path / MODEL_FILE_NAME
    if not path.is_file():
      raise ConfigError(f"{path}: tokenizer model not found")
    self.path = path
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.Load(str(path))
    except (OSError, RuntimeError) as e:
      raise ConfigError(f"{path}: not a SentencePiece model ({e})") from e
    for name, token_id in (("unk", self._sp.unk_id()), ("bos", self._sp.bos_id()), ("eos", self._sp.eos_id())):
      if token_id < 0:
        raise ConfigError(f"{path}: the model defines no {name} token; a LLaMA tokenizer needs unk, bos and eos")

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def pad_id(self) -> int:
    return self._sp.unk_id()

  @property
  def image_token_id(self) -> int:
    return self._sp.get_piece_size()

  @property
  def vocab_size(self) -> int:
    """SentencePiece pieces plus the image placeholder (32001 for Vicuna; the model may pad its table further)."""
    return self.image_token_id + 1

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """Piece ids of `text` (with the dummy-prefix space); "<image>" and "</s>" in `text` stay plain characters."""
    return self._sp.encode(text, add_bos=add_bos)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` (a list or an int array). Control ids (<s>, </s>) decode to nothing; ids at or above
    image_token_id (image placeholders, and the rows a model pads its embedding table with) are skipped."""
    return self._sp.decode([int(i) for i in ids if 0 <= i < self.image_token_id])


def train_tokenizer(texts: Iterable[str], out_prefix: str | os.PathLike, vocab_size: int) -> pathlib.Path:
  """Trains a LLaMA-style BPE SentencePiece model on `texts` and returns the path of `{out_prefix}.model`.

  The layout matches LLaMA's (<unk>=0, <s>=1, </s>=2, no pad piece, 256 byte-fallback pieces at 3..258, digits
  split, identity normalisation, whitespace kept as is), so `Tokenizer` treats it exactly like Vicuna's.
  `{out_prefix}.vocab` (piece and score per line) is written beside it. Each text is split into lines, blank
  lines dropped. `vocab_size` is an upper bound: a corpus too small to fill it yields fewer pieces (logged).

  Raises:
    DataError: no text, or `vocab_size` cannot hold the control and byte pieces plus every distinct character.
  """
  out_prefix = pathlib.Path(out_prefix)
  out_prefix.parent.mkdir(parents=True, exist_ok=True)
  sentences = [line for text in texts for line in text.splitlines() if line.strip()]
  if not sentences:
    raise DataError(f"{out_prefix}: no text to train a tokenizer on")
  try:
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(sentences), model_prefix=str(out_prefix), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True, character_coverage=1.0,
        normalization_rule_name="identity", add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, hard_vocab_limit=False, input_sentence_size=MAX_TRAINING_SENTENCES,
        shuffle_input_sentence=True, num_threads=os.cpu_count() or 1, minloglevel=2)
  except RuntimeError as e:
    raise DataError(f"{out_prefix}: cannot train a {vocab_size}-piece tokenizer on {len(sentences)} lines: {e}",
                    reason="tokenizer training failed") from e
  model_path = pathlib.Path(f"{out_prefix}.model")
  pieces = Tokenizer(model_path).image_token_id
  if pieces < vocab_size:
    _logger.info("%s: the corpus filled %d of %d pieces", model_path, pieces, vocab_size)
  return model_path


def read_training_texts(paths: Sequence[str | os.PathLike]) -> Iterator[str]:
  """Texts to train on, from files or folders (searched recursively for *.txt, *.json, *.jsonl).

  .json files hold a list of LLaVA records (ECGInstruct's format) and .jsonl files one record per line; their
  conversation values are used, without "<image>". Any other file is read as plain text.
  """
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".json", ".jsonl"))
    elif path.is_file():
      files = [path]
    else:
      raise DataError(f"{path}: no such file or folder")
    for file in files:
      yield from _texts_in_file(file)


def _texts_in_file(path: pathlib.Path) -> Iterator[str]:
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text ({e})", reason="not text") from e
  if path.suffix not in (".json", ".jsonl"):
    yield text
    return
  try:
    records = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()
                                                                  if line.strip()]
    values = [turn["value"] for record in records for turn in record["conversations"]]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise DataError(f"{path}: expected LLaVA records with 'conversations' of {{'from', 'value'}} turns ({e!r})",
                    reason="malformed records") from e
  for value in values:
    yield value.replace(IMAGE_TOKEN, "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_DIR",
                      help="text files (one sentence per line), LLaVA .json/.jsonl records, or folders of them")
  parser.add_argument("--out", required=True, type=pathlib.Path, metavar="PREFIX",
                      help="writes PREFIX.model and PREFIX.vocab")
  parser.add_argument("--vocab-size", type=int, required=True, metavar="N",
                      help="SentencePiece pieces, at most (LLaMA: 32000); at least 259 plus the corpus' characters")


def run(args: argparse.Namespace) -> None:
  model_path = train_tokenizer(read_training_texts(args.input), args.out, args.vocab_size)
  tokenizer = Tokenizer(model_path)
  print(f"wrote {model_path}: {tokenizer.image_token_id} pieces; <image> = id {tokenizer.image_token_id}, "
        f"vocab_size {tokenizer.vocab_size}")
