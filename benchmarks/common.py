"""Shared pieces of the benchmarks: timing, the side-by-side report and an op-time profile."""

import gzip
import json
import pathlib
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable

import jax


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


def profile_breakdown(step: Callable[[], object], *, top: int = 8) -> list[tuple[str, float]]:
  """Runs step() once under the JAX profiler and returns XLA:CPU's op time by kind, largest first.

  Kinds are the HLO op names with their numeric suffix dropped ('ynn_fusion.51' -> 'ynn_fusion': dots run by
  YNNPACK; 'copy_bitcast_fusion': layout copies; 'wrapped_broadcast': buffer initialisation...), as (kind,
  share of the op time of the top kinds and the rest). Only events on XLA:CPU's executor threads ('tf_XLA...')
  count: Python, compilation and the runtime's own bookkeeping are left out. The profiler slows the step, so
  the shares are meaningful, absolute times are not. `step` must block until its result is ready.
  """
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      step()
    trace_file = next(pathlib.Path(folder).rglob("perfetto_trace.json.gz"))
    trace = json.loads(gzip.decompress(trace_file.read_bytes()))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  by_kind = Counter()
  for event in events:
    name = event.get("name", "")
    on_executor = threads.get((event.get("pid"), event.get("tid")), "").startswith("tf_XLA")
    if event.get("ph") == "X" and on_executor and not re.search(r"(?i)thunk|threadpool|mutex|^end: |^while\.", name):
      by_kind[re.sub(r"\.\d+$", "", name)] += event.get("dur", 0)
  total = sum(by_kind.values()) or 1
  return [(kind, duration / total) for kind, duration in by_kind.most_common(top)]
