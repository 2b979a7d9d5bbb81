"""Tokenizer: LLaMA id layout, round trips (byte fallback), parity with transformers, training and its CLI."""

import json
import pickle

import numpy as np
import pytest
import sentencepiece as spm

from pulse_jax import cli
from pulse_jax.data.tokenizer import Tokenizer, read_training_texts, train_tokenizer
from pulse_jax.errors import ConfigError, DataError

pytest_plugins = ["tests.text_fixtures"]

# Characters the training corpus never saw: they can only come back through the 256 byte pieces.
UNSEEN_TEXT = "Ω ≥ 0.1 mV in V₂–V₄ 😀 Ярославль\ttab  two spaces\nnew line"


def test_llama_id_layout(tokenizer, tokenizer_model):
  sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
  assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
  assert sp.id_to_piece(3) == "<0x00>" and sp.id_to_piece(258) == "<0xFF>"
  assert tokenizer.image_token_id == sp.get_piece_size() == 512
  assert tokenizer.vocab_size == 513


def test_round_trip_including_unseen_characters_via_byte_fallback(tokenizer, report_lines):
  for text in [*report_lines, UNSEEN_TEXT]:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < tokenizer.image_token_id for i in ids)
  byte_pieces = [i for i in tokenizer.encode("😀") if 3 <= i <= 258]
  assert len(byte_pieces) == 4  # the four UTF-8 bytes of U+1F600


def test_encode_bos_and_literal_special_strings(tokenizer):
  assert tokenizer.encode("Sinus rhythm.", add_bos=True) == [1] + tokenizer.encode("Sinus rhythm.")
  ids = tokenizer.encode("a</s><image>")  # typed text never becomes a control id or the image placeholder
  assert tokenizer.eos_id not in ids and tokenizer.image_token_id not in ids
  assert tokenizer.decode(ids) == "a</s><image>"


def test_decode_skips_control_image_and_padding_rows(tokenizer):
  ids = tokenizer.encode("QRS 92 ms")
  with_extras = [tokenizer.bos_id, tokenizer.image_token_id, *ids, tokenizer.image_token_id + 40, tokenizer.eos_id]
  assert tokenizer.decode(np.asarray(with_extras, np.int32)) == "QRS 92 ms"


def test_load_from_checkpoint_folder_and_pickle(tokenizer, tokenizer_model, tmp_path):
  (tmp_path / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
  from_folder = Tokenizer(tmp_path)
  assert from_folder.encode(UNSEEN_TEXT) == tokenizer.encode(UNSEEN_TEXT)
  unpickled = pickle.loads(pickle.dumps(tokenizer))  # grain workers receive the tokenizer pickled
  assert unpickled.encode(UNSEEN_TEXT) == tokenizer.encode(UNSEEN_TEXT)


def test_load_errors_name_the_file(tmp_path):
  with pytest.raises(ConfigError, match="tokenizer.model: tokenizer model not found"):
    Tokenizer(tmp_path)
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a model")
  with pytest.raises(ConfigError, match="garbage.model: not a SentencePiece model"):
    Tokenizer(garbage)


def test_training_errors(tmp_path, report_lines):
  with pytest.raises(DataError, match="no text"):
    train_tokenizer(["", "  \n"], tmp_path / "empty", vocab_size=300)
  with pytest.raises(DataError, match=r"small.*cannot train a 280-piece tokenizer.*smaller than required_chars"):
    train_tokenizer(report_lines, tmp_path / "small", vocab_size=280)


def test_vocab_size_is_an_upper_bound_on_tiny_corpora(tmp_path):
  path = train_tokenizer(["Sinus rhythm.", "Atrial fibrillation."], tmp_path / "tiny", vocab_size=5000)
  assert 259 < Tokenizer(path).image_token_id < 5000


def test_parity_with_transformers_llama_tokenizer(tokenizer, tokenizer_model, tmp_path, report_lines):
  transformers = pytest.importorskip("transformers")
  (tmp_path / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
  hf = transformers.LlamaTokenizer.from_pretrained(tmp_path, legacy=True, add_bos_token=True)
  for text in [*report_lines, UNSEEN_TEXT]:
    assert hf(text).input_ids == tokenizer.encode(text, add_bos=True), text
    assert hf.decode(hf(text).input_ids, skip_special_tokens=True) == tokenizer.decode(tokenizer.encode(text))


def test_read_training_texts(tmp_path):
  (tmp_path / "reports.txt").write_text("Sinus rhythm.\nFirst degree AV block.\n")
  records = [{"id": "r1", "conversations": [{"from": "human", "value": "<image>\nRhythm?"},
                                            {"from": "gpt", "value": "Sinus."}]}]
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "train.json").write_text(json.dumps(records))
  (tmp_path / "sub" / "more.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
  (tmp_path / "sub" / "ignored.csv").write_text("not,text")
  assert list(read_training_texts([tmp_path])) == ["Sinus rhythm.\nFirst degree AV block.\n", "\nRhythm?", "Sinus.",
                                                   "\nRhythm?", "Sinus."]
  (tmp_path / "bad.json").write_text(json.dumps([{"id": "r2"}]))
  with pytest.raises(DataError, match="bad.json: expected LLaVA records"):
    list(read_training_texts([tmp_path / "bad.json"]))
  with pytest.raises(DataError, match="missing: no such file"):
    list(read_training_texts([tmp_path / "missing"]))


def test_train_tokenizer_cli(tmp_path, capsys, report_lines):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(report_lines))
  out = tmp_path / "models" / "ecg"
  assert cli.main(["train-tokenizer", "--input", str(corpus), "--out", str(out), "--vocab-size", "450"]) == 0
  assert f"wrote {out}.model: 450 pieces; <image> = id 450, vocab_size 451" in capsys.readouterr().out
  assert Tokenizer(f"{out}.model").decode(Tokenizer(f"{out}.model").encode(UNSEEN_TEXT)) == UNSEEN_TEXT
  assert (tmp_path / "models" / "ecg.vocab").is_file()

  assert cli.main(["train-tokenizer", "--input", str(corpus), "--out", str(out), "--vocab-size", "100"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("pulse-jax train-tokenizer: error:") and "cannot train a 100-piece tokenizer" in err
  assert len(err.splitlines()) == 1
