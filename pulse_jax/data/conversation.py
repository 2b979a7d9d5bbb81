r"""PULSE's llava_v1 conversation template: the prompt text, its token ids and the assistant-only loss mask.

Template (LLaVA `conv_llava_v1`: SeparatorStyle.TWO, roles USER / ASSISTANT, sep " ", sep2 "</s>"):

  {SYSTEM_PROMPT} USER: <image>\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>

A prompt for generation ends with "ASSISTANT:". As LLaVA's preprocess_multimodal does, the "<image>" of the first
human turn is moved to its front: the rest of the turn is stripped and follows "<image>\n". Records are LLaVA's
(reference/pulse_paper.md §1.4): a list of {"from": "human" | "gpt", "value": str} turns.

Token ids are built piece by piece, each piece bringing its own loss flag, so the mask lines up with the ids by
construction:

  <s> "{SYSTEM_PROMPT} USER: " <image> x N "\n{q1} ASSISTANT:" "{a1}" </s> "USER: {q2} ASSISTANT:" "{a2}" </s>
                                                               ~~~~~~~~~~~                         ~~~~~~~~~~~ loss

These are the ids LLaVA's preprocess_v1 produced with the legacy slow LLaMA tokenizer PULSE trained with
(transformers 4.37; N = 1 there, widened to the image features inside the model). The slow tokenizer splits the
text at "</s>" and LLaVA splits it at "<image>", then each run of text is encoded with SentencePiece's dummy-prefix
space, as Tokenizer.encode does. The one remaining cut, the space in "ASSISTANT: {a}", is a word boundary that no
BPE piece spans, and the answer's dummy prefix stands for that space. So LLaVA's artefacts are reproduced too:
"USER: " ends in a lone "▁" before the image, and the "\n" after it is encoded as "▁", "<0x0A>".
tests/test_conversation.py checks ids and mask against a replica of preprocess_v1 on transformers' sentencepiece
backend (the slow tokenizer), and the ids against transformers' LlamaTokenizer(legacy=True) on the whole prompt.
Two tokenizer behaviours that differ by one token, both outside the answers: with legacy=False (newer transformers'
default) the text after "</s>" gets no dummy prefix (the off-by-one LLaVA's `round_len -= 1` patches); and
transformers 5's LlamaTokenizer adds no dummy prefix to text that already starts with a space (" ASSISTANT:" after
an image-only first turn). PULSE ran neither; this module follows the tokenizer it ran.

The loss mask is LLaVA's: each answer and the "</s>" closing it, never the system prompt, the user turns, the
"ASSISTANT:" opening an answer, the image placeholders or padding. Unlike preprocess_v1, whose "- 2" length
corrections silently mask a whole sample when they disagree with the tokenizer, it cannot be off by one. One
deliberate difference: a literal "</s>" typed inside a turn stays plain characters here, where the slow tokenizer
would turn it into an end-of-sequence id.
"""

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from pulse_jax.data.tokenizer import IMAGE_TOKEN, Tokenizer
from pulse_jax.errors import ConfigError, DataError

SYSTEM_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
ROLES = {"human": "USER", "gpt": "ASSISTANT"}
SEP = " "  # after the system prompt and each user turn
SEP2 = "</s>"  # after each assistant turn

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EncodedConversation:
  """One training sample, unpadded.

  Attributes:
    input_ids: int32[T], T <= max_length: <s>, the template's text pieces, and the image placeholder repeated
      once per image feature.
    loss_mask: bool[T], True on the tokens the model is trained to predict (answers and their closing </s>).
      The logits at position t - 1 are scored against input_ids[t] where loss_mask[t]. Padding appended by the
      pipeline gets False.
    truncated: whether rounds were dropped or cut to fit max_length.
  """
  input_ids: np.ndarray
  loss_mask: np.ndarray
  truncated: bool


@dataclasses.dataclass(frozen=True)
class _Piece:
  """A run of the prompt that is tokenized on its own: text, an assistant answer, the image, or the </s>
  closing an answer. Answers and their </s> are the trained pieces."""
  kind: Literal["text", "answer", "image", "eos"]
  text: str = ""

  def render(self) -> str:
    # The space of "ASSISTANT: {a}" belongs to the answer: encoded, it is the answer's dummy prefix.
    return {"text": self.text, "answer": SEP + self.text, "image": IMAGE_TOKEN, "eos": SEP2}[self.kind]

  def token_ids(self, tokenizer: Tokenizer, num_image_tokens: int) -> list[int]:
    if self.kind == "image":
      return [tokenizer.image_token_id] * num_image_tokens
    if self.kind == "eos":
      return [tokenizer.eos_id]
    return tokenizer.encode(self.text)

  @property
  def trained(self) -> bool:
    return self.kind in ("answer", "eos")


def render_prompt(conversations: Sequence[Mapping[str, str]], *, record_id: str) -> str:
  """The template text of a conversation, with "<image>" once.

  A conversation ending with an answer renders as trained (ending in "</s>"); one ending with a human turn is a
  generation prompt (ending in "ASSISTANT:"), as LLaVA's eval scripts write it next to their answers.
  """
  return "".join(piece.render() for round_ in _rounds(conversations, record_id) for piece in round_)


def encode_conversation(conversations: Sequence[Mapping[str, str]], tokenizer: Tokenizer, *, num_image_tokens: int,
                        max_length: int, record_id: str) -> EncodedConversation:
  """Token ids and loss mask of a training conversation (human, gpt, human, gpt, ...).

  Args:
    conversations: LLaVA turns; the first human turn holds the record's single "<image>", wherever in the text.
    tokenizer: the language model's tokenizer.
    num_image_tokens: image features the model inserts for this record's image (pulse_jax.models.num_image_tokens).
    max_length: longest sequence the model trains on. A longer sample keeps as many whole leading rounds as fit,
      or, when even the first round does not fit, its first max_length tokens; either way a warning names it.
    record_id: names the record in errors and warnings.

  Raises:
    DataError: malformed turns (see `_rounds`), an image block that does not fit in max_length, or a sample left
      with no answer token after truncation (it would train on nothing).
  """
  rounds = _rounds(conversations, record_id)
  if rounds[-1][-1].kind != "eos":
    raise DataError(f"{record_id}: the conversation ends with an unanswered human turn", reason="roles out of order")
  encoded = [_encode(round_, tokenizer, num_image_tokens) for round_ in rounds]
  first_ids, first_mask = encoded[0]
  encoded[0] = [tokenizer.bos_id] + first_ids, [False] + first_mask

  image_end = encoded[0][0].index(tokenizer.image_token_id) + num_image_tokens
  if image_end > max_length:
    raise DataError(f"{record_id}: the {num_image_tokens} image placeholders end at token {image_end}, beyond "
                    f"max_length {max_length}", reason="image does not fit")
  ends = np.cumsum([len(ids) for ids, _ in encoded])
  kept = int(np.searchsorted(ends, max_length, side="right"))  # leading rounds that fit whole
  truncated = kept < len(encoded)
  ids = [token for round_ids, _ in encoded[:max(kept, 1)] for token in round_ids][:max_length]
  mask = [flag for _, round_mask in encoded[:max(kept, 1)] for flag in round_mask][:max_length]
  if not any(mask):
    raise DataError(f"{record_id}: cut to max_length {max_length}, the first round keeps no answer token to train "
                    f"on ({ends[0]} tokens, the image ends at {image_end})", reason="nothing to learn")
  if truncated:
    kept_what = f"kept {kept} of {len(encoded)} rounds" if kept else "cut the first round"
    _logger.warning("%s: %d tokens exceed max_length %d; %s", record_id, ends[-1], max_length, kept_what)
  return EncodedConversation(np.asarray(ids, np.int32), np.asarray(mask, bool), truncated)


def encode_prompt(conversations: Sequence[Mapping[str, str]], tokenizer: Tokenizer, *, num_image_tokens: int,
                  record_id: str) -> np.ndarray:
  """int32[T] ids of a generation prompt: <s>, the history, the new question, then "ASSISTANT:".

  `conversations` holds the earlier turns (human, gpt, ...), the first human one with the "<image>", and ends with
  the human question to answer. Generation stops at tokenizer.eos_id, the template's "</s>".
  """
  rounds = _rounds(conversations, record_id)
  if rounds[-1][-1].kind != "text":
    raise DataError(f"{record_id}: a prompt must end with the human question to answer", reason="roles out of order")
  ids = [tokenizer.bos_id]
  for round_ in rounds:
    ids += _encode(round_, tokenizer, num_image_tokens)[0]
  return np.asarray(ids, np.int32)


def _encode(pieces: list[_Piece], tokenizer: Tokenizer, num_image_tokens: int) -> tuple[list[int], list[bool]]:
  if num_image_tokens < 1:
    raise ConfigError(f"num_image_tokens must be at least 1, got {num_image_tokens}")
  ids, mask = [], []
  for piece in pieces:
    piece_ids = piece.token_ids(tokenizer, num_image_tokens)
    ids += piece_ids
    mask += [piece.trained] * len(piece_ids)
  return ids, mask


def _rounds(conversations: Sequence[Mapping[str, str]], record_id: str) -> list[list[_Piece]]:
  """Pieces of each round: a user turn, then its answer and </s> unless it is the last turn (a prompt).

  Raises DataError naming `record_id` for: no turns, a turn that is not {"from", "value": str}, a role other than
  human / gpt, roles not alternating human, gpt from the start, an empty (all-space) answer or later question, no
  "<image>" in the first human turn, or "<image>" more than once in the conversation.
  """
  values = _validated_values(conversations, record_id)
  image_first = IMAGE_TOKEN + "\n" + values[0].replace(IMAGE_TOKEN, "").strip()
  values[0] = image_first.strip()  # LLaVA strips again: an image-only turn is "<image>", without the "\n"
  answer_cue = f"{SEP}{ROLES['gpt']}:"
  rounds = []
  for index in range(0, len(values), 2):
    if index == 0:
      pieces = [_Piece("text", f"{SYSTEM_PROMPT}{SEP}{ROLES['human']}: "), _Piece("image"),
                _Piece("text", values[0].removeprefix(IMAGE_TOKEN) + answer_cue)]
    else:
      pieces = [_Piece("text", f"{ROLES['human']}: {values[index]}{answer_cue}")]
    if index + 1 < len(values):
      pieces += [_Piece("answer", values[index + 1]), _Piece("eos")]
    rounds.append(pieces)
  return rounds


def _validated_values(conversations: Sequence[Mapping[str, str]], record_id: str) -> list[str]:
  if not conversations:
    raise DataError(f"{record_id}: empty conversation", reason="empty conversation")
  values = []
  for index, turn in enumerate(conversations):
    if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str):
      raise DataError(f"{record_id}: turn {index} is not a {{'from', 'value'}} record with a text value: {turn!r}",
                      reason="malformed turn")
    role, value = turn.get("from"), turn["value"]
    if role not in ROLES:
      raise DataError(f"{record_id}: turn {index} has unknown role {role!r}; expected 'human' or 'gpt'",
                      reason="unknown role")
    due = "human" if index % 2 == 0 else "gpt"
    if role != due:
      raise DataError(f"{record_id}: turn {index} is from {role!r} where {due!r} is due; turns alternate human, "
                      "gpt, starting with human", reason="roles out of order")
    if index > 0 and not value.strip():
      what = "answer" if role == "gpt" else "question"
      raise DataError(f"{record_id}: turn {index} is an empty {what}", reason=f"empty {what}")
    images, allowed = value.count(IMAGE_TOKEN), int(index == 0)
    if images < allowed:
      raise DataError(f"{record_id}: the first human turn has no {IMAGE_TOKEN}", reason="missing image token")
    if images > allowed:
      raise DataError(f"{record_id}: turn {index} holds {images} {IMAGE_TOKEN}; a record has one image, in the first "
                      "human turn", reason="extra image token")
    values.append(value)
  return values
