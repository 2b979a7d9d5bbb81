"""Worker processes for CPU-bound bulk work (rendering sheets, building datasets) on this machine's cores.

Spawned, never forked: JAX's threads make fork unsafe once it has started. A spawned worker imports what it runs
afresh, and re-imports the parent's main script under `__mp_main__`, so a script that starts workers must keep its
top-level code under `if __name__ == "__main__":` (the `pulse-jax` commands do).
"""

import concurrent.futures
import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence


def usable_cores() -> int:
  """The cores this process may run on: its CPU affinity where the OS has one (a container's or job's share),
  else every core."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


class Workers:
  """`map` over spawned worker processes, started by the first call of two items or more when this process may
  use two cores or more (and kept for later calls); in this process otherwise. As a context manager, the workers
  end on exit."""

  def __init__(self):
    self._pool: concurrent.futures.ProcessPoolExecutor | None = None

  def map(self, fn: Callable, items: Sequence[tuple]) -> Iterator:
    """fn(*item) for each item, in order (lazily: results come as the workers finish them)."""
    cores = usable_cores()
    if len(items) < 2 or cores < 2:
      return itertools.starmap(fn, items)
    if self._pool is None:
      # One worker per core; spawned as work arrives, so a short first call does not start them all.
      self._pool = concurrent.futures.ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn"))
    return self._pool.map(fn, *zip(*items))

  def __enter__(self) -> "Workers":
    return self

  def __exit__(self, *exc) -> None:
    if self._pool is not None:
      self._pool.shutdown(cancel_futures=True)
      self._pool = None
