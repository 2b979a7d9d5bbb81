"""The 12 standard leads and lead-name normalisation.

Collections spell leads differently (PTB-XL `AVR`, PTB `avr`, CODE-15% `DI`, MIMIC stores aVF before aVL), so
every reader maps names through `normalize_lead_name` and selects channels by name, never by position.
"""

STANDARD_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

_ALIASES = {
    "DI": "I", "DII": "II", "DIII": "III",
    "LEADI": "I", "LEADII": "II", "LEADIII": "III",
}
_CANONICAL = {name.upper(): name for name in STANDARD_LEADS}


def normalize_lead_name(name: str) -> str | None:
  """Returns the standard spelling of a lead name ('avr' -> 'aVR', 'DI' -> 'I'), or None for non-12-lead channels.

  Case and surrounding whitespace are ignored, as are '-' and ' ' inside the name ('Lead II', 'V-1').
  """
  key = name.strip().upper().replace(" ", "").replace("-", "").replace("_", "")
  key = _ALIASES.get(key, key)
  return _CANONICAL.get(key)


def lead_index(name: str) -> int:
  """Position of a lead in STANDARD_LEADS, by any accepted spelling; KeyError for an unknown lead."""
  canonical = normalize_lead_name(name)
  if canonical is None:
    raise KeyError(f"not one of the 12 standard leads: {name!r}")
  return STANDARD_LEADS.index(canonical)
