"""Experiment configs: Python files returning an ml_collections.ConfigDict, with command-line overrides.

`load_config("configs/pulse_7b.py:v5p")` imports the file and calls its `get_config(arg)` (or `get_config()`
without an argument); `apply_overrides(cfg, ["train.lr=1e-5", "model.text.num_layers=2"])` then sets dotted
fields, parsing each value as a Python literal (strings may be given bare). ConfigDict keeps field types, so a
misspelt field or a wrong type fails loudly instead of being ignored.
"""

import argparse
import ast
import importlib.util
import pathlib

import ml_collections

from pulse_jax.errors import ConfigError
from pulse_jax.models.config import PulseConfig, TextConfig, VisionConfig


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/file.py[:arg]` by calling its get_config."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"pulse_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config()")
  config = module.get_config(arg) if arg else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
  return config


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """Sets each `a.b.c=value` in place; unknown fields and type mismatches raise ConfigError."""
  for override in overrides:
    key, sep, value = override.removeprefix("--config.").partition("=")
    if not sep:
      raise ConfigError(f"override {override!r} is not of the form key=value")
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      if name not in node:
        raise ConfigError(f"override {override!r}: no config field {key!r}")
      node = node[name]
    if leaf not in node:
      raise ConfigError(f"override {override!r}: no config field {key!r}")
    try:
      node[leaf] = _parse_value(value)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"override {override!r}: {e}") from e
  return config


def model_config(model: ml_collections.ConfigDict) -> PulseConfig:
  """The frozen PulseConfig described by a config's `model` section."""
  fields = model.to_dict()
  vision, text = fields.pop("vision"), fields.pop("text")
  if "grid_pinpoints" in fields:
    fields["grid_pinpoints"] = tuple(tuple(p) for p in fields["grid_pinpoints"])
  try:
    return PulseConfig(vision=VisionConfig(**vision), text=TextConfig(**text), **fields)
  except TypeError as e:
    raise ConfigError(f"model config: {e}") from e


def accept_config_overrides(parser: argparse.ArgumentParser) -> None:
  """Makes `parser` collect `--config.a.b=value` arguments (names argparse cannot declare) into args.overrides."""
  parse_known_args = parser.parse_known_args

  def parse_with_overrides(args=None, namespace=None):
    namespace, extras = parse_known_args(args, namespace)
    namespace.overrides = [a for a in extras if a.startswith("--config.")]
    return namespace, [a for a in extras if not a.startswith("--config.")]

  parser.parse_known_args = parse_with_overrides
