"""`pulse-jax convert`: checkpoints in and out of Hugging Face LLaVA-NeXT and the original LLaVA/PULSE format.

  pulse-jax convert from-hf DIR [--out CKPT] [--merge-mode spatial_unpad|flat]
  pulse-jax convert from-llava DIR [--out CKPT] [--vision-tower CLIP_DIR]
  pulse-jax convert to-hf CKPT --out DIR [--tokenizer PATH] [--max-shard-size 5GB] [--config FILE[:ARG] ...]
  pulse-jax convert to-llava CKPT --out DIR [--vision-tower NAME_OR_DIR] [--tokenizer PATH] [--max-shard-size 5GB]
                             [--config FILE[:ARG] ...]

CKPT is an Orbax checkpoint. The from-* commands write a converted one (pulse_jax.convert.orbax_params: parameters
in the layout of training checkpoints, model configuration, tokenizer), reading the source tensor by tensor; it
restores onto any mesh wherever training checkpoints' parameters are read (`pulse-jax eval`, `pulse-jax chat`). The
to-* commands read a converted checkpoint or a training run's (its workdir, checkpoints/ or one step folder); a
training checkpoint stores no model configuration, so pass the run's --config (with its --config.a.b=v overrides).
The tokenizer is --tokenizer, else the converted checkpoint's tokenizer.model, else the config's data.tokenizer;
its "<image>" id must be the model's image_token_id.

transformers' LLaVA-NeXT always unpads the tile features and adds image_newline, so a flat-mode model (PULSE-7B)
cannot be expressed in it: to-hf refuses one, and to-llava writes the format PULSE-7B itself is published in.
"""

import argparse
import pathlib
import re

from pulse_jax.config import accept_config_overrides, apply_overrides, load_config, model_config
from pulse_jax.convert import hf, hf_processor, llava_original, orbax_params
from pulse_jax.data.tokenizer import MODEL_FILE_NAME, Tokenizer
from pulse_jax.errors import ConversionError
from pulse_jax.models.config import PulseConfig

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
  """Bytes in a size such as '5GB', '500MB', '2GiB' or '1000000' (decimal units as transformers reads them)."""
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, re.IGNORECASE)
  if not match:
    raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 5GB, 500MB or 2GiB")
  return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()])


# --------------------------------------------------------------------------------------------------- in


def _default_out(source: pathlib.Path) -> pathlib.Path:
  return source.parent / f"{source.name}-orbax"


def _tokenizer_file(folder: pathlib.Path) -> pathlib.Path | None:
  path = folder / MODEL_FILE_NAME
  return path if path.is_file() else None


def import_hf(source: str | pathlib.Path, out: str | pathlib.Path, *, merge_mode: str = "spatial_unpad"
              ) -> PulseConfig:
  """A transformers LLaVA-NeXT folder -> a converted Orbax checkpoint `out`; returns the model's config.

  merge_mode "flat" drops image_newline, e.g. to fine-tune llava-v1.6 as PULSE was (reference/pulse_paper.md §5.1).
  """
  source = pathlib.Path(source)
  config = hf.read_config(source, merge_mode=merge_mode)
  tensors = hf.TensorSource()
  tensors.add_folder(source)
  orbax_params.save(out, hf.read_params(config, tensors), config, tokenizer=_tokenizer_file(source))
  return config


def import_llava(source: str | pathlib.Path, out: str | pathlib.Path, *, vision_tower: str | None = None
                 ) -> PulseConfig:
  """An original-LLaVA folder (PULSE-7B, llava-v1.6) -> a converted Orbax checkpoint `out`; returns its config."""
  source = pathlib.Path(source)
  config, tensors = llava_original.open_checkpoint(
      source, vision_tower=pathlib.Path(vision_tower) if vision_tower else None)
  orbax_params.save(out, hf.read_params(config, tensors), config, tokenizer=_tokenizer_file(source))
  return config


# --------------------------------------------------------------------------------------------------- out


def _exported(checkpoint: str | pathlib.Path, config: PulseConfig | None, tokenizer: str | None,
              default_tokenizer: str = "") -> tuple[dict, PulseConfig, Tokenizer]:
  """(params on the host, config, tokenizer) of a checkpoint to export; the tokenizer must fit the model."""
  params, config, step_dir = orbax_params.restore(checkpoint, config)
  tokenizer = tokenizer or _tokenizer_file(step_dir.parent) or default_tokenizer
  if not tokenizer:
    raise ConversionError(f"{checkpoint}: no tokenizer: pass --tokenizer (a SentencePiece model or a folder holding "
                          f"{MODEL_FILE_NAME})")
  loaded = Tokenizer(tokenizer)
  if loaded.image_token_id != config.image_token_id or loaded.vocab_size > config.text.vocab_size:
    raise ConversionError(f"tokenizer {loaded.path} has {loaded.image_token_id} pieces, so its <image> id is "
                          f"{loaded.image_token_id}; the model has image_token_id {config.image_token_id} and "
                          f"{config.text.vocab_size} embeddings")
  return params, config, loaded


def export_hf(checkpoint: str | pathlib.Path, out: str | pathlib.Path, *, config: PulseConfig | None = None,
              tokenizer: str | None = None, default_tokenizer: str = "",
              max_shard_bytes: int = hf.DEFAULT_MAX_SHARD_BYTES) -> None:
  """A checkpoint -> a transformers LLaVA-NeXT folder: config, sharded safetensors with their index, tokenizer,
  processor files and chat template, loadable by LlavaNextForConditionalGeneration and AutoProcessor.

  Raises:
    ConversionError: a flat-mode model (transformers cannot express it: use export_llava), or a tokenizer that
      does not fit the model.
  """
  out = pathlib.Path(out)
  params, config, tokenizer = _exported(checkpoint, config, tokenizer, default_tokenizer)
  hf.save_params(params, config, out, max_shard_bytes=max_shard_bytes)
  hf_processor.write_tokenizer(out, tokenizer, config, image_token=True, padding_side="left")
  hf_processor.write_processor(out, config)
  hf_processor.write_generation_config(out, config)


def export_llava(checkpoint: str | pathlib.Path, out: str | pathlib.Path, *, config: PulseConfig | None = None,
                 tokenizer: str | None = None, default_tokenizer: str = "", vision_tower: str | None = None,
                 max_shard_bytes: int = hf.DEFAULT_MAX_SHARD_BYTES) -> None:
  """A checkpoint -> an original-LLaVA folder (the format PULSE-7B is published in), for flat-mode models and
  spatial_unpad ones alike; mm_vision_tower is `vision_tower`, by default the known CLIP tower of this shape."""
  out = pathlib.Path(out)
  params, config, tokenizer = _exported(checkpoint, config, tokenizer, default_tokenizer)
  vision_tower = vision_tower or llava_original.default_vision_tower(config.vision)
  if vision_tower is None:
    raise ConversionError(f"the model's vision tower {config.vision} is none of the known CLIP towers "
                          f"({', '.join(llava_original.KNOWN_VISION_TOWERS)}): pass --vision-tower, the name or local "
                          "folder LLaVA should build it from")
  llava_original.save_params(params, config, out, vision_tower=vision_tower, max_shard_bytes=max_shard_bytes)
  hf_processor.write_tokenizer(out, tokenizer, config, image_token=False, padding_side="right")
  hf_processor.write_generation_config(out, config)


# --------------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
  commands = parser.add_subparsers(dest="conversion", required=True, metavar="{from-hf,from-llava,to-hf,to-llava}")

  from_hf = commands.add_parser("from-hf", help="transformers LLaVA-NeXT folder -> Orbax checkpoint")
  from_hf.add_argument("source", metavar="DIR", help="config.json + *.safetensors (+ tokenizer.model)")
  from_hf.add_argument("--out", metavar="CKPT", help="new checkpoint folder (default: DIR-orbax)")
  from_hf.add_argument("--merge-mode", choices=("spatial_unpad", "flat"), default="spatial_unpad",
                       help="spatial_unpad (transformers' LLaVA-NeXT, default) or flat (PULSE's fine-tuning: "
                       "image_newline is dropped)")

  from_llava = commands.add_parser("from-llava", help="original LLaVA/PULSE folder -> Orbax checkpoint")
  from_llava.add_argument("source", metavar="DIR", help="config.json (mm_* fields) + *.safetensors + tokenizer.model")
  from_llava.add_argument("--out", metavar="CKPT", help="new checkpoint folder (default: DIR-orbax)")
  from_llava.add_argument("--vision-tower", metavar="CLIP_DIR", help="CLIPVisionModel folder (config.json + "
                          "*.safetensors); needed when the checkpoint holds no tower weights and mm_vision_tower is "
                          "not a local folder")

  for name, target in (("to-hf", "transformers LLaVA-NeXT folder"), ("to-llava", "original LLaVA/PULSE folder")):
    export = commands.add_parser(name, help=f"Orbax checkpoint -> {target}")
    export.add_argument("source", metavar="CKPT", help="converted checkpoint, or a training workdir, its "
                        "checkpoints/ or one step folder (the latest step is taken)")
    export.add_argument("--out", required=True, metavar="DIR", help="output folder (must hold no safetensors)")
    export.add_argument("--tokenizer", metavar="PATH", help="SentencePiece model or folder holding tokenizer.model "
                        "(default: the checkpoint's, else the config's data.tokenizer)")
    export.add_argument("--max-shard-size", type=parse_size, default=hf.DEFAULT_MAX_SHARD_BYTES, metavar="SIZE",
                        help="largest safetensors file, e.g. 5GB (default), 500MB, 2GiB")
    export.add_argument("--config", metavar="FILE.py[:ARG]", help="experiment config of the model (needed for "
                        "training checkpoints); `--config.a.b=value` arguments override its fields")
    if name == "to-llava":
      export.add_argument("--vision-tower", metavar="NAME_OR_DIR", help="mm_vision_tower to write (default: the "
                          "known CLIP tower of the model's shape, e.g. openai/clip-vit-large-patch14-336)")
    accept_config_overrides(export)


def run(args: argparse.Namespace) -> None:
  if args.conversion in ("from-hf", "from-llava"):
    source = pathlib.Path(args.source)
    out = pathlib.Path(args.out) if args.out else _default_out(source)
    if args.conversion == "from-hf":
      config = import_hf(source, out, merge_mode=args.merge_mode)
    else:
      config = import_llava(source, out, vision_tower=args.vision_tower)
    print(f"wrote {out} ({config.merge_mode} mode, {config.param_dtype} parameters)")
    return
  config, default_tokenizer = None, ""
  if args.config:
    experiment = apply_overrides(load_config(args.config), args.overrides)
    config, default_tokenizer = model_config(experiment.model), experiment.data.get("tokenizer", "")
  options = dict(config=config, tokenizer=args.tokenizer, default_tokenizer=default_tokenizer,
                 max_shard_bytes=args.max_shard_size)
  if args.conversion == "to-hf":
    export_hf(args.source, args.out, **options)
  else:
    export_llava(args.source, args.out, vision_tower=args.vision_tower, **options)
  print(f"wrote {args.out}")
