"""Exception families of pulse-jax.

One type per failure family, each raised with the offending file, record or tensor named in the message,
so that bulk jobs can catch a family, skip the item, count it and carry on, and the command line can print
one line instead of a traceback.
"""


class PulseError(Exception):
  """Base class: every error the command line reports as a one-line message with exit status 1.

  `reason` is an optional short, fixed phrase ('flat lead', 'missing file') under which bulk jobs count the
  items they skip; the message carries the specifics (which record, which lead, which value).
  """

  def __init__(self, message: str, *, reason: str | None = None):
    super().__init__(message)
    self.reason = reason


class RecordError(PulseError):
  """An ECG record (signal file, header, label table row) is missing, malformed or physiologically absurd."""


class ImageError(PulseError):
  """An image cannot be decoded or has an unusable size."""


class ConversionError(PulseError):
  """A checkpoint cannot be converted: unknown or missing tensor, shape mismatch, unsafe file format."""


class ConfigError(PulseError):
  """A configuration value is missing, inconsistent or out of range."""


class DataError(PulseError):
  """A dataset record (conversation, metadata, image path) is malformed."""


class JudgeError(PulseError):
  """The LLM judge's endpoint cannot be used: unreachable or failing after all retries, refusing the request
  (HTTP 4xx), or replying with something that is not a chat completion."""


class CheckpointError(PulseError):
  """A training checkpoint cannot be used: it does not fit the model or run, or none is readable."""
