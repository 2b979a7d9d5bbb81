"""`pulse-jax chat`: a random tiny model in a Hugging Face folder answers about every real ECG image, streaming."""

import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from pulse_jax import chat, cli, decode, evaluate, metrics, parallel
from pulse_jax.config import apply_overrides, load_config, model_config
from pulse_jax.convert import hf
from pulse_jax.data.conversation import SYSTEM_PROMPT, encode_prompt
from pulse_jax.data.image_processor import load_image
from pulse_jax.data.tokenizer import MODEL_FILE_NAME, Tokenizer, train_tokenizer
from pulse_jax.models import PulseModel
from tests.conftest import REPO_ROOT
from tests.test_evaluate import SMALL_MODEL

QUESTION = "What are the main features in this ECG image?"
STEPS = 5


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
  """A transformers LLaVA-NeXT folder (spatial_unpad, as transformers runs it) with its tokenizer.model."""
  root = tmp_path_factory.mktemp("chat")
  corpus = [SYSTEM_PROMPT, QUESTION] + [synonym for finding in metrics.REPORT_FINDINGS for synonym in finding.synonyms]
  tokenizer = Tokenizer(train_tokenizer(corpus, root / "tokenizer", 400))
  config = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")), [
      *SMALL_MODEL, "model.merge_mode=spatial_unpad", f"model.text.vocab_size={tokenizer.vocab_size}",
      f"model.image_token_id={tokenizer.image_token_id}"])
  folder = root / "tiny-llava-next"
  hf.save(PulseModel(model_config(config.model), rngs=nnx.Rngs(1)), model_config(config.model), folder)
  shutil.copy(tokenizer.path, folder / MODEL_FILE_NAME)
  return folder


@pytest.fixture(scope="module")
def loaded(checkpoint_dir):
  return evaluate.load_model(checkpoint_dir, None, parallel.make_mesh((1, 1, 1), jax.devices()[:1]), parallel.RULES)


def test_chat_answers_about_every_real_image(checkpoint_dir, real_ecg_dir, capsys):
  images = sorted((real_ecg_dir / "images").iterdir())
  assert len(images) == 10
  for image in images:
    code = cli.main(["chat", "--checkpoint", str(checkpoint_dir), "--image", str(image), QUESTION,
                     "--max-new-tokens", str(STEPS), "--temperature", "0"])
    out = capsys.readouterr()
    assert code == 0, (image.name, out.err)
    assert out.out.endswith("\n") and out.out.strip(), image.name


def test_streamed_pieces_join_to_the_batched_greedy_answer(loaded, real_ecg_dir):
  image = evaluate.model_image(load_image(real_ecg_dir / "images" / "ecg00053.png"), loaded.config, "ecg00053")
  # The settings and image of the command-line test: the stream's executables are compiled already.
  pieces = list(chat.answer_stream(loaded, image, QUESTION, max_new_tokens=STEPS, temperature=0.0))
  prompt = encode_prompt([{"from": "human", "value": f"<image>\n{QUESTION}"}], loaded.tokenizer,
                         num_image_tokens=image.num_tokens, record_id="ecg00053")
  tokens, lengths = decode.generate(loaded.model, loaded.config, [prompt], image.pixel_values[None],
                                    image.layout[None], max_new_tokens=STEPS, eos_id=loaded.tokenizer.eos_id,
                                    pad_id=loaded.tokenizer.pad_id)
  assert "".join(pieces) == loaded.tokenizer.decode(tokens[0, :lengths[0]])
  assert len(pieces) > 1  # streamed as generated, not printed once at the end


def test_pieces_wait_for_whole_characters(loaded, monkeypatch):
  """Characters outside the vocabulary arrive as several byte tokens; nothing is shown until one is complete."""
  text = "ST é ü ok"
  ids = loaded.tokenizer.encode(text)
  assert len(ids) > len(text.split())  # é and ü are byte-fallback pieces
  monkeypatch.setattr(decode, "stream", lambda *args, **kwargs: iter(ids))
  image = evaluate.ModelImage(np.zeros(1), np.zeros(1), num_tokens=4)
  pieces = list(chat.answer_stream(loaded, image, QUESTION, max_new_tokens=len(ids)))
  assert "".join(pieces) == text
  assert not any("\ufffd" in piece for piece in pieces)
  assert len(pieces) < len(ids)  # the byte tokens of one character came out as one piece


def test_bad_image_is_a_one_line_error(checkpoint_dir, tmp_path, capsys):
  bad = tmp_path / "scan.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
  for image in (bad, tmp_path / "missing.jpg"):
    assert cli.main(["chat", "--checkpoint", str(checkpoint_dir), "--image", str(image), QUESTION]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pulse-jax chat: error: ") and image.name in err


def test_orbax_checkpoint_needs_a_config(tmp_path, real_ecg_dir, capsys):
  image = real_ecg_dir / "images" / "ecg00008.jpg"
  assert cli.main(["chat", "--checkpoint", str(tmp_path), "--image", str(image), QUESTION]) == 1
  assert "holds no model config; pass --config" in capsys.readouterr().err
