"""Shared pieces of the benchmarks: timing and the side-by-side report."""

import time
from collections.abc import Callable


def best_seconds(step: Callable[[], object], *, repeats: int, warmup: int = 1,
                 clock: Callable[[], float] = time.perf_counter) -> float:
  """Best time of `repeats` calls of step() after `warmup` untimed ones (best-of filters scheduler noise).

  `clock` is wall time by default; time.process_time measures this process's CPU seconds instead, which on a
  machine shared with other jobs leaves out the time the neighbours take.
  """
  for _ in range(warmup):
    step()
  times = []
  for _ in range(repeats):
    start = clock()
    step()
    times.append(clock() - start)
  return min(times)


def report(title: str, unit: str, ours: float, peer: float, peer_name: str) -> None:
  """Prints both figures (higher is better) and, last, the ratio ours / peer."""
  print(f"{title}")
  print(f"  pulse-jax        : {ours:10.1f} {unit}")
  print(f"  {peer_name:<17}: {peer:10.1f} {unit}")
  print(f"ratio pulse-jax / {peer_name}: {ours / peer:.2f}x")
