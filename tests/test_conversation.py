"""llava_v1 template: golden prompt text, ids and loss masks, parity with LLaVA's tokenization, truncation, errors."""

import logging

import numpy as np
import pytest

from pulse_jax.data.conversation import SYSTEM_PROMPT, encode_conversation, encode_prompt, render_prompt
from pulse_jax.errors import DataError

pytest_plugins = ["tests.text_fixtures"]

N_IMAGE = 7  # placeholders per image in these tests (576 per view for PULSE)
IGNORE_INDEX, LLAVA_IMAGE_INDEX = -100, -200  # LLaVA's constants

ONE_TURN = [{"from": "human", "value": "What is the rhythm in this ECG?\n<image>"},
            {"from": "gpt", "value": "Sinus bradycardia, otherwise normal ECG."}]
TWO_TURNS = [{"from": "human", "value": "<image>\nDescribe the main features of this ECG image."},
             {"from": "gpt", "value": "The ECG shows sinus rhythm with a normal axis and no acute ST changes."},
             {"from": "human", "value": "Is there evidence of a conduction abnormality?"},
             {"from": "gpt", "value": "Yes, a left bundle branch block is present, with a QRS duration of 148 ms."}]
# Turn texts that exercise tokenizer corners: digits after the "ASSISTANT: " space, leading/trailing whitespace,
# non-ASCII through byte fallback, an image-only first turn.
CORNERS = [{"from": "human", "value": "  <image>  "},
           {"from": "gpt", "value": "1dAVb(1st degree av block) "},
           {"from": "human", "value": "Und auf Deutsch?\n"},
           {"from": "gpt", "value": " Sinusrhythmus, AV-Block I° — 心电图 ✓"},
           {"from": "human", "value": "QTc?"},
           {"from": "gpt", "value": "\n440 ms"}]


def _answers(conversations):
  return [turn["value"] for turn in conversations if turn["from"] == "gpt"]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
  """[start, end) of each run of True."""
  edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
  return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_golden_one_turn_template():
  assert render_prompt(ONE_TURN, record_id="r") == (
      "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
      "detailed, and polite answers to the human's questions. USER: <image>\nWhat is the rhythm in this ECG? "
      "ASSISTANT: Sinus bradycardia, otherwise normal ECG.</s>")
  assert render_prompt(ONE_TURN[:1], record_id="r") == (
      "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
      "detailed, and polite answers to the human's questions. USER: <image>\nWhat is the rhythm in this ECG? "
      "ASSISTANT:")


def test_golden_two_turn_template():
  assert render_prompt(TWO_TURNS, record_id="r") == (
      f"{SYSTEM_PROMPT} USER: <image>\nDescribe the main features of this ECG image. ASSISTANT: The ECG shows sinus "
      "rhythm with a normal axis and no acute ST changes.</s>USER: Is there evidence of a conduction abnormality? "
      "ASSISTANT: Yes, a left bundle branch block is present, with a QRS duration of 148 ms.</s>")
  assert render_prompt(CORNERS[:2], record_id="r") == (
      f"{SYSTEM_PROMPT} USER: <image> ASSISTANT: 1dAVb(1st degree av block) </s>")


@pytest.mark.parametrize("conversations", [ONE_TURN, TWO_TURNS, CORNERS], ids=["one", "two", "corners"])
def test_loss_mask_covers_exactly_the_answers_and_their_eos(tokenizer, conversations):
  encoded = encode_conversation(conversations, tokenizer, num_image_tokens=N_IMAGE, max_length=4096, record_id="r")
  ids, mask = encoded.input_ids, encoded.loss_mask
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape and not encoded.truncated
  assert ids[0] == tokenizer.bos_id and not mask[0]
  runs = _runs(mask)
  assert [tokenizer.decode(ids[start:end - 1]) for start, end in runs] == _answers(conversations)
  assert all(ids[end - 1] == tokenizer.eos_id for _, end in runs)
  assert (ids == tokenizer.eos_id).sum() == len(runs)  # no </s> outside the trained runs
  assert ids[-1] == tokenizer.eos_id


def test_image_placeholders_expanded_in_place(tokenizer):
  encoded = encode_conversation(TWO_TURNS, tokenizer, num_image_tokens=N_IMAGE, max_length=4096, record_id="r")
  where = np.flatnonzero(encoded.input_ids == tokenizer.image_token_id)
  start = 1 + len(tokenizer.encode(f"{SYSTEM_PROMPT} USER: "))
  np.testing.assert_array_equal(where, np.arange(start, start + N_IMAGE))
  assert not encoded.loss_mask[where].any()
  after = tokenizer.encode("\nDescribe the main features of this ECG image. ASSISTANT:")
  assert encoded.input_ids[start + N_IMAGE:start + N_IMAGE + len(after)].tolist() == after


def test_prompt_ids_are_the_training_ids_up_to_the_answer(tokenizer):
  encoded = encode_conversation(TWO_TURNS, tokenizer, num_image_tokens=N_IMAGE, max_length=4096, record_id="r")
  for n_turns, (answer_start, _) in zip((1, 3), _runs(encoded.loss_mask)):
    prompt = encode_prompt(TWO_TURNS[:n_turns], tokenizer, num_image_tokens=N_IMAGE, record_id="r")
    assert prompt.dtype == np.int32
    np.testing.assert_array_equal(prompt, encoded.input_ids[:answer_start])
  assert tokenizer.decode(prompt).endswith("ASSISTANT:")


def _llava_preprocess_v1(prompt: str, tokenize) -> tuple[list[int], list[bool]]:
  """LLaVA's tokenizer_image_token + preprocess_v1 (llava/mm_utils.py, llava/train/train.py, as PULSE ran them
  with a legacy tokenizer): (input_ids with one LLAVA_IMAGE_INDEX, loss mask). `tokenize` adds <s>."""
  def tokenizer_image_token(text):
    chunks = [tokenize(chunk) for chunk in text.split("<image>")]
    ids = [chunks[0][0]]
    for i, chunk in enumerate(chunks):
      ids += ([LLAVA_IMAGE_INDEX] if i else []) + chunk[1:]
    return ids

  input_ids = tokenizer_image_token(prompt)
  target = list(input_ids)
  sep = " ASSISTANT: "
  cur_len = 1
  target[:cur_len] = [IGNORE_INDEX]
  for rou in prompt.split("</s>"):
    if rou == "":
      break
    parts = rou.split(sep)
    if len(parts) != 2:
      break
    parts[0] += sep
    round_len = len(tokenizer_image_token(rou))
    instruction_len = len(tokenizer_image_token(parts[0])) - 2
    target[cur_len:cur_len + instruction_len] = [IGNORE_INDEX] * instruction_len
    cur_len += round_len
  target[cur_len:] = [IGNORE_INDEX] * (len(target) - cur_len)
  assert cur_len == len(input_ids), "LLaVA would mask this whole sample (tokenization mismatch)"
  return input_ids, [t != IGNORE_INDEX for t in target]


def _collapse_image(ids: np.ndarray, mask: np.ndarray, image_token_id: int) -> tuple[list[int], list[bool]]:
  """Our ids/mask with the N placeholders folded back into LLaVA's single image index."""
  start = int(np.flatnonzero(ids == image_token_id)[0])
  keep = np.ones(len(ids), bool)
  keep[start + 1:start + N_IMAGE] = False
  ids = np.where(ids == image_token_id, LLAVA_IMAGE_INDEX, ids)
  return ids[keep].tolist(), mask[keep].tolist()


@pytest.mark.parametrize("conversations", [ONE_TURN, TWO_TURNS, CORNERS], ids=["one", "two", "corners"])
def test_ids_and_mask_equal_llava_with_the_slow_legacy_tokenizer(tokenizer, tokenizer_model, conversations):
  """The oracle is transformers' sentencepiece ("slow") backend, whose per-segment encoding is the slow
  LlamaTokenizer(legacy=True) of transformers 4.37 that PULSE trained with."""
  sentencepiece_backend = pytest.importorskip("transformers.tokenization_utils_sentencepiece")
  slow = sentencepiece_backend.SentencePieceBackend(vocab_file=str(tokenizer_model), legacy=True, unk_token="<unk>",
                                                    bos_token="<s>", eos_token="</s>")
  tokenize = lambda text: [tokenizer.bos_id] + slow(text, add_special_tokens=False).input_ids  # noqa: E731
  encoded = encode_conversation(conversations, tokenizer, num_image_tokens=N_IMAGE, max_length=4096, record_id="r")
  llava = _llava_preprocess_v1(render_prompt(conversations, record_id="r"), tokenize)
  assert _collapse_image(encoded.input_ids, encoded.loss_mask, tokenizer.image_token_id) == llava


@pytest.mark.parametrize("conversations", [ONE_TURN, TWO_TURNS, TWO_TURNS[:3]], ids=["one", "two", "prompt"])
def test_ids_equal_transformers_llama_tokenizer_on_the_whole_prompt(tokenizer, tokenizer_model, tmp_path,
                                                                    conversations):
  """LlamaTokenizer(legacy=True) with "<image>" added at id = base vocab, as LLaVA-NeXT checkpoints have it.

  transformers 5's LlamaTokenizer prepends "▁" to a text run only if it does not already start with a space, where
  sentencepiece (and the slow tokenizer PULSE used) always does; the two differ by one token on the text after an
  image-only first turn (" ASSISTANT:"), which is never trained on. CORNERS is therefore checked against the slow
  tokenizer only (above).
  """
  transformers = pytest.importorskip("transformers")
  (tmp_path / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
  hf = transformers.LlamaTokenizer.from_pretrained(tmp_path, legacy=True, add_bos_token=True)
  hf.add_tokens([transformers.AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
  assert hf.convert_tokens_to_ids("<image>") == tokenizer.image_token_id
  hf_ids = np.asarray(hf(render_prompt(conversations, record_id="r")).input_ids)
  image_at = int(np.flatnonzero(hf_ids == tokenizer.image_token_id)[0])
  expected = np.insert(hf_ids, image_at, [tokenizer.image_token_id] * (N_IMAGE - 1))
  if conversations[-1]["from"] == "gpt":
    ours = encode_conversation(conversations, tokenizer, num_image_tokens=N_IMAGE, max_length=4096,
                               record_id="r").input_ids
  else:
    ours = encode_prompt(conversations, tokenizer, num_image_tokens=N_IMAGE, record_id="r")
  np.testing.assert_array_equal(ours, expected)


def _three_rounds():
  return [*TWO_TURNS, {"from": "human", "value": "Which leads show ST elevation?"},
          {"from": "gpt", "value": "None of them."}]


def test_truncation_drops_whole_trailing_rounds_and_warns(tokenizer, caplog):
  full = encode_conversation(_three_rounds(), tokenizer, num_image_tokens=N_IMAGE, max_length=4096, record_id="r")
  second_round_end = _runs(full.loss_mask)[1][1]
  with caplog.at_level(logging.WARNING):
    cut = encode_conversation(_three_rounds(), tokenizer, num_image_tokens=N_IMAGE,
                              max_length=len(full.input_ids) - 1, record_id="ecg-0042")
  assert cut.truncated
  np.testing.assert_array_equal(cut.input_ids, full.input_ids[:second_round_end])
  np.testing.assert_array_equal(cut.loss_mask, full.loss_mask[:second_round_end])
  assert "ecg-0042" in caplog.text and "kept 2 of 3 rounds" in caplog.text


def test_truncation_cuts_a_first_round_that_does_not_fit(tokenizer, caplog):
  full = encode_conversation(ONE_TURN, tokenizer, num_image_tokens=N_IMAGE, max_length=4096, record_id="r")
  answer_start = _runs(full.loss_mask)[0][0]
  with caplog.at_level(logging.WARNING):
    cut = encode_conversation(ONE_TURN, tokenizer, num_image_tokens=N_IMAGE, max_length=answer_start + 3,
                              record_id="ecg-0043")
  assert cut.truncated and len(cut.input_ids) == answer_start + 3 and cut.loss_mask.sum() == 3
  np.testing.assert_array_equal(cut.input_ids, full.input_ids[:answer_start + 3])
  assert "ecg-0043" in caplog.text and "cut the first round" in caplog.text


def test_truncation_never_cuts_the_image_and_rejects_samples_left_without_answers(tokenizer, caplog):
  full = encode_conversation(ONE_TURN, tokenizer, num_image_tokens=N_IMAGE, max_length=4096, record_id="r")
  image_end = int(np.flatnonzero(full.input_ids == tokenizer.image_token_id)[-1]) + 1
  with pytest.raises(DataError, match="ecg-0044: the 7 image placeholders end at token .* beyond max_length"):
    encode_conversation(ONE_TURN, tokenizer, num_image_tokens=N_IMAGE, max_length=image_end - 1, record_id="ecg-0044")
  answer_start = _runs(full.loss_mask)[0][0]
  for max_length in (image_end, answer_start):
    with pytest.raises(DataError, match="ecg-0045: cut to max_length .* no answer token") as error:
      encode_conversation(ONE_TURN, tokenizer, num_image_tokens=N_IMAGE, max_length=max_length, record_id="ecg-0045")
    assert error.value.reason == "nothing to learn"
  assert "ecg-0045" not in caplog.text  # rejected, not warned about


def _human(value):
  return {"from": "human", "value": value}


def _gpt(value):
  return {"from": "gpt", "value": value}


MALFORMED = {
    "empty conversation": ([], "empty conversation"),
    "missing image token": ([_human("Rhythm?"), _gpt("Sinus.")], "first human turn has no <image>"),
    "two images in the first turn": ([_human("<image><image>\nRhythm?"), _gpt("Sinus.")], "turn 0 holds 2 <image>"),
    "image in a later turn": ([*ONE_TURN, _human("<image>\nAnd now?"), _gpt("Same.")], "turn 2 holds 1 <image>"),
    "answer first": ([_gpt("Sinus."), _human("<image>\nRhythm?")], "turn 0 is from 'gpt' where 'human' is due"),
    "two questions in a row": ([_human("<image>\nRhythm?"), _human("Rate?"), _gpt("Sinus.")],
                               "turn 1 is from 'human' where 'gpt' is due"),
    "empty answer": ([_human("<image>\nRhythm?"), _gpt(" \n")], "turn 1 is an empty answer"),
    "empty later question": ([*ONE_TURN, _human(""), _gpt("Sinus.")], "turn 2 is an empty question"),
    "unknown role": ([_human("<image>\nRhythm?"), {"from": "system", "value": "x"}], "unknown role 'system'"),
    "not a turn": ([_human("<image>\nRhythm?"), {"from": "gpt", "value": None}], "turn 1 is not a"),
    "unanswered last turn": ([*ONE_TURN, _human("Rate?")], "ends with an unanswered human turn"),
}


@pytest.mark.parametrize("case", MALFORMED.keys())
def test_malformed_conversations_rejected_naming_the_record(tokenizer, case):
  conversations, message = MALFORMED[case]
  with pytest.raises(DataError, match=f"^mimic-44111511: .*{message}"):
    encode_conversation(conversations, tokenizer, num_image_tokens=N_IMAGE, max_length=4096,
                        record_id="mimic-44111511")


def test_prompt_must_end_with_a_question(tokenizer):
  with pytest.raises(DataError, match="^bench-7: a prompt must end with the human question"):
    encode_prompt(ONE_TURN, tokenizer, num_image_tokens=N_IMAGE, record_id="bench-7")
  with pytest.raises(DataError, match="^bench-8: the first human turn has no <image>"):
    encode_prompt([_human("Rhythm?")], tokenizer, num_image_tokens=N_IMAGE, record_id="bench-8")
