"""`pulse-jax` command line: one subcommand per job.

Each subcommand lives in its own module, which provides `add_arguments(parser)` and `run(args) -> int | None`.
Modules are imported only when their subcommand runs, so `pulse-jax render` never pays for importing JAX.
Errors of the PulseError family print as one line (naming the file or record) with exit status 1.
"""

import argparse
import importlib
import sys

from pulse_jax.errors import PulseError

# name -> (module, one-line help). Order is the order `pulse-jax --help` lists them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("pulse_jax.ecg.corpus", "write a synthetic ECG corpus in a real collection's on-disk layout"),
    "render": ("pulse_jax.ecg.render", "render one record as a paper-ECG image"),
    "train-tokenizer": ("pulse_jax.data.tokenizer", "train a small LLaMA-style SentencePiece tokenizer on text"),
    "build-data": ("pulse_jax.data.build", "build ECGInstruct / ECGBench (TFDS array_record) from a config"),
    "pretrain-tower": ("pulse_jax.pretrain_tower", "pretrain a from-scratch vision tower on synthetic ECG sheets "
                       "(the tiny model's stand-in for CLIP)"),
    "train": ("pulse_jax.train", "train or resume PULSE on a device mesh (CPU, GPUs, TPU pod) from a config"),
    "plan": ("pulse_jax.plan", "will a config fit on a TPU slice, and how fast: ahead-of-time compile via libtpu"),
    "eval": ("pulse_jax.evaluate", "generate and score ECGBench answers (resumable), write the report"),
    "chat": ("pulse_jax.chat", "answer one question about one ECG image, streaming the answer"),
    "convert": ("pulse_jax.convert.cli", "checkpoints to/from Hugging Face LLaVA-NeXT and the original LLaVA format"),
    "demo": ("pulse_jax.demo", "the whole path on the embedded synthetic corpus, on CPU"),
    "probe-image": ("pulse_jax.probe", "can a model learn a question only the ECG image answers (rhythm, conduction)?"),
}


def _top_level_help() -> str:
  width = max(map(len, SUBCOMMANDS))
  lines = ["usage: pulse-jax <command> [options]", "", "commands:"]
  lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
  lines += ["", "`pulse-jax <command> --help` describes a command's options."]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help"):
    print(_top_level_help())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in SUBCOMMANDS:
    print(f"pulse-jax: unknown command {name!r}\n\n{_top_level_help()}", file=sys.stderr)
    return 2
  module_name, help_ = SUBCOMMANDS[name]
  module = importlib.import_module(module_name)
  parser = argparse.ArgumentParser(prog=f"pulse-jax {name}", description=help_)
  module.add_arguments(parser)
  args = parser.parse_args(rest)
  try:
    return int(module.run(args) or 0)
  except PulseError as e:
    print(f"pulse-jax {name}: error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
