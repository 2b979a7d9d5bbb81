"""Counting the items a bulk job skips, so one bad file never stops a pass over 800,000 records.

Readers, dataset builders and bulk renderers process items through `map_skipping` (or catch a PulseError per
item and hand it to `note_skip`) and carry on. With a SkipCounter they get {reason -> count} plus a few example
ids to print at the end; without one, each skip is logged as a warning.
"""

import collections
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from pulse_jax.errors import PulseError

Item = TypeVar("Item")
Result = TypeVar("Result")

_logger = logging.getLogger(__name__)


class SkipCounter:
  """Accumulates skipped items by reason, keeping the first `max_examples` item ids of each reason.

  The reason is the error's `reason` (a short fixed phrase such as 'flat lead'), or its type name when it has
  none, so that counts group by cause rather than by message text.
  """

  def __init__(self, max_examples: int = 3):
    self.max_examples = max_examples
    self.counts: collections.Counter[str] = collections.Counter()
    self.examples: dict[str, list[str]] = {}

  def add(self, item_id: str, error: PulseError) -> None:
    reason = error.reason or type(error).__name__
    self.counts[reason] += 1
    examples = self.examples.setdefault(reason, [])
    if len(examples) < self.max_examples:
      examples.append(item_id)

  def merge(self, other: "SkipCounter") -> None:
    """Adds the counts (and example ids, up to max_examples) of `other`, e.g. a worker process's."""
    self.counts.update(other.counts)
    for reason, ids in other.examples.items():
      kept = self.examples.setdefault(reason, [])
      kept.extend(ids[:self.max_examples - len(kept)])

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def summary(self) -> str:
    """One line, most frequent reason first: 'skipped 3: flat lead 2 (e.g. A1, A7); missing file 1 (e.g. A4)'."""
    if not self.counts:
      return "skipped 0"
    parts = [f"{reason} {n} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.counts.most_common()]
    return f"skipped {self.total}: " + "; ".join(parts)


def note_skip(skipped: SkipCounter | None, item_id: str, error: PulseError) -> None:
  """Counts a skipped item in `skipped`, or logs it as a warning when the caller passed no counter."""
  if skipped is None:
    _logger.warning("skipping %s: %s", item_id, error)
  else:
    skipped.add(item_id, error)


def map_skipping(fn: Callable[[Item], Result], items: Iterable[Item], *, item_id: Callable[[Item], str],
                 skipped: SkipCounter | None) -> Iterator[Result]:
  """Yields fn(item) for each item, skipping and noting (under `item_id(item)`) those where fn raises PulseError.

  Other exceptions propagate: they are bugs, not bad data.
  """
  for item in items:
    try:
      result = fn(item)
    except PulseError as e:
      note_skip(skipped, item_id(item), e)
      continue
    yield result
