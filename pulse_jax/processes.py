"""Worker processes for CPU-bound bulk work (rendering sheets, building datasets) on this machine's cores.

Spawned, never forked: JAX's threads make fork unsafe once it has started. A spawned worker imports what it runs
afresh, and re-imports the parent's main script under `__mp_main__`, so a script that starts a pool must keep its
top-level code under `if __name__ == "__main__":` (the `pulse-jax` commands do).
"""

import concurrent.futures
import multiprocessing
import os


def usable_cores() -> int:
  """The cores this process may run on: its CPU affinity where the OS has one (a container's or job's share),
  else every core."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def spawn_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """A pool of `workers` spawned processes."""
  return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
