"""Where XLA:CPU's time goes in one jitted step, from a JAX profiler trace (its own module, so that the JAX-free
benchmarks such as render.py do not import JAX through benchmarks.common; not named profile.py, which would shadow
the standard library's `profile` for scripts run as `python benchmarks/X.py`, whose folder comes first on sys.path)."""

import gzip
import json
import pathlib
import re
import tempfile
from collections import Counter
from collections.abc import Callable

import jax


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
