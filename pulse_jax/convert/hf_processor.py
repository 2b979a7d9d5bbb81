"""The text and image side of an exported checkpoint folder: tokenizer, image processor, chat template files.

With them (and the weights), transformers' AutoProcessor builds a LlavaNextProcessor whose prompts, token ids and
pixel values are the ones pulse-jax feeds its own model:
  * tokenizer.model + tokenizer_config.json + special_tokens_map.json: our SentencePiece model as a LLaMA tokenizer
    with `legacy` set (every run of text between special tokens gets SentencePiece's dummy-prefix space, as the slow
    tokenizer PULSE trained with and pulse_jax.data.conversation encode it), "<image>" added at image_token_id;
  * preprocessor_config.json: LlavaNextImageProcessor with the model's tile size, grid pinpoints ((height, width), as
    transformers reads them) and the normalisation of pulse_jax.data.image_processor;
  * processor_config.json: patch size, feature selection and the CLS token, from which the processor counts the
    image placeholders exactly as pulse_jax.models.num_image_tokens does (spatial_unpad);
  * chat_template.jinja: the llava_v1 template of pulse_jax.data.conversation, for messages in transformers' format
    ({"role": "system" | "user" | "assistant", "content": str or [{"type": "image"}, {"type": "text", ...}]});
  * generation_config.json: bos, eos and pad ids.
The original LLaVA format gets the same tokenizer files without "<image>" (LLaVA inserts images at id -200).
"""

import json
import pathlib
import shutil

import sentencepiece as spm
from PIL import Image

from pulse_jax.data.conversation import ROLES, SEP, SEP2, SYSTEM_PROMPT
from pulse_jax.data.image_processor import for_model
from pulse_jax.data.tokenizer import IMAGE_TOKEN, MODEL_FILE_NAME, Tokenizer
from pulse_jax.models.config import PulseConfig

# A CLIP tower's hidden states carry one token besides the patches (CLS); the processor adds it to its count and
# takes it away again under the "default" feature selection, as the model drops it.
_CLIP_EXTRA_TOKENS = 1

# llava_v1 (pulse_jax.data.conversation): "{system} USER: <image>\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT:".
# A leading system message replaces the system prompt. As LLaVA does, the images of a user turn go first, followed
# by "\n" and the stripped text when there is any; later turns are kept as written.
_CHAT_TEMPLATE = """
{%- macro text_of(content) -%}
  {%- if content is string -%}{{ content }}
  {%- else -%}{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
{%- if messages and messages[0]['role'] == 'system' -%}
  {{- text_of(messages[0]['content']) -}}
  {%- set turns = messages[1:] -%}
{%- else -%}
  {{- @SYSTEM@ -}}
  {%- set turns = messages -%}
{%- endif -%}
{{- @SEP@ -}}
{%- for message in turns -%}
  {%- if message['role'] == 'user' -%}
    {%- set text = text_of(message['content']) -%}
    {%- set images = 0 if message['content'] is string
                     else message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}
    {{- @USER@ + ': ' -}}
    {%- if images -%}
      {{- @IMAGE@ * images -}}
      {%- if text | trim -%}{{- '\\n' + text | trim -}}{%- endif -%}
    {%- else -%}
      {{- text -}}
    {%- endif -%}
    {{- @SEP@ -}}
  {%- elif message['role'] == 'assistant' -%}
    {{- @ASSISTANT@ + ': ' + text_of(message['content']) + @SEP2@ -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- @ASSISTANT@ + ':' -}}{%- endif -%}
"""


def _llava_v1_chat_template() -> str:
  """_CHAT_TEMPLATE with the template's pieces, taken from pulse_jax.data.conversation, as Jinja string literals."""
  template = _CHAT_TEMPLATE
  for placeholder, value in (("@SYSTEM@", SYSTEM_PROMPT), ("@SEP@", SEP), ("@SEP2@", SEP2), ("@IMAGE@", IMAGE_TOKEN),
                             ("@USER@", ROLES["human"]), ("@ASSISTANT@", ROLES["gpt"])):
    template = template.replace(placeholder, json.dumps(value))
  return template


LLAVA_V1_CHAT_TEMPLATE = _llava_v1_chat_template()


def _write_json(path: pathlib.Path, value: dict) -> None:
  path.write_text(json.dumps(value, indent=2) + "\n")


def write_tokenizer(folder: pathlib.Path, tokenizer: Tokenizer, config: PulseConfig, *, image_token: bool,
                    padding_side: str) -> None:
  """Copies the SentencePiece model and writes its transformers configuration.

  Args:
    image_token: add "<image>" at config.image_token_id (transformers' LLaVA-NeXT); LLaVA's own format has none.
    padding_side: "left" for batched generation (transformers' LLaVA-NeXT), "right" as LLaVA trains.
  """
  shutil.copyfile(tokenizer.path, folder / MODEL_FILE_NAME)
  pieces = spm.SentencePieceProcessor(model_file=str(tokenizer.path))
  unk, bos, eos = (pieces.id_to_piece(i) for i in (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id))
  special = {tokenizer.pad_id: unk, tokenizer.bos_id: bos, tokenizer.eos_id: eos}
  tokens = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": unk}
  extra = {}
  if image_token:
    special[config.image_token_id] = IMAGE_TOKEN
    extra = {"extra_special_tokens": {"image_token": IMAGE_TOKEN}}
  _write_json(folder / "tokenizer_config.json", {
      "tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False,
      **tokens, **extra, "model_max_length": config.text.max_position_embeddings, "padding_side": padding_side,
      "clean_up_tokenization_spaces": False,
      "added_tokens_decoder": {str(token_id): {"content": content, "special": True, "normalized": False,
                                               "lstrip": False, "rstrip": False, "single_word": False}
                               for token_id, content in sorted(special.items())}})
  _write_json(folder / "special_tokens_map.json", {**tokens, **({"image_token": IMAGE_TOKEN} if image_token else {})})


def write_processor(folder: pathlib.Path, config: PulseConfig) -> None:
  """preprocessor_config.json, processor_config.json and chat_template.jinja of a LlavaNextProcessor."""
  tile = config.vision.image_size
  images = for_model(config)
  _write_json(folder / "preprocessor_config.json", {
      "image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor",
      "image_grid_pinpoints": [list(p) for p in images.grid_pinpoints],
      "size": {"shortest_edge": tile}, "crop_size": {"height": tile, "width": tile},
      "do_resize": True, "do_center_crop": True, "do_rescale": True, "rescale_factor": 1 / 255,
      "do_normalize": True, "image_mean": list(images.image_mean), "image_std": list(images.image_std),
      "do_pad": True, "do_convert_rgb": True, "resample": int(Image.Resampling[images.resample.upper()])})
  _write_json(folder / "processor_config.json", {
      "processor_class": "LlavaNextProcessor", "image_token": IMAGE_TOKEN, "patch_size": config.vision.patch_size,
      "vision_feature_select_strategy": config.vision.feature_select,
      "num_additional_image_tokens": _CLIP_EXTRA_TOKENS})
  (folder / "chat_template.jinja").write_text(LLAVA_V1_CHAT_TEMPLATE)


def write_generation_config(folder: pathlib.Path, config: PulseConfig) -> None:
  t = config.text
  _write_json(folder / "generation_config.json",
              {"bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id, "pad_token_id": t.pad_token_id})
