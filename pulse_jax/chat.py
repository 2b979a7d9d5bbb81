"""`pulse-jax chat --checkpoint DIR --image IMG "question"`: one answer about one ECG image, streamed as generated.

The PULSE README's single-image example (LLaVA's run_llava.py with conv-mode llava_v1): the question goes into the
llava_v1 template after the image, and the answer is printed piece by piece as decode.stream produces its tokens.
Defaults are run_llava's: temperature 0.2 (sampling; 0 = greedy), no top-p cut (top_p 1), at most 512 new tokens.

Weights: a transformers LLaVA-NeXT folder (its config.json gives the model, read in spatial_unpad mode as
transformers does; pass --config for a flat-mode model such as PULSE-7B), or an Orbax training checkpoint (a
workdir, its checkpoints/ or one step folder), which needs --config. With --config the parameters are laid out
over its mesh (all local devices), otherwise they sit on one device. The tokenizer is --tokenizer, else the
checkpoint folder's tokenizer.model, else the config's data.tokenizer.
"""

import argparse
import sys
from collections.abc import Iterator

import jax

from pulse_jax import decode, evaluate, parallel
from pulse_jax.config import accept_config_overrides, apply_overrides, load_config, model_config
from pulse_jax.data.conversation import encode_prompt
from pulse_jax.data.image_processor import load_image
from pulse_jax.data.tokenizer import IMAGE_TOKEN

# run_llava.py's defaults (reference/pulse_paper.md §6.1).
DEFAULT_TEMPERATURE = 0.2
DEFAULT_MAX_NEW_TOKENS = 512
_INCOMPLETE = "\ufffd"  # what SentencePiece decodes a partial UTF-8 sequence of byte pieces to


def answer_stream(loaded: evaluate.LoadedModel, image: evaluate.ModelImage, question: str, *, max_new_tokens: int,
                  temperature: float = DEFAULT_TEMPERATURE, top_p: float = 1.0, rng: jax.Array | None = None,
                  record_id: str = "chat") -> Iterator[str]:
  """Yields the answer's text as it is generated; the pieces concatenate to the decoded answer.

  Each generated token extends the text by what decoding all tokens so far adds to it, so word-initial spaces
  ("▁") and characters spread over several byte tokens come out right. A token that ends inside such a character
  yields nothing until the character is complete.
  """
  tokenizer = loaded.tokenizer
  prompt = encode_prompt([{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"}], tokenizer,
                         num_image_tokens=image.num_tokens, record_id=record_id)
  tokens, shown = [], ""
  for token in decode.stream(loaded.model, loaded.config, prompt, image.pixel_values, image.layout,
                             max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                             temperature=temperature, top_p=top_p, rng=rng):
    tokens.append(token)
    text = tokenizer.decode(tokens)
    if not text.endswith(_INCOMPLETE) and len(text) > len(shown):
      yield text[len(shown):]
      shown = text
  text = tokenizer.decode(tokens)
  if len(text) > len(shown):  # the answer stopped inside a character
    yield text[len(shown):]


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("question", help="what to ask about the image")
  parser.add_argument("--checkpoint", required=True, metavar="DIR", help="Hugging Face LLaVA-NeXT folder, or an "
                      "Orbax training workdir / checkpoints/ / step folder (with --config)")
  parser.add_argument("--image", required=True, metavar="IMG", help="the ECG image (PNG, JPEG, BMP, ...)")
  parser.add_argument("--config", metavar="FILE.py[:ARG]", help="experiment config giving the model and mesh "
                      "(required for Orbax checkpoints); `--config.a.b=value` arguments override its fields")
  parser.add_argument("--tokenizer", metavar="PATH", help="SentencePiece model (default: the checkpoint folder's "
                      "tokenizer.model, else data.tokenizer)")
  parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                      help=f"0 = greedy; default {DEFAULT_TEMPERATURE} (run_llava's)")
  parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = no cut)")
  parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                      help=f"longest answer in tokens (default {DEFAULT_MAX_NEW_TOKENS})")
  parser.add_argument("--seed", type=int, default=0, help="sampling seed")
  accept_config_overrides(parser)


def run(args: argparse.Namespace) -> int:
  image = load_image(args.image)  # a bad image fails here, before the model is loaded
  if args.config:
    config = apply_overrides(load_config(args.config), args.overrides)
    model_cfg, default_tokenizer = model_config(config.model), config.data.tokenizer
    mesh, rules = parallel.mesh_from_config(config.mesh), parallel.logical_rules(config.mesh.rules)
  else:
    model_cfg, default_tokenizer = None, ""
    mesh, rules = parallel.make_mesh((1, 1, 1), jax.devices()[:1]), parallel.RULES
  loaded = evaluate.load_model(args.checkpoint, model_cfg, mesh, rules, tokenizer=args.tokenizer or "",
                               default_tokenizer=default_tokenizer)
  prepared = evaluate.model_image(image, loaded.config, name=args.image)
  for piece in answer_stream(loaded, prepared, args.question, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_p=args.top_p, rng=jax.random.key(args.seed),
                             record_id=args.image):
    sys.stdout.write(piece)
    sys.stdout.flush()
  sys.stdout.write("\n")
  return 0
